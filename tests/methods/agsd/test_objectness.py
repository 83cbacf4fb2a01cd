"""AGSD's objectness cue (jaxsurg.methods.agsd.objectness): spectral-residual saliency on a
synthetic blob, BING on a real frame of ../shared/data when present (ranked against the
instrument mask by pixel AUC), the BING folder checks and the argument errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from jaxsurg.methods.agsd import objectness
from jaxsurg.methods.agsd.cues import pixel_auc

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # tests/methods/agsd/ → repo → ../shared/data
CLIP = DATA / "cholecseg8k_clip"
BING = DATA / "bing_objectness"
needs_bing = pytest.mark.skipif(
    not (BING.is_dir() and CLIP.is_dir()), reason="../shared/data/bing_objectness or cholecseg8k_clip is absent"
)


def _real_frame(n=561):
    image = cv2.cvtColor(cv2.imread(str(CLIP / f"frame_{n}_endo.png")), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(CLIP / f"frame_{n}_endo_watershed_mask.png"), cv2.IMREAD_UNCHANGED)[..., 0]
    return image, np.isin(mask, (31, 32)), mask != 255


def test_spectral_residual_is_in_unit_range_and_peaks_at_a_blob():
    image = np.full((60, 90, 3), 120, np.uint8)
    image += np.random.default_rng(3).integers(0, 6, image.shape, dtype=np.uint8)
    image[20:32, 55:70] = (240, 240, 240)
    m = objectness.spectral_residual_saliency(image)
    assert m.shape == (60, 90) and m.dtype == np.float32
    assert m.min() >= 0 and m.max() == 1.0
    assert m[20:32, 55:70].mean() > 3 * m[:, :30].mean()
    obj = objectness.objectness_cue(np.stack([image, image[::-1]]))
    assert obj.shape == (2, 60, 90) and obj.dtype == np.float32
    np.testing.assert_array_equal(obj[0], m)


@needs_bing
def test_bing_on_a_real_frame_ranks_the_instrument_high():
    image, truth, known = _real_frame()
    bing = objectness.BingObjectness(BING, top_k=1000, weight="count")
    m = bing(image)
    assert m.shape == image.shape[:2] and m.dtype == np.float32
    assert m.min() >= 0 and m.max() == 1.0
    assert pixel_auc(m, truth, known) > 0.9  # 0.96 over the 72 frames at this size
    boxes, values = bing.boxes(image)
    assert boxes.shape[1] == 4 and len(boxes) == len(values) > 1000
    assert np.all(np.diff(values) >= 0)  # best first = lowest OpenCV value first
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 854) and np.all(boxes[:, 3] <= 480)
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    assert (Path(bing._results.name) / "BBoxesB2W8I" / "bb.txt").is_file()  # OpenCV's side file stays private
    score = objectness.bing_objectness(image, BING, weight="score")
    assert score.max() == 1.0 and not np.array_equal(score, m)


@needs_bing
def test_bing_on_small_images_and_through_objectness_cue():
    image, _, _ = _real_frame()
    small = np.stack([cv2.resize(image, (232, 128), interpolation=cv2.INTER_AREA)] * 2)
    obj = objectness.objectness_cue(small, method="bing", model_dir=BING, top_k=50)
    assert obj.shape == (2, 128, 232) and obj.dtype == np.float32 and obj.max() == 1.0
    np.testing.assert_array_equal(obj[0], obj[1])
    bing = objectness.BingObjectness(BING)
    assert bing(cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)).max() == 1.0
    tiny = cv2.resize(image, (6, 5), interpolation=cv2.INTER_AREA)  # under BING's smallest window: no boxes
    assert len(bing.boxes(tiny)[0]) == 0
    np.testing.assert_array_equal(bing(tiny), np.zeros((5, 6), np.float32))


def test_bing_folder_checks_name_the_folder_and_the_files(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder") as e:
        objectness.BingObjectness(missing)
    assert "ObjNessB2W8MAXBGR.idx.yml.gz" in str(e.value) and "ObjNessB2W8I.wS2.yml.gz" in str(e.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in objectness.BING_MODEL_FILES[:3]:
        (partial / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks ObjNessB2W8HSV.idx.yml.gz"):
        objectness.BingObjectness(partial)
    with pytest.raises(FileNotFoundError):
        objectness.objectness_cue(np.zeros((1, 8, 8, 3), np.uint8), method="bing", model_dir=missing)


def test_objectness_cue_and_bing_argument_errors(tmp_path, monkeypatch):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="method"):
        objectness.objectness_cue(images, method="edge_boxes")
    with pytest.raises(ValueError, match="model_dir"):
        objectness.objectness_cue(images, method="bing")
    if BING.is_dir():
        with pytest.raises(ValueError, match="weight"):
            objectness.BingObjectness(BING, weight="area")
        with pytest.raises(ValueError, match="top_k"):
            objectness.BingObjectness(BING, top_k=0)
    monkeypatch.delattr(cv2, "saliency")
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        objectness.BingObjectness(tmp_path)
