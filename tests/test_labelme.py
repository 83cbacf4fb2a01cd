"""Tests of the ``labelme`` builder: tiny frames with LabelMe JSON files, and the real
CholecT50 VID03 sample (10 frames) when it is present."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from jaxsurg.data import builders, pipeline
from jaxsurg.data.builders import common, labelme
import builder_checks
from builder_checks import records

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VID03 = os.path.join(REPO, "..", "shared", "data", "cholect50_vid03")
H, W = 24, 32


def moving_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """n RGB frames of a smooth texture panning 1 px/frame to the right."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.random((H, W + n, 3)).astype(np.float32), (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    return [np.ascontiguousarray(big[:, n - t : n - t + W]) for t in range(n)]


def write_frame(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_json(path: str, shapes: list, height: int = H, width: int = W, **extra) -> None:
    data = {"version": "5.0.1", "flags": {}, "shapes": shapes, "imagePath": "elsewhere/x.png",
            "imageData": None, "imageHeight": height, "imageWidth": width, **extra}
    with open(path, "w") as f:
        json.dump(data, f)


def poly(label: str, points, kind: str = "polygon") -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def box(x0: int, y0: int, x1: int, y1: int) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def two_videos(root: str) -> dict:
    """caseB/clip (3 frames: empty shapes, shapes, no JSON) and caseA (1 frame, 'Specimen Bag'
    polygon). Returns (video_id, frame_index) → (image, expected mask)."""
    frames = moving_frames(3)
    b = os.path.join(root, "caseB", "clip")
    out = {}
    for t, n in enumerate((8, 9, 10)):  # natural order: 8, 9, 10 (not "10" < "8")
        write_frame(os.path.join(b, f"VID_{n}.png"), frames[t])
    write_json(os.path.join(b, "VID_8.json"), [])
    with open(os.path.join(b, "._VID_8.png"), "wb") as f:  # a macOS resource fork: hidden, not read
        f.write(b"\0\5\26\7")
    shapes = [
        poly("grasper", box(2, 3, 10, 8)),
        poly("Hook", [[20.4, 10.5], [27.6, 10.5], [27.6, 14.4], [20.4, 14.4]]),  # → columns 20..28, rows 11..14
        poly("hook", [[12, 10], [5, 4]], kind="rectangle"),  # corners in any order: rows 4..10, columns 5..12
        poly("specimen_bag", box(6, 5, 7, 6)),  # background drawn later: erases
    ]
    write_json(os.path.join(b, "VID_9.json"), shapes)
    want = np.zeros((H, W), np.uint8)
    want[3:9, 2:11] = 1
    want[11:15, 20:29] = 1
    want[4:11, 5:13] = 1
    want[5:7, 6:8] = 0
    out[1, 8] = (frames[0], np.zeros((H, W), np.uint8))
    out[1, 9] = (frames[1], want)
    out[1, 10] = (frames[2], np.full((H, W), 255, np.uint8))
    a = os.path.join(root, "caseA")
    still = moving_frames(1, seed=4)[0]
    write_frame(os.path.join(a, "shot_0003.jpg"), still)
    write_json(os.path.join(a, "shot_0003.json"), [poly("Specimen Bag", box(0, 0, 31, 23)), poly("grasper", box(1, 1, 2, 2))])
    jpeg = cv2.cvtColor(cv2.imread(os.path.join(a, "shot_0003.jpg")), cv2.COLOR_BGR2RGB)
    want_a = np.zeros((H, W), np.uint8)
    want_a[1:3, 1:3] = 1
    out[0, 3] = (jpeg, want_a)
    return out


def expect_error(tmp_path, root, error, *patterns, config=None):
    builder_checks.expect_error(tmp_path, "labelme", root, error, *patterns, config=config)


def test_label_map_parsing_and_config_strings():
    assert labelme.parse_label_map("grasper:instrument Hook:ignore specimen-bag:Background") == {
        "grasper": 1, "hook": 255, "specimen_bag": 0}
    for bad in ("grasper", "grasper:tool", "a:instrument a:background", "", ":instrument"):
        with pytest.raises(ValueError, match="label_map|label:class"):
            labelme.parse_label_map(bad)
    text = "grasper:instrument hook:ignore specimen_bag:background"
    cfg = common.resolve_config(labelme.Labelme, f"default:label_map={text}")
    assert cfg.label_map == text and cfg.name.startswith("default-")
    assert common.resolve_config(labelme.Labelme, f"default:label_map={text} ").name == cfg.name  # outer spaces stripped
    assert common.resolve_config(labelme.Labelme, "default:label_map=hook:instrument").name != cfg.name

    class Config(dict):
        __getattr__ = dict.__getitem__

    spec = pipeline.builder_config_name(Config(dataset="labelme", label_map=text, variant=""))
    assert common.resolve_config(labelme.Labelme, spec).label_map == text


def test_build_two_videos(tmp_path):
    root = str(tmp_path / "manual")
    expected = two_videos(root)
    builder = builders.prepare("labelme", data_dir=str(tmp_path / "tfds"), manual_dir=root)
    recs = records(builder)
    assert [(int(r["video_id"]), int(r["frame_index"])) for r in recs] == [(0, 3), (1, 8), (1, 9), (1, 10)]
    assert [r["video_name"] for r in recs] == [b"caseA", b"caseB/clip", b"caseB/clip", b"caseB/clip"]
    assert [bool(r["has_label"]) for r in recs] == [True, True, True, False]
    for r in recs:
        image, mask = expected[int(r["video_id"]), int(r["frame_index"])]
        np.testing.assert_array_equal(r["image"], image)
        np.testing.assert_array_equal(r["mask_binary"][..., 0], mask, err_msg=str(r["frame_index"]))
    # flow within caseB/clip: the texture pans +1 px/frame; last frames of each folder have none
    for r in (recs[0], recs[3]):
        assert not r["flow"].any() and not r["flow_valid"].any()
    for r in recs[1:3]:
        inner = r["flow"][4:-4, 4:-4]
        assert abs(np.median(inner[..., 0]) - 1.0) < 0.3 and abs(np.median(inner[..., 1])) < 0.3


def test_ignore_class_and_custom_map(tmp_path):
    root = str(tmp_path / "manual")
    write_frame(os.path.join(root, "f1.png"), moving_frames(1)[0])
    write_json(os.path.join(root, "f1.json"), [poly("tool", box(0, 0, 9, 9)), poly("smoke", box(5, 5, 14, 14))])
    builder = builders.prepare("labelme", data_dir=str(tmp_path / "tfds"), manual_dir=root,
                               config="default:label_map=tool:instrument smoke:ignore")
    (rec,) = records(builder)
    want = np.zeros((H, W), np.uint8)
    want[:10, :10] = 1
    want[5:15, 5:15] = 255
    np.testing.assert_array_equal(rec["mask_binary"][..., 0], want)
    assert rec["video_name"] == b"manual"  # frames directly in the manual dir


def test_unknown_label_is_refused(tmp_path):
    root = str(tmp_path / "manual")
    write_frame(os.path.join(root, "v", "f1.png"), moving_frames(1)[0])
    path = os.path.join(root, "v", "f1.json")
    write_json(path, [poly("grasper", box(0, 0, 3, 3)), poly("Suction Tube", box(5, 5, 8, 8))])
    expect_error(tmp_path, root, ValueError, path, "'Suction Tube'", "suction_tube:instrument", "label_map")


@pytest.mark.parametrize("case", ["bad_json", "no_shapes", "size", "circle", "two_points", "outside"])
def test_bad_json_is_refused(tmp_path, case):
    root = str(tmp_path / "manual")
    write_frame(os.path.join(root, "f1.png"), moving_frames(1)[0])
    path = os.path.join(root, "f1.json")
    if case == "bad_json":
        with open(path, "w") as f:
            f.write('{"shapes": [')
        patterns = ("cannot read LabelMe file",)
    elif case == "no_shapes":
        write_json(path, None)
        patterns = ("no 'shapes' list",)
    elif case == "size":
        write_json(path, [], height=H * 2)
        patterns = (f"{W}×{H * 2}", f"{W}×{H}")
    elif case == "circle":
        write_json(path, [poly("grasper", [[5, 5], [8, 8]], kind="circle")])
        patterns = ("'circle'", "'grasper'", "polygon")
    elif case == "two_points":
        write_json(path, [poly("grasper", [[5, 5], [8, 8]])])
        patterns = ("at least 3", "got 2")
    else:
        write_json(path, [poly("grasper", box(0, 0, W * 2, 5))])
        patterns = ("outside",)
    expect_error(tmp_path, root, ValueError, path, *patterns)


def test_layout_errors(tmp_path):
    root = str(tmp_path / "manual")
    frames = moving_frames(2)
    write_frame(os.path.join(root, "v", "a_1.png"), frames[0])
    lonely = os.path.join(root, "v", "a_2.json")
    write_json(lonely, [])
    expect_error(tmp_path, root, ValueError, lonely, "has no image")
    os.remove(lonely)
    elsewhere = os.path.join(root, "notes", "a_1.json")  # a folder of JSON files only
    os.makedirs(os.path.dirname(elsewhere))
    write_json(elsewhere, [])
    expect_error(tmp_path, root, ValueError, elsewhere, "has no image")
    os.remove(elsewhere)
    twice = os.path.join(root, "v", "b_01.png")
    write_frame(twice, frames[1])
    expect_error(tmp_path, root, ValueError, twice, "frame 1")
    os.remove(twice)
    disorder = os.path.join(root, "v", "b_0.png")  # after a_1 by name, before it by number
    write_frame(disorder, frames[1])
    expect_error(tmp_path, root, ValueError, disorder, "names and numbers")
    os.remove(disorder)
    nodigit = os.path.join(root, "v", "cover.png")
    write_frame(nodigit, frames[1])
    expect_error(tmp_path, root, ValueError, nodigit, "no number")
    os.remove(nodigit)
    bigger = os.path.join(root, "v", "a_5.png")
    write_frame(bigger, np.zeros((H + 2, W, 3), np.uint8))
    expect_error(tmp_path, root, ValueError, bigger, "one size")
    expect_error(tmp_path, str(tmp_path / "nowhere"), FileNotFoundError, "nowhere")


@pytest.fixture(scope="module")
def real_vid03(tmp_path_factory):
    if not os.path.isdir(VID03):
        pytest.skip(f"the real CholecT50 VID03 sample is not at {os.path.abspath(VID03)}")
    # DIS preset "fast" keeps this file well under 15 s on a busy 2-core machine (medium: ~2-7 s more)
    builder = builders.prepare("labelme", data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=VID03,
                               config="default:flow_preset=fast")
    return records(builder)


def test_real_vid03(real_vid03):
    recs = real_vid03
    assert len(recs) == 10
    assert [int(r["frame_index"]) for r in recs] == list(range(0, 300, 30))
    assert {int(r["video_id"]) for r in recs} == {0} and recs[0]["video_name"] == b"cholect50_vid03"
    assert all(r["has_label"] for r in recs)
    assert recs[0]["image"].shape == (480, 854, 3) and recs[0]["mask_binary"].shape == (480, 854, 1)
    masks = [r["mask_binary"][..., 0] for r in recs]
    assert (masks[0] == 0).all()  # frame 000000: empty shapes list
    assert all(set(np.unique(m).tolist()) <= {0, 1} for m in masks)
    fractions = [float((m == 1).mean()) for m in masks[1:]]
    assert all(0.01 < f < 0.35 for f in fractions), fractions  # 2.2 % to 28.6 %
    assert 0.10 < np.mean(fractions) < 0.15, fractions  # 12.5 %: close-up tools
    # frame 000030: one grasper polygon, its filled area close to the shoelace area
    with open(os.path.join(VID03, "t80_VID03_000030.json")) as f:
        (shape,) = json.load(f)["shapes"]
    x, y = np.asarray(shape["points"]).T
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert abs((masks[1] == 1).sum() / area - 1) < 0.1
    assert not recs[-1]["flow"].any() and recs[0]["flow_valid"].any()
    # LabelMe's own conversion (shape_to_mask: PIL polygons with outline) agrees to < 1 % of the pixels
    from PIL import Image, ImageDraw

    differ = drawn = 0
    for r, m in zip(recs, masks):
        with open(os.path.join(VID03, f"t80_VID03_{int(r['frame_index']):06d}.json")) as f:
            shapes = json.load(f)["shapes"]
        canvas = Image.new("L", (854, 480), 0)
        for shape in shapes:
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in shape["points"]], outline=1, fill=1)
        theirs = np.asarray(canvas) == 1
        differ, drawn = differ + int(((m == 1) != theirs).sum()), drawn + int(theirs.sum())
    assert differ < 0.01 * drawn, (differ, drawn)  # 0.36 %
