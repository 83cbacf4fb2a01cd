"""Tests of the EndoVis 2017 builder (jaxsurg.data.builders.endovis17) on small frames
written in the official training and test layouts."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from jaxsurg.data import builders, datasets
from jaxsurg.data.builders import endovis17
import builder_checks
from builder_checks import records

# Full frames of H×W; the builder crops rows TOP:TOP+CH, columns LEFT:LEFT+CW (the release:
# 1080×1920 cropped at 28, 320 to 1024×1280).
H, W = 40, 56
TOP, LEFT, CH, CW = 4, 6, 24, 32
CROP = f"crop_top={TOP},crop_left={LEFT},crop_height={CH},crop_width={CW}"

# Training label blocks in CROP coordinates: folder → {(r0, r1, c0, c1): code}. Sorted folder
# order: Left_Prograsp < Maryland_Bipolar < Other < Right_Prograsp (a later folder wins).
TRAIN_LABELS = {
    "Right_Prograsp_Forceps_labels": {(8, 12, 6, 10): 30, (16, 18, 0, 2): 40, (16, 18, 4, 6): 10},
    "Other_labels": {(8, 12, 4, 12): 40},
    "Maryland_Bipolar_Forceps_labels": {(8, 12, 0, 8): 20},
    "Left_Prograsp_Forceps_labels": {(0, 4, 0, 4): 10, (16, 18, 4, 6): 30, (-TOP, -TOP + 1, 0, 4): 30},
}
# Expected (binary, parts, type) per crop region; everything else is 0.
TRAIN_EXPECTED = {
    (0, 4, 0, 4): (1, 1, 2),  # the crop's top-left corner: Left_Prograsp shaft
    (8, 12, 0, 4): (1, 2, 1),  # Maryland wrist only
    (8, 12, 4, 6): (1, 2, 7),  # Maryland under Other: instrument and wrist, type Other
    (8, 12, 6, 10): (1, 3, 2),  # Right_Prograsp claspers over Maryland and Other
    (8, 12, 10, 12): (0, 0, 7),  # Other only: background in binary and parts
    (16, 18, 0, 2): (1, 0, 2),  # probe code 40 in a robotic folder: instrument, no part
    (16, 18, 4, 6): (1, 1, 2),  # Right_Prograsp's shaft over Left_Prograsp's claspers
}
# Test-layout codes in CROP coordinates, columns 0:8 of rows 0:4.
TEST_PARTS = {(0, 4, 0, 2): 30, (0, 4, 2, 4): 100, (0, 4, 4, 6): 255, (0, 4, 6, 8): 200}


def texture(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2.0)
    return ((noise - noise.min()) / (noise.max() - noise.min()) * 255).astype(np.uint8)


def write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array)


def write_frames(video: str, indices, seed: int, size=(H, W)) -> dict[int, np.ndarray]:
    """left_frames/frameNNN.png of a texture panning 1 px per frame to the right."""
    big = texture(seed, size[0], size[1] + len(indices))
    out = {}
    for t, index in enumerate(indices):
        out[index] = np.ascontiguousarray(big[:, len(indices) - t : len(indices) - t + size[1]])
        write_png(os.path.join(video, "left_frames", f"frame{index:03d}.png"), out[index])
    return out


def codes(blocks: dict, size=(H, W)) -> np.ndarray:
    """A label file's codes (H, W) with blocks given in crop coordinates."""
    out = np.zeros(size, np.uint8)
    for (r0, r1, c0, c1), code in blocks.items():
        out[TOP + r0 : TOP + r1, LEFT + c0 : LEFT + c1] = code
    return out


def write_training_video(video: str, labels: dict, indices=(0, 1, 2), unlabelled=(), seed=1) -> dict:
    frames = write_frames(video, indices, seed)
    for folder, blocks in labels.items():
        for index in indices:
            if index not in unlabelled:
                write_png(os.path.join(video, "ground_truth", folder, f"frame{index:03d}.png"), codes(blocks))
    return frames


def write_test_labels(video: str, indices, parts=TEST_PARTS) -> None:
    for index in indices:
        name = f"frame{index:03d}.png"
        write_png(os.path.join(video, "BinarySegmentation", name), codes({(0, 4, 0, 8): 255}))
        write_png(os.path.join(video, "PartsSegmentation", name), codes(parts))
        write_png(os.path.join(video, "TypeSegmentation", name), codes({(0, 4, 0, 8): 6}))


def expect_error(tmp_path, root, error, *patterns, config=CROP):
    builder_checks.expect_error(tmp_path, "endovis17", root, error, *patterns, config=config)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Training videos 1 (4 instruments, 3 frames) and 3 (a folder without "_labels", frame 1
    unlabelled); test video 1 (frames 225-226, labels in a separate tree) and 9 (no labels)."""
    root = str(tmp_path_factory.mktemp("endovis17_manual"))
    frames = {("train", 1, i): f for i, f in write_training_video(os.path.join(root, "training", "instrument_dataset_1"), TRAIN_LABELS).items()}
    write_png(os.path.join(root, "training", "instrument_dataset_1", "right_frames", "frame000.png"), texture(9, H, W))
    v3 = write_training_video(os.path.join(root, "training", "instrument_dataset_3"), {"Prograsp_Forceps": {(20, 24, 28, 32): 20}},
                              indices=(0, 1), unlabelled=(1,), seed=2)
    frames.update({("train", 3, i): f for i, f in v3.items()})
    later = os.path.join(root, "more_frames", "instrument_dataset_1")  # test data by its label-only twin, not by name
    frames.update({("test", 1, i): f for i, f in write_frames(later, (225, 226), 3).items()})
    frames.update({("test", 9, i): f for i, f in write_frames(os.path.join(root, "testing", "instrument_dataset_9"), (0,), 4).items()})
    write_test_labels(os.path.join(root, "labels", "instrument_2017_test", "instrument_dataset_1"), (225, 226))
    builder = builders.prepare("endovis17", data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=root, config=CROP)
    return root, frames, builder


def test_records_keys_names_and_crop(built):
    _, frames, builder = built
    train, test = records(builder, "train"), records(builder, "test")
    assert [(r["video_id"], r["frame_index"], r["has_label"]) for r in train] == [
        (1, 0, True), (1, 1, True), (1, 2, True), (3, 0, True), (3, 1, False)]
    assert [r["video_name"] for r in train] == [b"instrument_dataset_1"] * 3 + [b"instrument_dataset_3"] * 2
    assert [(r["video_id"], r["frame_index"], r["has_label"]) for r in test] == [(1, 225, True), (1, 226, True), (9, 0, False)]
    assert [r["video_name"] for r in test] == [b"test/instrument_dataset_1"] * 2 + [b"test/instrument_dataset_9"]
    for split, recs in (("train", train), ("test", test)):
        for r in recs:
            full = frames[(split, r["video_id"], r["frame_index"])]
            np.testing.assert_array_equal(r["image"], full[TOP : TOP + CH, LEFT : LEFT + CW])
            for task in endovis17.TASK_CLASSES:
                assert r[f"mask_{task}"].shape == (CH, CW, 1) and r[f"mask_{task}"].dtype == np.uint8
                if not r["has_label"]:
                    assert (r[f"mask_{task}"] == 255).all()


def test_training_masks_overlap_order_other_and_parts(built):
    for r in records(built[2], "train")[:3]:
        expected = {task: np.zeros((CH, CW), np.uint8) for task in ("binary", "parts", "type")}
        for (r0, r1, c0, c1), values in TRAIN_EXPECTED.items():
            for task, value in zip(expected, values):
                expected[task][r0:r1, c0:c1] = value
        for task, mask in expected.items():
            np.testing.assert_array_equal(r[f"mask_{task}"][..., 0], mask, err_msg=task)
    v3 = records(built[2], "train")[3]  # the crop's bottom-right corner, folder "Prograsp_Forceps"
    for task, value in (("binary", 1), ("parts", 2), ("type", 2)):
        assert (v3[f"mask_{task}"][20:24, 28:32] == value).all() and v3[f"mask_{task}"].sum() == 16 * value


def test_test_layout_codes(built):
    for r in records(built[2], "test")[:2]:
        np.testing.assert_array_equal(r["mask_binary"][..., 0], codes({(0, 4, 0, 8): 1})[TOP : TOP + CH, LEFT : LEFT + CW])
        np.testing.assert_array_equal(r["mask_type"][..., 0], codes({(0, 4, 0, 8): 6})[TOP : TOP + CH, LEFT : LEFT + CW])
        np.testing.assert_array_equal(r["mask_parts"][0:4, 0:8, 0], np.repeat([[1, 1, 2, 2, 3, 3, 0, 0]], 4, 0))
        assert r["mask_parts"].sum() == 4 * (2 * 1 + 2 * 2 + 2 * 3)


def test_flow_within_each_video(built):
    for split in ("train", "test"):
        recs = records(built[2], split)
        for r, nxt in zip(recs, recs[1:] + [None]):
            assert r["flow"].shape == (CH, CW, 2) and r["flow"].dtype == np.float32 and r["flow_valid"].shape == (CH, CW)
            if nxt is None or nxt["video_id"] != r["video_id"]:
                assert not r["flow"].any() and not r["flow_valid"].any()
            else:  # the texture pans 1 px per frame to the right
                assert r["flow_valid"].mean() > 0.5
                assert abs(np.median(r["flow"][..., 0][r["flow_valid"]]) - 1.0) < 0.25


def test_constants_and_registration():
    assert endovis17.FOLDS == {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}
    assert {t: len(c) for t, c in endovis17.TASK_CLASSES.items()} == {"binary": 2, "parts": 4, "type": 8}
    assert datasets.task_classes("endovis17", "type")[7] == "Other"
    assert [endovis17.instrument_type(n) for n in ("Maryland_Bipolar_Forceps_labels", "Prograsp_Forceps", "Large_Needle_Driver_Left_labels",
            "Right_Vessel_Sealer", "Grasping_Retractor_labels", "Monopolar_Curved_Scissors_labels", "Other_labels")] == [1, 2, 3, 4, 5, 6, 7]
    assert "endovissub2017-roboticinstrumentsegmentation" in endovis17.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_fingerprint_follows_label_content(built):
    root = built[0]
    label = os.path.join(root, "labels", "instrument_2017_test", "instrument_dataset_1", "TypeSegmentation", "frame226.png")
    before = endovis17.source_fingerprint(root)
    write_png(label, codes({(0, 4, 0, 8): 5}))
    try:
        assert endovis17.source_fingerprint(root) != before
    finally:
        write_png(label, codes({(0, 4, 0, 8): 6}))
    assert endovis17.source_fingerprint(root) == before


def test_no_crop_keeps_full_frames(tmp_path):
    root = str(tmp_path / "manual")
    frames = write_training_video(os.path.join(root, "instrument_dataset_2"), {"Bipolar_Forceps_labels": {(0, 2, 0, 2): 30}}, indices=(5, 6))
    recs = records(builders.prepare("endovis17", data_dir=str(tmp_path / "tfds"), manual_dir=root, config="crop=False"), "train")
    assert [r["frame_index"] for r in recs] == [5, 6]
    np.testing.assert_array_equal(recs[0]["image"], frames[5])
    np.testing.assert_array_equal(recs[0]["mask_parts"][..., 0], codes({(0, 2, 0, 2): 3}))


# ----------------------------------------------------------------------------- refused inputs


def one_video(root: str, labels=None, **kw) -> str:
    video = os.path.join(root, "instrument_dataset_1")
    write_training_video(video, labels or {"Bipolar_Forceps_labels": {(0, 2, 0, 2): 10}, "Other_labels": {(2, 4, 0, 2): 40}}, indices=(0, 1), **kw)
    return video


def test_unknown_training_code(tmp_path):
    video = one_video(str(tmp_path / "m"))
    bad = os.path.join(video, "ground_truth", "Other_labels", "frame001.png")
    write_png(bad, codes({(0, 1, 0, 1): 50, (1, 2, 1, 2): 255}))
    expect_error(tmp_path, str(tmp_path / "m"), ValueError, bad, "[50, 255]")


def test_frame_missing_from_one_instrument_folder(tmp_path):
    video = one_video(str(tmp_path / "m"))
    missing = os.path.join(video, "ground_truth", "Bipolar_Forceps_labels", "frame001.png")
    os.remove(missing)
    expect_error(tmp_path, str(tmp_path / "m"), ValueError, missing, os.path.join(video, "ground_truth", "Other_labels", "frame001.png"))


def test_unknown_instrument_folder(tmp_path):
    video = one_video(str(tmp_path / "m"), labels={"Left_Mystery_Tool_labels": {(0, 2, 0, 2): 10}})
    expect_error(tmp_path, str(tmp_path / "m"), ValueError, os.path.join(video, "ground_truth", "Left_Mystery_Tool_labels"), "Bipolar_Forceps", "Other")


def test_label_size_and_colour_channels(tmp_path):
    video = one_video(str(tmp_path / "m"))
    bad = os.path.join(video, "ground_truth", "Bipolar_Forceps_labels", "frame000.png")
    write_png(bad, np.zeros((H - 2, W), np.uint8))
    expect_error(tmp_path, str(tmp_path / "m"), ValueError, bad, f"{W}×{H - 2}")
    write_png(bad, np.dstack([codes({}), codes({(0, 1, 0, 1): 10}), codes({})]))
    expect_error(tmp_path, str(tmp_path / "m"), ValueError, bad, "channels")


def test_frames_smaller_than_the_default_crop(tmp_path):
    video = one_video(str(tmp_path / "m"))
    expect_error(tmp_path, str(tmp_path / "m"), ValueError, os.path.join(video, "left_frames", "frame000.png"), "crop=False", config=None)


def test_unknown_test_code_and_partial_test_labels(tmp_path):
    root = str(tmp_path / "m")
    one_video(os.path.join(root, "train"))
    test_video = os.path.join(root, "test", "instrument_dataset_4")
    write_frames(test_video, (225, 226), 5)
    write_test_labels(test_video, (225, 226), parts={(0, 1, 0, 1): 20})
    expect_error(tmp_path, root, ValueError, os.path.join(test_video, "PartsSegmentation", "frame225.png"), "[20]")
    write_test_labels(test_video, (225, 226))
    os.remove(os.path.join(test_video, "TypeSegmentation", "frame226.png"))
    expect_error(tmp_path, root, ValueError, os.path.join(test_video, "TypeSegmentation", "frame226.png"))


def test_layout_errors(tmp_path):
    root = str(tmp_path / "only_test")
    write_frames(os.path.join(root, "instrument_dataset_2"), (225,), 6)
    write_test_labels(os.path.join(root, "instrument_dataset_2"), (225,))
    expect_error(tmp_path, root, ValueError, "only test-layout", "training set is required")
    root = str(tmp_path / "video9")
    write_training_video(os.path.join(root, "instrument_dataset_9"), {"Vessel_Sealer_labels": {(0, 1, 0, 1): 10}}, indices=(0,))
    expect_error(tmp_path, root, ValueError, os.path.join(root, "instrument_dataset_9"), "[1, 2, 3, 4, 5, 6, 7, 8]")
    root = str(tmp_path / "orphan_labels")
    one_video(os.path.join(root, "train"))
    write_test_labels(os.path.join(root, "labels", "instrument_dataset_5"), (225,))
    expect_error(tmp_path, root, ValueError, os.path.join(root, "labels", "instrument_dataset_5"), "no test frames")
    shutil.rmtree(os.path.join(root, "labels", "instrument_dataset_5", "TypeSegmentation"))
    expect_error(tmp_path, root, ValueError, os.path.join(root, "labels", "instrument_dataset_5"), "['TypeSegmentation']")
    expect_error(tmp_path, str(tmp_path / "nowhere"), FileNotFoundError, "nowhere", "left_frames/frame000.png")
