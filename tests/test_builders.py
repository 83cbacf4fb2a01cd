"""Tests of the TFDS builders (jaxsurg.data.builders): built and read without TensorFlow."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from jaxsurg.data import builders, flow as flow_lib, synthetic
from jaxsurg.data.builders import cholecseg8k, common, surgical_video, synthetic_surgery, tfds_glue

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED = os.path.join(REPO, "..", "shared", "data")
CLIP = os.path.join(SHARED, "cholecseg8k_clip")
VIDEO3 = os.path.join(SHARED, "cholec_video", "video3.mp4")

# A 48×64 watershed mask using several codes, 255 included: code → top-left corner (y, x)
# of its 8×8 block; 50 (black background) elsewhere.
H, W = 48, 64
MASK_BLOCKS = {11: (0, 0), 21: (8, 0), 31: (16, 0), 32: (24, 0), 22: (32, 0), 12: (40, 0), 255: (0, 8), 5: (8, 8), 13: (16, 8)}


def block(code: int) -> tuple[slice, slice]:
    """Where ``code`` is in ``watershed_mask()`` (code 50: the bottom-right corner)."""
    y, x = MASK_BLOCKS.get(code, (H - 8, W - 8))
    return slice(y, y + 8), slice(x, x + 8)


# ----------------------------------------------------------------------------- helpers


def texture(seed: int, height: int = H, width: int = W + 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def moving_frames(seed: int, n: int, height: int = H, width: int = W) -> list[np.ndarray]:
    """n RGB frames of a texture panning 1 px/frame to the right (flow ≈ (+1, 0))."""
    big = texture(seed, height, width + n)
    return [np.ascontiguousarray(big[:, n - t : n - t + width]) for t in range(n)]


def watershed_mask(height: int = H, width: int = W) -> np.ndarray:
    codes = np.full((height, width), 50, np.uint8)
    for code in MASK_BLOCKS:
        codes[block(code)] = code
    return codes


def write_rgb(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_clip(folder: str, first: int, n: int, seed: int, without_mask=(), mask=None) -> list[np.ndarray]:
    """CholecSeg8k files frame_{first..first+n-1}_endo.png (+ watershed masks, 3 equal
    channels, and the other mask files the builder must ignore)."""
    frames = moving_frames(seed, n)
    codes = watershed_mask() if mask is None else mask
    for t, rgb in enumerate(frames):
        stem = os.path.join(folder, f"frame_{first + t}_endo")
        write_rgb(stem + ".png", rgb)
        if first + t not in without_mask:
            assert cv2.imwrite(stem + "_watershed_mask.png", np.repeat(codes[..., None], 3, -1))
            assert cv2.imwrite(stem + "_color_mask.png", np.zeros((H, W, 3), np.uint8))
            assert cv2.imwrite(stem + "_mask.png", np.zeros((H, W, 3), np.uint8))
    return frames


def official_layout(root: str) -> dict[tuple[int, int], np.ndarray]:
    """video12/video12_15750 (4 frames, the last without mask) and video01/video01_00080
    (2 frames). Returns (video_id, frame_index) → RGB frame."""
    v12 = write_clip(os.path.join(root, "video12", "video12_15750"), 15750, 4, seed=1, without_mask={15753})
    v01 = write_clip(os.path.join(root, "video01", "video01_00080"), 80, 2, seed=2)
    out = {(12, 15750 + t): f for t, f in enumerate(v12)}
    out.update({(1, 80 + t): f for t, f in enumerate(v01)})
    return out


def records(builder, split="train") -> list[dict]:
    source = builder.as_data_source()[split]
    return [source[i] for i in range(len(source))]


def no_dataset_left(data_dir: str) -> bool:
    """True if data_dir holds neither a finished dataset version nor an incomplete one."""
    finished = glob.glob(os.path.join(data_dir, "*", "*", "1.0.0"))
    incomplete = glob.glob(os.path.join(data_dir, "**", "*incomplete*"), recursive=True)
    return not finished and not incomplete


# ----------------------------------------------------------------------------- prepare / configs


def test_prepare_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="cholecseg8k.*surgical_video.*synthetic_surgery"):
        builders.prepare("imagenet", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tiny"):
        builders.prepare("synthetic_surgery", data_dir=str(tmp_path), config="huge")
    with pytest.raises(ValueError, match="settable fields"):
        builders.prepare("synthetic_surgery", data_dir=str(tmp_path), config="tiny:colour=3")


def test_task_classes():
    assert [len(c) for c in cholecseg8k.TASK_CLASSES.values()] == [13, 4, 2]
    assert cholecseg8k.FULL13_CLASSES[5] == "grasper" and cholecseg8k.FULL13_CLASSES[10] == "gallbladder"
    assert cholecseg8k.LAPAROFLOW4_CLASSES == ("background", "fat", "instrument", "gallbladder")
    assert {k: len(v) for k, v in synthetic_surgery.TASK_CLASSES.items()} == {"binary": 2, "parts": 4, "type": 8}
    assert surgical_video.TASK_CLASSES == {}


# ----------------------------------------------------------------------------- synthetic_surgery


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    return builders.prepare("synthetic_surgery", data_dir=str(tmp_path_factory.mktemp("tfds")), config="tiny")


def test_synthetic_tiny_matches_renderer(tiny_synthetic):
    cfg = tiny_synthetic.builder_config
    assert (cfg.height, cfg.width, cfg.frames_per_clip, cfg.train_clips, cfg.test_clips) == (64, 80, 8, 2, 1)
    for split, seeds in (("train", [0, 1]), ("test", [500])):
        recs = records(tiny_synthetic, split)
        assert len(recs) == 8 * len(seeds)
        assert [(r["video_id"], r["frame_index"]) for r in recs] == [(s, t) for s in seeds for t in range(8)]
        clip = synthetic.render_clip(seeds[0], 8, 64, 80)
        for t, r in enumerate(recs[:8]):
            assert r["has_label"] and r["video_name"] == f"synthetic_seed{seeds[0]}".encode()
            np.testing.assert_array_equal(r["image"], clip["image"][t])
            expected = synthetic_surgery.endovis_task_masks(clip, t)
            for task in ("binary", "parts", "type"):
                assert r[f"mask_{task}"].shape == (64, 80, 1) and r[f"mask_{task}"].dtype == np.uint8
                np.testing.assert_array_equal(r[f"mask_{task}"][..., 0], expected[task])
            np.testing.assert_array_equal(r["keypoints"], clip["keypoints"][t])
            np.testing.assert_array_equal(r["keypoints_visible"], clip["keypoints_visible"][t])
            np.testing.assert_array_equal(r["instrument_type"], clip["instrument_type"])
            assert r["flow"].dtype == np.float32 and r["flow_valid"].dtype == bool
            if t < 7:  # the renderer's exact flow, stored exactly
                np.testing.assert_array_equal(r["flow"], clip["flow"][t])
                np.testing.assert_array_equal(r["flow_valid"], clip["flow_valid"][t])
            else:
                assert not r["flow"].any() and not r["flow_valid"].any()


def test_synthetic_other_instruments_count_in_the_type_task_only():
    for seed in range(300):  # find a clip with an (rare) "Other" instrument
        clip = synthetic.render_clip(seed, 1, 64, 80)
        if (clip["mask_type"][0] == synthetic_surgery.OTHER_TYPE).any():
            break
    else:
        pytest.fail("no 'Other' instrument in the first 300 seeds")
    masks = synthetic_surgery.endovis_task_masks(clip, 0)
    other = clip["mask_type"][0] == synthetic_surgery.OTHER_TYPE
    assert (masks["type"][other] == 7).all()
    assert not masks["binary"][other].any() and not masks["parts"][other].any()
    keep = ~other
    np.testing.assert_array_equal(masks["binary"][keep], clip["mask_binary"][0][keep])


def test_synthetic_train_and_test_clips_differ(tiny_synthetic):
    train, test = records(tiny_synthetic, "train"), records(tiny_synthetic, "test")
    assert not {r["video_id"] for r in train} & {r["video_id"] for r in test}
    assert all(np.abs(test[0]["image"].astype(int) - r["image"]).mean() > 5 for r in train)


def test_synthetic_config_overrides(tmp_path):
    builder = builders.prepare("synthetic_surgery", data_dir=str(tmp_path), config="tiny:train_clips=1,seed=3")
    assert builder.builder_config.name.startswith("tiny-")
    assert [r["video_id"] for r in records(builder, "train")] == [3000] * 8
    assert [r["video_id"] for r in records(builder, "test")] == [3500] * 8


def test_large_build_spills_to_disk_without_tensorflow(tmp_path, monkeypatch, tiny_synthetic):
    """Past TFDS's in-memory limit (1 GB; here 20 kB) examples go to on-disk buckets, which
    TFDS writes with tf.io.gfile: this must work without TensorFlow and keep the order."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 20_000)
    opened = []
    gfile = tfds_glue._PLAIN_FILE_TF.io.gfile  # pylint: disable=protected-access
    real_open = gfile.GFile
    monkeypatch.setattr(gfile, "GFile", lambda path, mode="r": opened.append(path) or real_open(path, mode))
    spilled = builders.prepare("synthetic_surgery", data_dir=str(tmp_path), config="tiny")
    assert len({os.path.basename(p) for p in opened}) > 10  # examples went to many buckets
    for split in ("train", "test"):
        a, b = records(spilled, split), records(tiny_synthetic, split)
        assert [(r["video_id"], r["frame_index"]) for r in a] == [(r["video_id"], r["frame_index"]) for r in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["flow"], y["flow"])
    assert not glob.glob(os.path.join(str(tmp_path), "**", "bucket_*"), recursive=True)


def test_failed_build_leaves_nothing_and_rebuilds(tmp_path, monkeypatch):
    data_dir = str(tmp_path)
    real = synthetic.render_clip
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("render failed mid-way")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_clip", failing)
    with pytest.raises(RuntimeError, match="mid-way"):
        builders.prepare("synthetic_surgery", data_dir=data_dir, config="tiny")
    assert len(calls) == 2 and no_dataset_left(data_dir)
    monkeypatch.setattr(synthetic, "render_clip", real)
    builder = builders.prepare("synthetic_surgery", data_dir=data_dir, config="tiny")
    assert builder.is_prepared() and len(records(builder, "train")) == 16


def test_killed_build_leaves_nothing_complete_and_rebuilds(tmp_path):
    """A build killed (SIGKILL) mid-way leaves only an incomplete.* dir; the next prepare
    builds the dataset."""
    data_dir = str(tmp_path)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from jaxsurg.data import builders, synthetic
        real, calls = synthetic.render_clip, []
        def stall(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                print("STALLED", flush=True)
                time.sleep(300)
            return real(*args, **kwargs)
        synthetic.render_clip = stall
        builders.prepare("synthetic_surgery", data_dir={data_dir!r}, config="tiny")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert any(line.strip() == "STALLED" for line in child.stdout)  # TFDS prints too
        assert glob.glob(os.path.join(data_dir, "synthetic_surgery", "tiny", "incomplete.*"))
        assert not os.path.exists(os.path.join(data_dir, "synthetic_surgery", "tiny", "1.0.0"))
    finally:
        child.kill()
        child.wait()
    builder = builders.prepare("synthetic_surgery", data_dir=data_dir, config="tiny")
    assert len(records(builder, "train")) == 16 and len(records(builder, "test")) == 8


# ----------------------------------------------------------------------------- cholecseg8k


@pytest.fixture(scope="module")
def written_cholec(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cholec_manual"))
    frames = official_layout(root)
    builder = builders.prepare("cholecseg8k", data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=root)
    return root, frames, builder


def test_cholecseg8k_official_layout(written_cholec):
    _, frames, builder = written_cholec
    recs = records(builder)
    keys = [(r["video_id"], r["frame_index"]) for r in recs]
    assert keys == [(1, 80), (1, 81), (12, 15750), (12, 15751), (12, 15752), (12, 15753)]
    assert [r["video_name"] for r in recs] == [b"video01"] * 2 + [b"video12"] * 4
    assert [r["has_label"] for r in recs] == [True] * 5 + [False]
    codes = watershed_mask()
    for r in recs:
        np.testing.assert_array_equal(r["image"], frames[(r["video_id"], r["frame_index"])])
        for task in ("full13", "laparoflow4", "binary"):
            mask = r[f"mask_{task}"]
            assert mask.shape == (H, W, 1) and mask.dtype == np.uint8
            if r["has_label"]:
                np.testing.assert_array_equal(mask[..., 0], cholecseg8k.LUTS[task][codes])
            else:
                assert (mask == 255).all()


@pytest.mark.parametrize(
    "code,full13,laparoflow4,binary",
    [(50, 0, 0, 0), (11, 1, 0, 0), (21, 2, 0, 0), (13, 3, 0, 0), (12, 4, 1, 0), (31, 5, 2, 1), (32, 9, 2, 1),
     (22, 10, 3, 0), (5, 12, 0, 0), (255, 255, 255, 255)],
)
def test_cholecseg8k_label_spaces(written_cholec, code, full13, laparoflow4, binary):
    recs = records(written_cholec[2])
    r, where = recs[0], block(code)
    assert (r["mask_full13"][where] == full13).all()
    assert (r["mask_laparoflow4"][where] == laparoflow4).all()
    assert (r["mask_binary"][where] == binary).all()


def test_cholecseg8k_flow(written_cholec):
    recs = records(written_cholec[2])
    for r in recs:
        assert r["flow"].shape == (H, W, 2) and r["flow"].dtype == np.float32
        assert r["flow_valid"].shape == (H, W) and r["flow_valid"].dtype == bool
    last_of_clip = {(1, 81), (12, 15753)}
    for r in recs:
        if (r["video_id"], r["frame_index"]) in last_of_clip:
            assert not r["flow"].any() and not r["flow_valid"].any()
        else:  # the texture pans +1 px per frame
            assert r["flow_valid"].mean() > 0.5
            np.testing.assert_allclose(np.median(r["flow"][r["flow_valid"]], axis=0), [1, 0], atol=0.15)
            assert np.all(r["flow"] * common.FLOW_STEPS_PER_PIXEL == np.round(r["flow"] * common.FLOW_STEPS_PER_PIXEL))


def test_cholecseg8k_reuses_build_and_separates_manual_dirs(written_cholec, tmp_path):
    root, _, builder = written_cholec
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))
    again = builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=root)
    assert again.data_dir == builder.data_dir
    other = str(tmp_path / "copy")
    shutil.copytree(root, other)
    for path in glob.glob(os.path.join(other, "video12", "*", "frame_15753_endo*")):
        os.remove(path)
    changed = builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=other)
    assert changed.data_dir != builder.data_dir and len(records(changed)) == 5


def test_cholecseg8k_flat_folder(tmp_path):
    root = str(tmp_path / "my_clip")
    write_clip(root, 561, 3, seed=3, without_mask={563})
    recs = records(builders.prepare("cholecseg8k", data_dir=str(tmp_path / "tfds"), manual_dir=root))
    assert [(r["video_id"], r["video_name"], r["frame_index"], r["has_label"]) for r in recs] == [
        (0, b"my_clip", 561, True), (0, b"my_clip", 562, True), (0, b"my_clip", 563, False)]


def _expect_build_error(tmp_path, root, error, *patterns):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(error) as info:
        builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=root)
    for pattern in patterns:
        assert pattern in str(info.value), (pattern, str(info.value))
    assert no_dataset_left(data_dir)


def test_cholecseg8k_mask_size_mismatch(tmp_path):
    root = str(tmp_path / "manual")
    write_clip(os.path.join(root, "video12", "video12_15750"), 15750, 2, seed=1)
    bad = os.path.join(root, "video12", "video12_15750", "frame_15751_endo_watershed_mask.png")
    cv2.imwrite(bad, np.full((H - 8, W, 3), 50, np.uint8))
    _expect_build_error(tmp_path, root, ValueError, bad, "64×40", "64×48")


def test_cholecseg8k_unknown_code(tmp_path):
    root = str(tmp_path / "manual")
    codes = watershed_mask()
    codes[0, 0], codes[1, 1] = 77, 99
    write_clip(os.path.join(root, "video12", "video12_15750"), 15750, 2, seed=1, mask=codes)
    bad = os.path.join(root, "video12", "video12_15750", "frame_15750_endo_watershed_mask.png")
    _expect_build_error(tmp_path, root, ValueError, bad, "[77, 99]")


def test_cholecseg8k_corrupt_frame(tmp_path):
    root = str(tmp_path / "manual")
    write_clip(os.path.join(root, "video12", "video12_15750"), 15750, 2, seed=1)
    bad = os.path.join(root, "video12", "video12_15750", "frame_15751_endo.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    _expect_build_error(tmp_path, root, ValueError, bad, "corrupt")


def test_cholecseg8k_truncated_frame(tmp_path):
    root = str(tmp_path / "manual")
    write_clip(os.path.join(root, "video12", "video12_15750"), 15750, 2, seed=1)
    bad = os.path.join(root, "video12", "video12_15750", "frame_15751_endo.png")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    _expect_build_error(tmp_path, root, ValueError, bad)


def test_cholecseg8k_frame_sizes_differ_within_a_clip(tmp_path):
    root = str(tmp_path / "manual")
    folder = os.path.join(root, "video12", "video12_15750")
    write_clip(folder, 15750, 2, seed=1)
    bad = os.path.join(folder, "frame_15751_endo.png")
    write_rgb(bad, texture(1, H + 8, W))
    _expect_build_error(tmp_path, root, ValueError, bad, os.path.join(folder, "frame_15750_endo.png"))


def test_cholecseg8k_missing_or_empty_manual_dir(tmp_path):
    missing = str(tmp_path / "nowhere")
    _expect_build_error(tmp_path, missing, FileNotFoundError, missing, "video01/video01_00080/frame_80_endo.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    _expect_build_error(tmp_path, str(empty), FileNotFoundError, str(empty), "frame_N_endo_watershed_mask.png")
    assert "frame_N_endo.png" in cholecseg8k.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_cholecseg8k_builder_without_prepare_reports_missing_dir(tmp_path):
    import tensorflow_datasets as tfds

    missing = str(tmp_path / "nowhere")
    builder = cholecseg8k.Cholecseg8k(data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=missing))
    assert no_dataset_left(str(tmp_path / "tfds"))


def test_cholecseg8k_same_frame_twice(tmp_path):
    root = str(tmp_path / "manual")
    write_clip(os.path.join(root, "a"), 561, 1, seed=1)
    write_clip(os.path.join(root, "b"), 561, 1, seed=2)
    _expect_build_error(tmp_path, root, ValueError, os.path.join(root, "a", "frame_561_endo.png"), os.path.join(root, "b", "frame_561_endo.png"))


@pytest.fixture(scope="module")
def real_clip(tmp_path_factory):
    if not os.path.isdir(CLIP):
        pytest.skip(f"the real CholecSeg8k clip is not at {os.path.abspath(CLIP)}")
    builder = builders.prepare("cholecseg8k", data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=CLIP)
    return builder, records(builder)


def test_real_clip_contents(real_clip):
    _, recs = real_clip
    assert len(recs) == 73
    assert [r["frame_index"] for r in recs] == list(range(561, 634))
    assert {r["video_id"] for r in recs} == {0} and recs[0]["video_name"] == b"cholecseg8k_clip"
    assert sum(r["has_label"] for r in recs) == 72 and not recs[-1]["has_label"]
    assert all((recs[-1][f"mask_{t}"] == 255).all() for t in cholecseg8k.TASK_CLASSES)
    instrument = np.mean([(r["mask_binary"] == 1).mean() for r in recs if r["has_label"]])
    assert 0.010 < instrument < 0.018  # about 1.4 %
    assert all((r["mask_binary"] == 1).any() for r in recs if r["has_label"])  # grasper in every frame
    assert recs[0]["image"].shape == (480, 854, 3)


def test_real_clip_label_mapping(real_clip):
    _, recs = real_clip
    path = os.path.join(CLIP, "frame_561_endo_watershed_mask.png")
    codes = cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., 0]
    rgb = cv2.cvtColor(cv2.imread(os.path.join(CLIP, "frame_561_endo.png")), cv2.COLOR_BGR2RGB)
    r = recs[0]
    np.testing.assert_array_equal(r["image"], rgb)
    for code, expected in {31: (5, 2, 1), 22: (10, 3, 0), 12: (4, 1, 0), 21: (2, 0, 0), 50: (0, 0, 0), 255: (255,) * 3}.items():
        ys, xs = np.nonzero(codes == code)
        assert len(ys), code
        y, x = ys[len(ys) // 2], xs[len(xs) // 2]
        got = tuple(int(r[f"mask_{t}"][y, x, 0]) for t in ("full13", "laparoflow4", "binary"))
        assert got == expected, (code, got)


def test_real_clip_flow_aligns_frames(real_clip):
    _, recs = real_clip
    assert not recs[-1]["flow"].any() and not recs[-1]["flow_valid"].any()
    errors = []
    for a, b in zip(recs[:6], recs[1:7]):
        target = a["image"].astype(np.float32)
        warped = flow_lib.warp_backward(b["image"].astype(np.float32), a["flow"])
        errors.append((np.abs(target - warped).mean(), np.abs(target - b["image"]).mean()))
        assert 0.5 < a["flow_valid"].mean() <= 1.0
    moving = [(w, u) for w, u in errors if u > 1.0]  # about every 6th frame repeats the previous one
    assert moving and all(w < 0.6 * u for w, u in moving)


# ----------------------------------------------------------------------------- surgical_video


def write_video(path: str, frames: list[np.ndarray], fps: float = 25.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


@pytest.fixture(scope="module")
def video_manual(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("videos"))
    write_video(os.path.join(root, "a_case.mp4"), moving_frames(5, 30))
    for i, rgb in enumerate(moving_frames(6, 12), start=1):  # f1 … f12: natural order
        write_rgb(os.path.join(root, "b_frames", f"f{i}.png"), rgb)
    return root


def test_surgical_video_resamples_to_5fps(video_manual, tmp_path):
    builder = builders.prepare("surgical_video", data_dir=str(tmp_path), manual_dir=video_manual)
    recs = records(builder)
    got = [(r["video_id"], r["video_name"], r["frame_index"]) for r in recs]
    assert got == [(0, b"a_case.mp4", i) for i in range(0, 30, 5)] + [(1, b"b_frames", i) for i in (0, 5, 10)]
    assert not any(r["has_label"] for r in recs) and not any(k.startswith("mask_") for k in recs[0])
    folder = moving_frames(6, 12)
    np.testing.assert_array_equal(recs[-2]["image"], folder[5])  # f6.png is source frame 5
    for r in recs:
        last = r is recs[5] or r is recs[-1]
        assert r["flow"].shape == (H, W, 2) and r["flow_valid"].shape == (H, W)
        if last:
            assert not r["flow"].any() and not r["flow_valid"].any()
        else:  # 5 source frames apart: the texture moved 5 px right
            np.testing.assert_allclose(np.median(r["flow"][r["flow_valid"]], axis=0), [5, 0], atol=0.5)


def test_surgical_video_all_frames_and_resize(video_manual, tmp_path):
    builder = builders.prepare("surgical_video", data_dir=str(tmp_path), manual_dir=video_manual, config="fps=0,max_side=32")
    recs = records(builder)
    assert [r["frame_index"] for r in recs] == list(range(30)) + list(range(12))
    assert all(r["image"].shape == (24, 32, 3) and r["flow"].shape == (24, 32, 2) for r in recs)


def test_surgical_video_bad_inputs(tmp_path):
    data_dir = str(tmp_path / "tfds")
    empty = tmp_path / "empty_video"
    empty.mkdir()
    (empty / "empty.mp4").write_bytes(b"")
    junk = tmp_path / "junk_video"
    junk.mkdir()
    (junk / "junk.avi").write_bytes(os.urandom(4096))
    for root, name in ((empty, "empty.mp4"), (junk, "junk.avi")):
        with pytest.raises(ValueError, match=name):
            builders.prepare("surgical_video", data_dir=data_dir, manual_dir=str(root))
    assert no_dataset_left(data_dir)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        builders.prepare("surgical_video", data_dir=data_dir, manual_dir=str(tmp_path / "nowhere"))
    (tmp_path / "no_videos").mkdir()
    (tmp_path / "no_videos" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no_videos"):
        builders.prepare("surgical_video", data_dir=data_dir, manual_dir=str(tmp_path / "no_videos"))


def test_surgical_video_keep_frame():
    kept = [i for i in range(31) if surgical_video.keep_frame(i, 25.0, 5.0)]
    assert kept == [0, 5, 10, 15, 20, 25, 30]
    assert [i for i in range(10) if surgical_video.keep_frame(i, 30.0, 4.0)] == [0, 8]  # ⌊7.5 + ½⌋ = 8
    assert all(surgical_video.keep_frame(i, 25.0, 0.0) for i in range(5))
    assert surgical_video.kept_count(81, 25.0, 5.0) == 17


def test_surgical_video_real_video(tmp_path):
    if not os.path.exists(VIDEO3):
        pytest.skip(f"the real video is not at {os.path.abspath(VIDEO3)}")
    root = tmp_path / "manual"
    root.mkdir()
    os.symlink(os.path.abspath(VIDEO3), root / "video3.mp4")
    recs = records(builders.prepare("surgical_video", data_dir=str(tmp_path / "tfds"), manual_dir=str(root)))
    assert [r["frame_index"] for r in recs] == list(range(0, 81, 5))
    assert recs[0]["image"].shape == (480, 854, 3) and recs[0]["video_name"] == b"video3.mp4"
