"""The ``endovis15_keypoints`` builder: EndoVis 2015 frames in the official layout with Du
et al.'s JSON key points, built without TensorFlow, and read by the key-point stage."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from jaxsurg.data import builders, datasets, pipeline
from jaxsurg.data.builders import endovis15_keypoints as ev15

SMALL = (72, 90)  # (H, W) training frames: 720×576 / 8 (points scaled)
FULL = (576, 720)  # test frames at the annotation size (points as given)
DU_PREFIX = "/Users/someone/MICCAI_tool/"  # Du et al.'s files name frames by their own absolute paths


def p(x: int, y: int) -> tuple[float, float]:
    """Du coordinates (at 720×576) that land exactly on pixel centre (x, y) of a 90×72 frame."""
    return 8 * x + 3.5, 8 * y + 3.5


def pt(cls, xy, tool=None, **extra):
    out = {"class": cls, "x": xy[0], "y": xy[1], **extra}
    if tool:
        out["id"] = tool
    return out


def frames(seed: int, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """n RGB frames of a smooth texture panning 1 px/frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    big = cv2.GaussianBlur(rng.random((h, w + n, 3)).astype(np.float32), (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    return [np.ascontiguousarray(big[:, n - t : n - t + w]) for t in range(n)]


def frame_name(split: str, i: int) -> str:
    return f"img_{i:06d}_raw.png" if split == "train" else f"img_{i:04d}.png"


def write_video(root, split: str, k: int, n: int, size, seed: int) -> list[np.ndarray]:
    """DatasetK/Raw frames 1..n in the official folders (below an extra level)."""
    sub = ("Tracking_Robotic_Training", "Training") if split == "train" else ("Tracking_Robotic_Testing",)
    folder = os.path.join(root, "EndoVis15", *sub, f"Dataset{k}", "Raw")
    os.makedirs(folder, exist_ok=True)
    images = frames(seed, n, size)
    for i, rgb in enumerate(images, 1):
        assert cv2.imwrite(os.path.join(folder, frame_name(split, i)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return images


def write_labels(root, split: str, k: int, entries: dict, raw_text: str | None = None) -> str:
    """Du et al.'s <split>K_labels.json: frame basename → annotations, named by Du's paths."""
    folder = os.path.join(root, "EndoVisPoseAnnotation-master", f"{split}_labels")
    os.makedirs(folder, exist_ok=True)
    sub = "Tracking_Robotic_Training/Training" if split == "train" else "Tracking_Robotic_Testing"
    data = [{"annotations": a, "class": "image", "filename": f"{DU_PREFIX}{sub}/Dataset{k}/Raw/{name}"} for name, a in entries.items()]
    path = os.path.join(folder, f"{split}{k}_labels.json")
    with open(path, "w") as f:
        f.write(raw_text if raw_text is not None else json.dumps(data, indent=1))
    return path


TRAIN1 = {
    frame_name("train", 1): [  # two tools; EndPoint and TrackedPoint dropped; "occluded" kept as annotated
        pt("LeftClasperPoint", p(50, 25), "tool2"), pt("RightClasperPoint", p(51, 26), "tool2"),
        pt("HeadPoint", p(41, 30), "tool2"), pt("ShaftPoint", p(31, 35), "tool2"),
        pt("EndPoint", (20.0, 350.0), "tool2"), pt("TrackedPoint", (100.0, 300.0), "tool2"),
        pt("LeftClasperPoint", p(60, 43), "tool1", occluded=True), pt("HeadPoint", p(70, 41), "tool1"),
    ],
    frame_name("train", 2): [],  # not annotated
    frame_name("train", 3): [  # a second HeadPoint 2.2 px (at 720×576) from the first: a double click, dropped
        pt("LeftClasperPoint", p(50, 25), "tool1"), pt("RightClasperPoint", p(51, 26), "tool1"),
        pt("HeadPoint", p(41, 30), "tool1"), pt("ShaftPoint", (252.0, 284.0), "tool1"),
        pt("HeadPoint", (p(41, 30)[0] + 2, p(41, 30)[1] + 1), "tool1"),
    ],
    # frame 4 is in the folder without an entry: kept, unlabelled
}
TRAIN2 = {
    frame_name("train", 1): [  # same basename as train1's first frame; points without "id"
        pt("LeftClasperPoint", p(20, 10), "tool4"), pt("RightClasperPoint", p(21, 12), "tool4"),
        pt("HeadPoint", p(15, 15), "tool4"),
        pt("LeftClasperPoint", p(70, 50), "tool1"), pt("RightClasperPoint", p(71, 52), "tool1"),
        pt("ShaftPoint", p(10, 20)),  # tool1 and tool4 lack a Shaft: tool4's points are nearer
        pt("HeadPoint", p(65, 55)),  # only tool1 lacks a Head
    ],
    frame_name("train", 2): [  # as train1 img_000130: tool2's RightClasper labelled tool1
        pt("LeftClasperPoint", p(50, 25), "tool2"), pt("RightClasperPoint", p(51, 26), "tool1"),
        pt("LeftClasperPoint", p(60, 43), "tool1"), pt("RightClasperPoint", p(61, 42), "tool1"),
    ],
    frame_name("train", 3): [],
}
TEST1 = {
    frame_name("test", 1): [
        pt("LeftClasperPoint", (300.25, 200.75), "tool1"), pt("RightClasperPoint", (310.0, 190.0), "tool1"),
        pt("HeadPoint", (350.5, 180.0), "tool1"), pt("ShaftPoint", (400.0, 170.0), "tool1"),
        pt("EndPoint", (700.0, 134.0)),  # as in test5/test6: the id-less points are EndPoints
        pt("LeftClasperPoint", (250.0, 260.0), "tool4"), pt("HeadPoint", (140.0, 150.0), "tool4"),
    ],
    frame_name("test", 2): [],
    frame_name("test", 3): [pt("LeftClasperPoint", (700.5, 10.25), "tool1")],
}


def write_dataset(root) -> dict:
    images = {
        ("train1", 1): write_video(root, "train", 1, 4, SMALL, 1),
        ("train2", 1): write_video(root, "train", 2, 3, SMALL, 2),
        ("test1", 1): write_video(root, "test", 1, 3, FULL, 3),
    }
    write_labels(root, "train", 1, TRAIN1)
    write_labels(root, "train", 2, TRAIN2)
    write_labels(root, "test", 1, TEST1)
    return {(name, i): im for (name, first), ims in images.items() for i, im in enumerate(ims, first)}


def expected(rows):
    """keypoints (4, 4, 2), visible (4, 4), instrument_type (4,) from
    [(tool number, {type: (x, y)})] in slot order."""
    kp, vis, types = np.zeros((4, 4, 2), np.float32), np.zeros((4, 4), bool), np.zeros(4, np.int32)
    for slot, (tool, points) in enumerate(rows):
        types[slot] = tool
        for kind, xy in points.items():
            kp[slot, kind], vis[slot, kind] = xy, True
    return kp, vis, types


L, R, HEAD, SHAFT = range(4)
EXPECTED = {
    ("train1", 1): expected([(1, {L: (60, 43), HEAD: (70, 41)}), (2, {L: (50, 25), R: (51, 26), HEAD: (41, 30), SHAFT: (31, 35)})]),
    ("train1", 3): expected([(1, {L: (50, 25), R: (51, 26), HEAD: (41, 30), SHAFT: (252.5 / 8 - 0.5, 284.5 / 8 - 0.5)})]),
    ("train2", 1): expected([(1, {L: (70, 50), R: (71, 52), HEAD: (65, 55)}), (4, {L: (20, 10), R: (21, 12), HEAD: (15, 15), SHAFT: (10, 20)})]),
    # the repeated tool1 RightClasper goes to tool2, the tool lacking one: every location is kept
    ("train2", 2): expected([(1, {R: (51, 26), L: (60, 43)}), (2, {L: (50, 25), R: (61, 42)})]),
    ("test1", 1): expected([(1, {L: (300.25, 200.75), R: (310, 190), HEAD: (350.5, 180), SHAFT: (400, 170)}), (4, {L: (250, 260), HEAD: (140, 150)})]),
    ("test1", 3): expected([(1, {L: (700.5, 10.25)})]),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ev15_manual"))
    images = write_dataset(root)
    builder = builders.prepare("endovis15_keypoints", data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=root)
    return root, images, builder


def test_builds_both_splits_with_exact_keypoints(built):
    _, images, builder = built
    for split, keys in {
        "train": [("train1", 1, 1), ("train1", 1, 2), ("train1", 1, 3), ("train1", 1, 4), ("train2", 2, 1), ("train2", 2, 2), ("train2", 2, 3)],
        "test": [("test1", 101, 1), ("test1", 101, 2), ("test1", 101, 3)],
    }.items():
        source = builder.as_data_source(split)
        recs = [source[i] for i in range(len(source))]
        assert [(r["video_name"].decode(), int(r["video_id"]), int(r["frame_index"])) for r in recs] == keys
        assert not any(k.startswith("mask_") for k in recs[0])
        for r, (name, _, n) in zip(recs, keys):
            np.testing.assert_array_equal(r["image"], images[(name, n)])
            assert r["has_label"] == ((name, n) in EXPECTED)
            kp, vis, types = EXPECTED.get((name, n), expected([]))
            assert r["keypoints"].dtype == np.float32 and r["keypoints_visible"].dtype == bool and r["instrument_type"].dtype == np.int32
            np.testing.assert_array_equal(r["keypoints"], kp, err_msg=f"{name} frame {n}")
            np.testing.assert_array_equal(r["keypoints_visible"], vis, err_msg=f"{name} frame {n}")
            np.testing.assert_array_equal(r["instrument_type"], types, err_msg=f"{name} frame {n}")
            h, w = r["image"].shape[:2]
            assert r["flow"].shape == (h, w, 2) and r["flow_valid"].shape == (h, w)
        last = recs[-1]
        assert not last["flow"].any() and not last["flow_valid"].any()
        assert recs[0]["flow_valid"].mean() > 0.5 and abs(np.median(recs[0]["flow"][..., 0][recs[0]["flow_valid"]]) - 1) < 0.3


def test_keypoint_stage_reads_it(built):
    """Laparoflow-SSL's key-point stage on it beside another segmentation dataset
    (``config.keypoints.dataset``): it trains on the annotated training frames only and
    scores the annotated test frames."""
    from jaxsurg.configs import laparoflow as laparoflow_config
    from jaxsurg.methods.laparoflow import keypoint_stage

    builder = built[2]
    train, test = builder.as_data_source("train"), builder.as_data_source("test")
    config = laparoflow_config.get_config("variant=tiny")
    config.tfds_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.fspath(builder.data_path))))
    config.keypoints.dataset = "endovis15_keypoints"
    with pytest.raises(ValueError, match="needs --config.keypoints.data_dir"):
        keypoint_stage.keypoint_data(config)
    config.keypoints.data_dir = built[0]
    data = keypoint_stage.keypoint_data(config)
    assert data.class_names == () and data.build.startswith("endovis15_keypoints/")
    rows = keypoint_stage.keypoint_rows(data)
    np.testing.assert_array_equal(rows, [0, 2, 4, 5])
    keys = ("image", "keypoints", "keypoints_visible")
    example = pipeline.Frames(train, rows, "", keys)[0]
    out = keypoint_stage.KeypointExample((36, 44), 1.0).random_map(example, np.random.default_rng(0))
    assert out["heatmap"].shape == (36, 44, 4)
    kp, vis, _ = EXPECTED[("train1", 1)]
    for slot, kind in zip(*np.nonzero(vis)):
        x, y = (kp[slot, kind] + 0.5) * np.array([44 / 90, 36 / 72]) - 0.5
        assert out["heatmap"][round(y), round(x), kind] > 0.6
    assert out["heatmap"][..., SHAFT].max() > 0.9 and (out["heatmap"][..., SHAFT] > 0.9).sum() <= 4  # one Shaft only
    scored = pipeline.Frames(test, data.test_rows, "", keys)
    assert len(scored) == 2 and all(scored[i]["keypoints_visible"].any() for i in range(2))


# ----------------------------------------------------------------------------- refusals


def small_dataset(root, train1=None, raw_text=None):
    """One training and one test video of 2 frames with labels; ``train1`` replaces the
    first training frame's annotations, ``raw_text`` the whole train1 file."""
    write_video(root, "train", 1, 2, SMALL, 1)
    write_video(root, "test", 1, 2, SMALL, 2)
    entries = {frame_name("train", 1): train1 or [pt("HeadPoint", p(5, 5), "tool1")], frame_name("train", 2): []}
    path = write_labels(root, "train", 1, entries, raw_text)
    write_labels(root, "test", 1, {frame_name("test", 1): [pt("HeadPoint", p(5, 5), "tool1")]})
    return path


def test_refuses_an_entry_for_a_missing_frame(tmp_path):
    root = str(tmp_path / "m")
    path = small_dataset(root)
    data = json.load(open(path))
    data.append(dict(data[0], filename=data[0]["filename"].replace("img_000001", "img_000009")))
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError, match=r"train1_labels\.json.*'img_000009_raw\.png'.*Dataset1"):
        builders.prepare("endovis15_keypoints", data_dir=str(tmp_path / "tfds"), manual_dir=root)


def test_refuses_an_unknown_class(tmp_path):
    root = str(tmp_path / "m")
    small_dataset(root, train1=[pt("WristPoint", p(5, 5), "tool1")])
    with pytest.raises(ValueError, match=r"train1_labels\.json.*img_000001_raw\.png.*unknown key-point class 'WristPoint'"):
        builders.prepare("endovis15_keypoints", data_dir=str(tmp_path / "tfds"), manual_dir=root)


def test_refuses_malformed_json(tmp_path):
    root = str(tmp_path / "m")
    small_dataset(root, raw_text='[{"annotations": [], "filename": "img_000001_raw.png"')
    with pytest.raises(ValueError, match=r"train1_labels\.json.*not valid JSON"):
        builders.prepare("endovis15_keypoints", data_dir=str(tmp_path / "tfds"), manual_dir=root)


@pytest.mark.parametrize(
    "points,message",
    [
        ([pt("HeadPoint", p(5, 5), "tool5")], "unknown tool id 'tool5'"),
        ([pt("HeadPoint", (float("nan"), 3.0), "tool1")], "finite numbers"),
        ([pt("HeadPoint", p(5, 5), "tool1"), pt("HeadPoint", p(40, 40))], "no tool of the frame lacks a HeadPoint"),
        ([pt("HeadPoint", p(5, 5))], "no tool of the frame lacks a HeadPoint"),
    ],
)
def test_refuses_points_it_cannot_store(points, message):
    with pytest.raises(ValueError, match=message):
        ev15.frame_keypoints(points, SMALL, "frame x")


def test_refuses_inconsistent_layouts(tmp_path):
    root = str(tmp_path / "a")
    path = small_dataset(root)
    data = json.load(open(path))
    data[0]["filename"] = data[0]["filename"].replace("Dataset1", "Dataset2")
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError, match=r"train1_labels\.json.*entry 0.*Dataset2, not Dataset1"):
        ev15.plan(root)
    root = str(tmp_path / "b")
    small_dataset(root)
    write_labels(root, "train", 3, {})
    with pytest.raises(ValueError, match=r"train3_labels\.json.*Tracking_Robotic_Training/\.\.\./Dataset3/Raw"):
        ev15.plan(root)
    root = str(tmp_path / "c")
    small_dataset(root)
    folder = os.path.join(root, "EndoVis15", "Tracking_Robotic_Testing", "Dataset1", "Raw")
    assert cv2.imwrite(os.path.join(folder, frame_name("test", 3)), np.zeros((36, 45, 3), np.uint8))
    with pytest.raises(ValueError, match=r"img_0003\.png.*\(45, 36\).*same video"):
        ev15.plan(root)
    root = str(tmp_path / "d")
    write_video(root, "train", 1, 2, SMALL, 1)
    write_labels(root, "train", 1, {})
    with pytest.raises(FileNotFoundError, match="no test video found"):
        ev15.plan(root)


def test_fingerprint_follows_the_json_content(tmp_path):
    root = str(tmp_path / "m")
    path = small_dataset(root)
    before = ev15.source_fingerprint(root)
    data = json.load(open(path))
    data[0]["annotations"][0]["x"] += 1.0
    json.dump(data, open(path, "w"))
    assert ev15.source_fingerprint(root) != before
