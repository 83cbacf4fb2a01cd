"""The bad-input catalogue: every malformed input a user has tried, the command they ran, and
the words its error must contain (or, for an interruption, the clean recovery). Each row is
run as the user runs it (``python -m jaxsurg.main ...`` in a subprocess), several at once;
a regression in any one fails its row.

Rows that must fail do so before training: the fixtures are tiny CholecSeg8k-layout folders
(48×64 frames) and the tiny synthetic build, shared by the rows through one TFDS dir (the
build lock makes that safe).
"""

import concurrent.futures
import dataclasses
import glob
import json
import os
import subprocess
import sys
from typing import Callable

import cv2
import numpy as np
import pytest
from test_builders import H, W, watershed_mask, write_clip  # tests/test_builders.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Case:
    name: str
    args: Callable[[str], list[str]]  # tmp dir → the command's arguments after ``python -m jaxsurg.main``
    words: tuple[str, ...] = ()  # each must appear in the output; () = the command must succeed
    setup: Callable[[str], None] | None = None
    check: Callable[[str], None] | None = None  # further checks after the command
    own_tfds: bool = False  # a TFDS dir of its own (the row builds and inspects it)


def _clip(root, *, first=100, n=6, without_mask=(), mask=None):
    write_clip(os.path.join(root, "video12", f"video12_{first:05d}"), first, n, seed=1, without_mask=without_mask, mask=mask)


def _mask_file(root, frame, first=100):
    return os.path.join(root, "video12", f"video12_{first:05d}", f"frame_{frame}_endo_watershed_mask.png")


def _frame_file(root, frame, first=100):
    return os.path.join(root, "video12", f"video12_{first:05d}", f"frame_{frame}_endo.png")


def _mask_of_another_size(t):
    _clip(f"{t}/m")
    cv2.imwrite(_mask_file(f"{t}/m", 101), np.full((H - 8, W, 3), 50, np.uint8))


def _unknown_code(t):
    codes = watershed_mask()
    codes[0, 0], codes[1, 1] = 77, 99
    _clip(f"{t}/m", mask=codes)


def _corrupt_png(t):
    _clip(f"{t}/m")
    with open(_frame_file(f"{t}/m", 103), "wb") as f:
        f.write(b"\x89PNG not really")


def _empty_video(t):
    os.makedirs(f"{t}/v")
    open(f"{t}/v/empty.mp4", "wb").close()


def _fake_video(t):
    os.makedirs(f"{t}/v")
    with open(f"{t}/v/fake.avi", "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))


def _written(path, text=""):
    def setup(t):
        os.makedirs(os.path.dirname(f"{t}/{path}"), exist_ok=True)
        with open(f"{t}/{path}", "w") as f:
            f.write(text)
    return setup


def _finished_unet11_workdir(t):
    """A workdir as a finished tiny U-Net11 run on synthetic data leaves it (its record and
    a checkpoint folder; the refusal comes before anything reads them)."""
    from jaxsurg import cli
    from jaxsurg.methods import unet11
    from jaxsurg.train import workdir

    workdir.claim(cli.load_config("unet11:variant=tiny"), f"{t}/w", unet11.STAGES)
    os.makedirs(f"{t}/w/train/checkpoints/4")


def _leftover_incomplete_build(t):
    """What a build killed mid-way leaves: TFDS's ``incomplete.*`` folder in the config dir."""
    from jaxsurg.data.builders import cholecseg8k

    _clip(f"{t}/m")
    digest = cholecseg8k.source_fingerprint(f"{t}/m")
    os.makedirs(f"{t}/tfds/cholecseg8k/default-{digest}/incomplete.ABC123_1.0.0")


def _no_incomplete_left(t):
    assert glob.glob(f"{t}/tfds/cholecseg8k/default-*/*")  # built where the leftover was
    assert not glob.glob(f"{t}/tfds/**/incomplete.*", recursive=True)
    summary = json.load(open(f"{t}/w/eval/summary.json"))
    assert summary["dataset"] == "cholecseg8k" and summary["num_frames"] == 2


TINY = "--config=unet11:variant=tiny"
CHOLEC = ("--config.dataset=cholecseg8k", "--config.resize=(64,64)")

CATALOGUE = [
    # -- the data
    Case("missing manual dir", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/nowhere", f"--workdir={t}/w"],
         words=("nowhere", "frame_80_endo.png")),
    Case("empty manual dir", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/empty", f"--workdir={t}/w"],
         words=("empty", "frame_N_endo_watershed_mask.png"), setup=_written("empty/readme.txt", "no frames")),
    Case("mask of another size", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", f"--workdir={t}/w"],
         words=("frame_101_endo_watershed_mask.png", "64×40", "64×48"), setup=_mask_of_another_size),
    Case("unknown class code", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", f"--workdir={t}/w"],
         words=("frame_100_endo_watershed_mask.png", "[77, 99]"), setup=_unknown_code),
    Case("unreadable image", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", f"--workdir={t}/w"],
         words=("frame_103_endo.png", "corrupt"), setup=_corrupt_png),
    Case("no labelled training frame", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", f"--workdir={t}/w"],
         words=("no labelled training frame", "label_interval=1", "frame_<N>_endo_watershed_mask.png"),
         setup=lambda t: _clip(f"{t}/m", without_mask=(100, 101, 102, 103))),
    Case("no labelled test frame", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", f"--workdir={t}/w"],
         words=("no labelled test frame", "the last 0.333 of each video", "frame_<N>_endo_watershed_mask.png"),
         setup=lambda t: _clip(f"{t}/m", without_mask=(104, 105))),
    Case("empty video", lambda t: ["--config=laparoflow:variant=tiny", "--config.pretrain.sources=('train','video')",
                                   f"--config.pretrain.video_dir={t}/v", f"--workdir={t}/w"],
         words=("empty.mp4",), setup=_empty_video),
    Case("fake video", lambda t: ["--config=laparoflow:variant=tiny", "--config.pretrain.sources=('train','video')",
                                  f"--config.pretrain.video_dir={t}/v", f"--workdir={t}/w"],
         words=("fake.avi",), setup=_fake_video),
    # -- the config
    Case("unknown config key", lambda t: [TINY, "--config.modle.num_filters=3", f"--workdir={t}/w"],
         words=("unknown config key", "modle.num_filters", "model.num_filters")),
    Case("unknown config name", lambda t: ["--config=unet12", f"--workdir={t}/w"],
         words=("unet12", "dual_motion, laparoflow, pat, unet11")),
    Case("image size not a pair", lambda t: [TINY, "--config.image_size=64", f"--workdir={t}/w"],
         words=("config.image_size=(64,)", "expected (H, W)")),
    Case("image size not a multiple of 32", lambda t: [TINY, "--config.image_size=(100,128)", f"--workdir={t}/w"],
         words=("config.image_size=(100, 128)", "multiples of 32")),
    Case("num_labelled above the labelled frames", lambda t: ["--config=laparoflow:variant=tiny", "--config.num_labelled=1000", f"--workdir={t}/w"],
         words=("config.num_labelled=1000", "labelled training frames")),
    Case("non-finite loss", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", "--config.learning_rate=1e30", f"--workdir={t}/w"],
         words=("non-finite", "config.learning_rate"), setup=lambda t: _clip(f"{t}/m")),
    # -- the workdir
    Case("workdir is a file", lambda t: [TINY, f"--workdir={t}/file"], words=("is a file, not a folder",), setup=_written("file")),
    Case("workdir of another model size", lambda t: [TINY, "--config.model.num_filters=16", f"--workdir={t}/w"],
         words=("model.num_filters: 8 there, 16 now", "a new --workdir", "--overwrite", "--resume"), setup=_finished_unet11_workdir),
    Case("workdir of another dataset", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", f"--workdir={t}/w"],
         words=("dataset: 'synthetic' there, 'cholecseg8k' now",), setup=_finished_unet11_workdir),
    Case("workdir made by an older jaxsurg", lambda t: [TINY, f"--workdir={t}/w"],
         words=("no made_by.json", "--overwrite"), setup=_written("w/train/checkpoints/4/x")),
    Case("--overwrite with --resume", lambda t: [TINY, "--overwrite", "--resume", f"--workdir={t}/w"], words=("exclude each other",)),
    # -- interruptions: the next run recovers
    Case("interrupted build", lambda t: [TINY, *CHOLEC, f"--config.data_dir={t}/m", "--config.total_steps=0", f"--workdir={t}/w"],
         setup=_leftover_incomplete_build, check=_no_incomplete_left, own_tfds=True),
]


def _run(case, tmp, shared_tfds):
    t = os.path.join(tmp, case.name.replace(" ", "_").replace("-", ""))
    os.makedirs(t)
    if case.setup:
        case.setup(t)
    tfds_dir = f"{t}/tfds" if case.own_tfds else shared_tfds
    cmd = [sys.executable, "-m", "jaxsurg.main", *case.args(t)]
    env = dict(os.environ, JAXSURG_TFDS_DIR=tfds_dir)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return t, out


@pytest.mark.slow
def test_bad_input_catalogue(tmp_path):
    shared = str(tmp_path / "tfds")
    # The tiny synthetic build first, so that the rows needing it do not all wait for it.
    from jaxsurg.data import builders

    builders.prepare("synthetic_surgery", data_dir=shared, config="tiny")
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda c: _run(c, str(tmp_path), shared), CATALOGUE))
    failures = []
    for case, (t, out) in zip(CATALOGUE, results):
        text = out.stdout + out.stderr
        if case.words:
            missing = [w for w in case.words if w not in text]
            if out.returncode == 0 or missing:
                failures.append(f"{case.name}: rc={out.returncode}, missing {missing}:\n{text[-1500:]}")
        elif out.returncode != 0:
            failures.append(f"{case.name}: rc={out.returncode}:\n{text[-1500:]}")
        if case.check and not failures:
            case.check(t)
    assert not failures, "\n\n".join(failures)
