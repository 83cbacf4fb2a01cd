"""``jaxsurg.predict`` on a finished tiny U-Net11 run: the reloaded model scores the run's
test frames exactly as the run did; a video of another size gives masks at its own size equal
to the in-process reference, an overlay video of its size, frame count and rate, and the
jsonl; the exported artifact gives the same masks; folders (natural order, several sizes) and
one image; clip models see the latest frames; unfinished or older runs and bad arguments are
refused with what is wrong."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from predict_helpers import assert_reload_reproduces_eval

from jaxsurg import inference, predict
from jaxsurg.data import transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished unet11 variant=tiny run on the synthetic data: (workdir, tfds dir)."""
    base = tmp_path_factory.mktemp("unet11")
    env = dict(os.environ, JAXSURG_TFDS_DIR=str(base / "tfds"))
    cmd = [sys.executable, "-m", "jaxsurg.main", "--config=configs/unet11.py:variant=tiny", f"--workdir={base / 'w'}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return base / "w", base / "tfds"


def _frames(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3) for _ in range(n)]


def _reference(model, frames):
    """The in-process masks: resize as in training, the jitted class map, resize back."""
    h, w = model.frame_size
    small = np.stack([transforms.resize({"image": f[None]}, (h, w))["image"][0] for f in frames])
    classes = np.asarray(jax.jit(model.classes)(model.variables, small))
    return [predict.resize_classes(c, f.shape[:2], len(model.class_names)) for c, f in zip(classes, frames)]


@pytest.mark.slow
def test_the_reloaded_model_scores_the_test_frames_as_the_run_did(run, tmp_path):
    assert_reload_reproduces_eval(*run, tmp_path)


@pytest.mark.slow
def test_a_video_of_another_size_then_the_exported_artifact_give_the_same_masks(run, tmp_path):
    workdir, _ = run
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (150, 90))
    for f in _frames(11, 90, 150):
        writer.write(f)
    writer.release()
    capture, decoded = cv2.VideoCapture(video), []
    while (item := capture.read())[0]:
        decoded.append(item[1][..., ::-1])
    assert len(decoded) == 11
    artifact, out = tmp_path / "model.jaxexport", tmp_path / "out"
    cmd = [sys.executable, "-m", "jaxsurg.predict", f"--workdir={workdir}", f"--input={video}", f"--out={out}", f"--export={artifact}", "--batch_size=4"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "predict: 11 frames in" in done.stdout and "decode" in done.stdout and "device" in done.stdout
    model = inference.load(str(workdir))
    expected = _reference(model, decoded)
    names = sorted(os.listdir(out / "masks"))
    assert names == [f"clip_{i:06d}.png" for i in range(11)]
    masks = [cv2.imread(str(out / "masks" / n), cv2.IMREAD_UNCHANGED) for n in names]
    assert all(m.shape == (90, 150) and m.dtype == np.uint8 for m in masks)
    np.testing.assert_array_equal(np.stack(masks), np.stack(expected))
    rows = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert [r["frame"] for r in rows] == [n[:-4] for n in names] and rows[3]["time_s"] == pytest.approx(0.3)
    assert all(sum(r["area_px"].values()) == 90 * 150 for r in rows)
    assert rows[5]["area_px"]["instrument"] == int((masks[5] == 1).sum())
    overlay = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert (overlay.get(cv2.CAP_PROP_FRAME_WIDTH), overlay.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (150, 90)
    assert overlay.get(cv2.CAP_PROP_FRAME_COUNT) == 11 and overlay.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    record = json.load(open(out / "predict.json"))
    assert record["frames"] == 11 and record["method"] == "unet11" and set(record["seconds_by_part"]) == {"decode", "device", "write"}
    assert json.load(open(out / "classes.json")) == {"0": "background", "1": "instrument"}
    meta = json.load(open(str(artifact) + ".json"))
    assert meta["frame_size"] == list(model.frame_size) and meta["class_names"] == ["background", "instrument"]
    # The artifact alone (no config, no checkpoint, no model code) gives the same masks.
    again = predict.main([f"--exported={artifact}", f"--input={video}", f"--out={tmp_path / 'again'}", "--batch_size=3"])
    assert again["frames"] == 11
    for n in names:
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "again" / "masks" / n), cv2.IMREAD_UNCHANGED), cv2.imread(str(out / "masks" / n), cv2.IMREAD_UNCHANGED))
    # The three lines of the README, without jaxsurg.
    exported = jax.export.deserialize(bytearray(artifact.read_bytes()))
    small = np.stack([transforms.resize({"image": f[None]}, model.frame_size)["image"][0] for f in decoded[:2]])
    np.testing.assert_array_equal(np.asarray(exported.call(small)), np.asarray(jax.jit(model.classes)(model.variables, small)))


@pytest.mark.slow
def test_a_folder_in_natural_order_and_one_image(run, tmp_path):
    workdir, _ = run
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = {"f10": _frames(1, 64, 96, 1)[0], "f2": _frames(1, 72, 100, 2)[0], "f1": _frames(1, 64, 96, 3)[0]}
    for name, f in frames.items():
        cv2.imwrite(str(folder / f"{name}.png"), f[..., ::-1])
    (folder / "notes.txt").write_text("not a frame")
    result = predict.main([f"--workdir={workdir}", f"--input={folder}", f"--out={tmp_path / 'o'}", "--fps=5"])
    assert result["kind"] == "folder" and result["frames"] == 3
    rows = [json.loads(line) for line in open(tmp_path / "o" / "predictions.jsonl")]
    assert [r["frame"] for r in rows] == ["f1", "f2", "f10"] and (rows[1]["height"], rows[1]["width"]) == (72, 100)
    model = inference.load(str(workdir))
    for name, f in frames.items():
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o" / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED), _reference(model, [f])[0])
    overlay = cv2.VideoCapture(str(tmp_path / "o" / "overlay.mp4"))
    assert overlay.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and overlay.get(cv2.CAP_PROP_FRAME_WIDTH) == 96  # the first frame's size
    # The same folder again into a used --out is refused; --overwrite replaces it.
    with pytest.raises(SystemExit):
        predict.main([f"--workdir={workdir}", f"--input={folder}", f"--out={tmp_path / 'o'}"])
    one = predict.main([f"--workdir={workdir}", f"--input={folder / 'f2.png'}", f"--out={tmp_path / 'o'}", "--overwrite"])
    assert one["kind"] == "image" and sorted(os.listdir(tmp_path / "o" / "masks")) == ["f2.png"]
    assert cv2.imread(str(tmp_path / "o" / "overlay.png")).shape == (72, 100, 3) and not (tmp_path / "o" / "overlay.mp4").exists()


@pytest.mark.slow
def test_unfinished_and_older_runs_are_refused_with_what_is_missing(run, tmp_path):
    workdir, _ = run
    w = tmp_path / "w"
    shutil.copytree(workdir, w)
    config = json.load(open(w / "config.json"))
    json.dump({**config, "total_steps": 99}, open(w / "config.json", "w"))
    with pytest.raises(inference.RunNotUsable, match="'train' stage is at step 4 of 99; finish the run first"):
        inference.load(str(w))
    json.dump(config, open(w / "config.json", "w"))
    shutil.rmtree(w / "train" / "checkpoints")
    with pytest.raises(inference.RunNotUsable, match="checkpoints is missing"):
        inference.load(str(w))
    summary = json.load(open(w / "eval" / "summary.json"))
    del summary["frame_size"]
    json.dump(summary, open(w / "eval" / "summary.json", "w"))
    with pytest.raises(inference.RunNotUsable, match="has no frame_size: made by an older jaxsurg.*--resume"):
        inference.load(str(w))
    os.remove(w / "eval" / "summary.json")
    with pytest.raises(inference.RunNotUsable, match="is not a finished jaxsurg run: .*summary.json missing"):
        inference.load(str(w))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--input=x.mp4", "--out=o"], "give one of --workdir"),
        (["--workdir=w", "--out=o"], "give --input"),
        (["--workdir=w", "--input=INPUT"], "--input and --out go together"),
        (["--workdir=w", "--input=nowhere.mp4", "--out=o"], "--input=nowhere.mp4: no such file"),
        (["--workdir=w", "--input=BAD", "--out=o"], "not a video"),
        (["--workdir=w", "--input=EMPTY", "--out=o"], "a folder without images"),
        (["--workdir=w", "--input=BROKEN", "--out=o"], "OpenCV cannot decode a frame"),
        (["--workdir=w", "--input=INPUT", "--out=USED"], "is not empty"),
        (["--workdir=w", "--input=INPUT", "--out=o"], "not a finished jaxsurg run"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "BAD.txt").write_text("x")
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BROKEN.mp4").write_bytes(b"not a video")
    (tmp_path / "USED").mkdir()
    (tmp_path / "USED" / "predict.json").write_text("{}")
    cv2.imwrite(str(tmp_path / "INPUT.png"), np.zeros((8, 8, 3), np.uint8))
    names = {"INPUT": "INPUT.png", "BAD": "BAD.txt", "EMPTY": "EMPTY", "BROKEN": "BROKEN.mp4", "USED": "USED"}
    args = [a.split("=")[0] + "=" + names.get(a.split("=")[1], a.split("=")[1]) for a in args]
    with pytest.raises(SystemExit) as e:
        predict.main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_a_clip_model_sees_the_latest_frames_and_its_host_step_runs(tmp_path):
    """Frame i is predicted from the clip of frames max(i−2, 0) … i (the first repeated);
    this model marks what is white in the clip's first frame, and the host step inverts."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 12, 3), 255 if i == 1 else 0, np.uint8))
    model = inference.TrainedModel(
        method="toy", classes=lambda v, x: (x[:, 0, ..., 0] > 127).astype(np.int32), variables={}, frame_size=(8, 12),
        class_names=("background", "instrument"), clip_length=3, postprocess=lambda c: 1 - c,
    )
    predict.predict(model, predict.Source(str(folder)), str(tmp_path / "o"), batch_size=4)
    got = [int(cv2.imread(str(tmp_path / "o" / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED).mean()) for i in range(6)]
    assert got == [1, 1, 1, 0, 1, 1]  # only frame 3's clip (1, 2, 3) starts white; then inverted
    with pytest.raises(ValueError, match="cannot be exported"):
        inference.export(model)


def test_resize_classes_keeps_nearest_classes_away_from_edges_and_adds_none():
    classes = np.zeros((8, 8), np.int32)
    classes[2:6, 1:4], classes[4:8, 5:8] = 1, 2
    for num_classes, c in ((3, classes), (2, (classes > 0).astype(np.int32))):
        big = predict.resize_classes(c, (32, 32), num_classes)
        nearest = cv2.resize(c.astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST)
        edge = cv2.dilate(cv2.morphologyEx(nearest, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)), np.ones((5, 5), np.uint8)) > 0
        assert big.shape == (32, 32) and set(np.unique(big)) == set(np.unique(c))
        np.testing.assert_array_equal(big[~edge], nearest[~edge])


def test_key_points_move_to_the_frame_as_pixel_centres_and_are_drawn():
    detector = inference.KeypointDetector(detect=None, variables={}, frame_size=(4, 8), names=("Head", "ShaftEnd"))
    xy = np.array([[[0.0, 0.0], [7.0, 3.0]], [[2.0, 1.0], [0.0, 0.0]]], np.float32)  # (K, P, 2)
    scores = np.array([[0.9, 0.6], [0.7, 0.0]], np.float32)
    valid = np.array([[True, True], [True, False]])
    points = predict.keypoints_at((xy, scores, valid), detector, (8, 16))  # twice the size
    np.testing.assert_allclose(points["Head"][0], [[0.5, 0.5], [14.5, 6.5]])  # (x + 0.5)·2 − 0.5
    np.testing.assert_allclose(points["ShaftEnd"][0], [[4.5, 2.5]]) and np.testing.assert_allclose(points["ShaftEnd"][1], [0.7])
    image = np.zeros((8, 16, 3), np.uint8)
    drawn = predict.overlay_frame(image, np.zeros((8, 16), np.int32), ("background", "instrument"), points)
    assert drawn[6, 14].any() and not drawn[7, 0].any()  # a dot at the Head point; the corner away from the legend stays black


def test_bfloat16_variables_run_the_network_in_bfloat16():
    from jaxsurg import evaluate

    seen = []

    def apply(v, x):
        seen.append(x.dtype)
        return (x[..., :1] * v["w"]).astype(np.float32) - 0.5

    classes = evaluate.classes_fn(apply, pad_multiple=4)
    images = np.full((1, 6, 5, 3), 200, np.uint8)
    for dtype in (np.float32, jax.numpy.bfloat16):
        out = np.asarray(classes(inference.cast({"w": np.ones((), np.float32)}, dtype), images))
        assert out.shape == (1, 6, 5) and (out == 1).all()  # 200/255 > 0.5: padded to 8×8 and cropped back
    assert seen == [np.float32, jax.numpy.bfloat16]


def test_a_failing_thread_stops_the_others_and_its_error_names_the_frame(tmp_path):
    """An unreadable frame (the decoding thread) and a failing host step (the writing thread)
    raise their own errors in the caller; no thread is left waiting."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), np.zeros((8, 12, 3), np.uint8))
    (folder / "3.png").write_bytes(b"not a png")
    model = inference.TrainedModel(
        method="toy", classes=lambda v, x: (x[..., 0] > 127).astype(np.int32), variables={}, frame_size=(8, 12),
        class_names=("background", "instrument"),
    )
    with pytest.raises(ValueError, match="3.png: OpenCV cannot read this image"):
        predict.predict(model, predict.Source(str(folder)), str(tmp_path / "a"), batch_size=1)
    os.remove(folder / "3.png")

    def broken(classes):
        raise RuntimeError("host step failed")

    failing = inference.TrainedModel(**{**model.__dict__, "postprocess": broken})
    with pytest.raises(RuntimeError, match="host step failed"):
        predict.predict(failing, predict.Source(str(folder)), str(tmp_path / "b"), batch_size=1)
    assert not (tmp_path / "b" / "predict.json").exists()
