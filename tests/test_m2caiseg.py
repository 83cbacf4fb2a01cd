"""Tests of the ``m2caiseg`` builder on tiny files in the official m2caiSeg layout."""

from __future__ import annotations

import os

import cv2
import numpy as np

from jaxsurg.data import builders
from jaxsurg.data.builders import cholecseg8k, m2caiseg
import builder_checks
from builder_checks import records

H, W = 24, 40
# The reference colour table (REFERENCE.md, torch-em's loader): RGB → (full, laparoflow4, binary).
# Instruments: grasper..irrigator; specimen bag, trocars, clip → background; unknown → 255.
EXPECTED = {
    (0, 0, 0): (0, 0, 0), (0, 85, 170): (1, 2, 1), (0, 85, 255): (2, 2, 1), (0, 170, 255): (3, 2, 1),
    (0, 255, 85): (4, 2, 1), (0, 255, 170): (5, 2, 1), (85, 0, 170): (6, 2, 1), (85, 0, 255): (7, 0, 0),
    (170, 85, 85): (8, 0, 0), (170, 170, 170): (9, 0, 0), (85, 170, 0): (10, 0, 0), (85, 170, 255): (11, 3, 0),
    (85, 255, 0): (12, 1, 0), (85, 255, 170): (13, 0, 0), (170, 0, 255): (14, 0, 0), (255, 0, 255): (15, 0, 0),
    (255, 255, 0): (16, 0, 0), (255, 0, 0): (17, 0, 0), (170, 0, 85): (255, 255, 255),
    (0, 170, 85): (3, 2, 1),  # hook as in the dataset authors' class file
}
TASKS = ("full", "laparoflow4", "binary")


def colour_grid(shift: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 24×40 label using all 20 colours in 6×8 blocks (rolled by ``shift`` blocks) and the
    expected class map of each task."""
    colours = list(EXPECTED)
    rgb = np.zeros((H, W, 3), np.uint8)
    want = {t: np.zeros((H, W), np.uint8) for t in TASKS}
    for k in range(20):
        colour = colours[(k + shift) % 20]
        ys, xs = slice(6 * (k // 5), 6 * (k // 5) + 6), slice(8 * (k % 5), 8 * (k % 5) + 8)
        rgb[ys, xs] = colour
        for t, v in zip(TASKS, EXPECTED[colour]):
            want[t][ys, xs] = v
    return rgb, want


def write_png_rgb(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_image(path: str, seed: int, height: int = H, width: int = W) -> np.ndarray:
    """A random JPEG image; returns it as decoded from the file."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def official_layout(root: str, train=(0, 2, 10), test=(1, 5), unlabelled=(2,)) -> tuple[dict, dict]:
    """``root/m2caiSeg dataset/{train,test}/{images/N.jpg, groundtruth/N_gt.png}`` (and a
    ``trainval`` copy that must not be read). Returns (split, N) → image and → expected masks."""
    images, masks = {}, {}
    base = os.path.join(root, "m2caiSeg dataset")
    for split, numbers in (("train", train), ("test", test)):
        for n in numbers:
            images[split, n] = write_image(os.path.join(base, split, "images", f"{n}.jpg"), seed=n + 100 * (split == "test"))
            if split == "train" and n in unlabelled:
                continue
            rgb, masks[split, n] = colour_grid(shift=n)
            write_png_rgb(os.path.join(base, split, "groundtruth", f"{n}_gt.png"), rgb)
    write_image(os.path.join(base, "trainval", "images", "99.jpg"), seed=99)
    with open(os.path.join(base, "train", "images", "._0.jpg"), "wb") as f:  # hidden (macOS): not read
        f.write(b"\0\5\26\7")
    return images, masks


def expect_error(tmp_path, root, error, *patterns, config=None):
    builder_checks.expect_error(tmp_path, "m2caiseg", root, error, *patterns, config=config)


def test_task_classes():
    assert m2caiseg.LAPAROFLOW4_CLASSES == cholecseg8k.LAPAROFLOW4_CLASSES
    assert m2caiseg.BINARY_CLASSES == cholecseg8k.BINARY_CLASSES
    assert {t: len(c) for t, c in m2caiseg.TASK_CLASSES.items()} == {"full": 18, "laparoflow4": 4, "binary": 2}
    assert m2caiseg.FULL_CLASSES[3] == "hook" and m2caiseg.FULL_CLASSES[11] == "gallbladder"


def test_decode_colours_exact():
    rgb, want = colour_grid()
    full, off = m2caiseg.decode_colours(rgb)
    assert off == 0
    maps = m2caiseg.map_full(full)
    for t in TASKS:
        np.testing.assert_array_equal(maps[t], want[t])


def test_build_official_layout(tmp_path, capsys):
    root = str(tmp_path / "manual")
    images, masks = official_layout(root)
    builder = builders.prepare("m2caiseg", data_dir=str(tmp_path / "tfds"), manual_dir=root)
    assert "unlabelled" in capsys.readouterr().out  # train image 2 has no label
    for split, numbers in (("train", [0, 2, 10]), ("test", [1, 5])):
        recs = records(builder, split)
        assert [r["frame_index"] for r in recs] == numbers  # numeric, not string, order
        for r in recs:
            n = int(r["frame_index"])
            assert r["video_id"] == 0 and r["video_name"] == split.encode()
            np.testing.assert_array_equal(r["image"], images[split, n])
            assert r["flow"].shape == (H, W, 2) and not r["flow"].any() and not r["flow_valid"].any()
            assert r["has_label"] == ((split, n) in masks)
            for t in TASKS:
                want = masks[split, n][t] if r["has_label"] else np.full((H, W), 255, np.uint8)
                np.testing.assert_array_equal(r[f"mask_{t}"][..., 0], want, err_msg=f"{split} {n} {t}")
    # a second prepare reuses the build
    again = builders.prepare("m2caiseg", data_dir=str(tmp_path / "tfds"), manual_dir=root)
    assert again.data_dir == builder.data_dir and "reused" in capsys.readouterr().out


def test_label_size_mismatch_is_resized(tmp_path, capsys):
    root = str(tmp_path / "manual")
    official_layout(root, train=(0,), test=(1,), unlabelled=())
    small = os.path.join(root, "m2caiSeg dataset", "train", "groundtruth", "0_gt.png")
    rgb, _ = colour_grid(shift=0)
    write_png_rgb(small, rgb[::2, ::2])  # 20×12: same aspect, half size
    builder = builders.prepare("m2caiseg", data_dir=str(tmp_path / "tfds"), manual_dir=root)
    out = capsys.readouterr().out
    assert "resized" in out and os.path.join("train", "groundtruth", "0_gt.png") in out and "20×12→40×24" in out
    full = cv2.resize(m2caiseg.decode_colours(rgb[::2, ::2])[0], (W, H), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(records(builder, "train")[0]["mask_full"][..., 0], full)


def test_label_of_another_shape_is_refused(tmp_path):
    root = str(tmp_path / "manual")
    official_layout(root, train=(0,), test=(1,), unlabelled=())
    bad = os.path.join(root, "m2caiSeg dataset", "test", "groundtruth", "1_gt.png")
    write_png_rgb(bad, np.zeros((H, H, 3), np.uint8))
    expect_error(tmp_path, root, ValueError, bad, "24×24", "40×24")


def test_off_table_colours(tmp_path, capsys):
    root = str(tmp_path / "manual")
    official_layout(root, train=(0,), test=(1,), unlabelled=())
    path = os.path.join(root, "m2caiSeg dataset", "train", "groundtruth", "0_gt.png")
    rgb, want = colour_grid(shift=0)
    rgb[0, 0], rgb[5, 9] = (3, 80, 170), (200, 1, 2)  # 2 of 960 pixels: ignored
    write_png_rgb(path, rgb)
    builder = builders.prepare("m2caiseg", data_dir=str(tmp_path / "tfds"), manual_dir=root)
    assert "2 pixels in 1 labels have no class colour" in capsys.readouterr().out
    rec = records(builder, "train")[0]
    for t in TASKS:
        expected = want[t].copy()
        expected[0, 0] = expected[5, 9] = 255
        np.testing.assert_array_equal(rec[f"mask_{t}"][..., 0], expected)
    # with no tolerance the same file is refused
    expect_error(tmp_path / "strict", root, ValueError, path, "(3, 80, 170): 1 px", config="default:max_off_table_fraction=0")
    # a whole block of an unknown colour (5 %) is refused by default, the colour listed
    rgb[:6, :8] = (1, 2, 3)
    write_png_rgb(path, rgb)
    expect_error(tmp_path / "block", root, ValueError, path, "(1, 2, 3): 48 px", "5.")


def test_layout_errors(tmp_path):
    root = str(tmp_path / "manual")
    base = os.path.join(root, "m2caiSeg dataset")
    official_layout(root, train=(0,), test=(1,), unlabelled=())
    orphan = os.path.join(base, "test", "groundtruth", "7_gt.png")
    write_png_rgb(orphan, np.zeros((H, W, 3), np.uint8))
    expect_error(tmp_path, root, ValueError, orphan, "has no image 7")
    os.remove(orphan)
    twice = os.path.join(base, "train", "images", "00.jpg")
    write_image(twice, seed=5)
    expect_error(tmp_path, root, ValueError, twice, "image 0")
    os.remove(twice)
    misnamed = os.path.join(base, "train", "images", "frame3.jpg")
    write_image(misnamed, seed=5)
    expect_error(tmp_path, root, ValueError, misnamed, "N.jpg")
    os.remove(misnamed)
    corrupt = os.path.join(base, "train", "images", "0.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"not a jpeg")
    expect_error(tmp_path, root, ValueError, corrupt)


def test_missing_split_or_dir(tmp_path):
    root = str(tmp_path / "manual")
    write_image(os.path.join(root, "train", "images", "0.jpg"), seed=0)
    os.makedirs(os.path.join(root, "train", "groundtruth"))
    expect_error(tmp_path, root, FileNotFoundError, "test/images", "<manual_dir>/test/groundtruth/0_gt.png")
    expect_error(tmp_path, str(tmp_path / "nowhere"), FileNotFoundError, "nowhere")
