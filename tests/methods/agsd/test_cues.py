"""AGSD's cues (jaxsurg.methods.agsd.cues): the colour cue against a direct skimage
computation, the location cue as a per-video mean, spectral-residual and BING objectness
(on a real frame of ../shared/data when present), the BING folder checks, and pixel_auc
against a brute-force pairwise count."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from jaxsurg.methods.agsd import cues

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # tests/methods/agsd/ → repo → ../shared/data
CLIP = DATA / "cholecseg8k_clip"
BING = DATA / "bing_objectness"
needs_clip = pytest.mark.skipif(not CLIP.is_dir(), reason="../shared/data/cholecseg8k_clip is absent")
needs_bing = pytest.mark.skipif(
    not (BING.is_dir() and CLIP.is_dir()), reason="../shared/data/bing_objectness or cholecseg8k_clip is absent"
)


def _real_frame(n=561):
    image = cv2.cvtColor(cv2.imread(str(CLIP / f"frame_{n}_endo.png")), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(CLIP / f"frame_{n}_endo_watershed_mask.png"), cv2.IMREAD_UNCHANGED)[..., 0]
    return image, np.isin(mask, (31, 32)), mask != 255


def _patches():
    """A 2×3 image: grey, saturated red, white, dark grey, a pinkish tissue colour, black."""
    return np.array([[[128, 128, 128], [200, 30, 30], [255, 255, 255]], [[60, 60, 60], [190, 110, 100], [0, 0, 0]]], np.uint8)[None]


# --------------------------------------------------------------------------- colour


@pytest.mark.parametrize("normalise", ["fixed", "minmax"])
def test_colour_cue_scores_grey_above_saturated_red(normalise):
    c = np.asarray(cues.colour_cue(_patches(), normalise=normalise))
    assert c.shape == (1, 2, 3) and c.dtype == np.float32
    assert np.all((c >= 0) & (c <= 1))
    grey, red, tissue = c[0, 0, 0], c[0, 0, 1], c[0, 1, 1]
    assert grey > tissue > red


def test_colour_cue_fixed_matches_skimage_formula():
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    images[0, 0, 0] = (255, 0, 255)  # extreme a* (≈ +98)
    got = np.asarray(cues.colour_cue(images, normalise="fixed"))
    rgb = images / 255.0
    a = np.clip((color.rgb2lab(rgb)[..., 1] + 128) / 255, 0, 1)
    s = color.rgb2hsv(rgb)[..., 1]
    np.testing.assert_allclose(got, (1 - a) * (1 - s), rtol=0, atol=2e-4)  # skimage's D65 white differs in the 5th digit


def test_colour_cue_minmax_rescales_over_the_valid_pixels():
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(1)
    images = rng.integers(20, 230, (2, 8, 10, 3), dtype=np.uint8)
    valid = np.ones((2, 8, 10), bool)
    valid[:, :2] = False
    images[:, :2] = (255, 0, 0)  # extreme red outside the field of view must not set the range
    got = np.asarray(cues.colour_cue(images, normalise="minmax", valid=valid))
    want = np.empty_like(got)
    for i in range(2):
        a = color.rgb2lab(images[i] / 255.0)[..., 1]
        s = color.rgb2hsv(images[i] / 255.0)[..., 1]
        a = np.clip((a - a[valid[i]].min()) / np.ptp(a[valid[i]]), 0, 1)
        s = np.clip((s - s[valid[i]].min()) / np.ptp(s[valid[i]]), 0, 1)
        want[i] = (1 - a) * (1 - s)
    np.testing.assert_allclose(got[valid], want[valid], rtol=0, atol=2e-3)
    assert got[valid].min() >= 0 and got[valid].max() <= 1 and got[~valid].max() == 0.0  # clipped to A = S = 1


def test_colour_cue_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        cues.colour_cue(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        cues.colour_cue(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="normalise"):
        cues.colour_cue(np.zeros((1, 4, 4, 3), np.uint8), normalise="zscore")
    with pytest.raises(ValueError, match="valid"):
        cues.colour_cue(np.zeros((1, 4, 4, 3), np.uint8), valid=np.ones((4, 4), bool))


# --------------------------------------------------------------------------- location


def test_location_cue_is_the_mean_colour_map_of_each_video():
    rng = np.random.default_rng(2)
    colour = rng.random((6, 4, 5)).astype(np.float32)
    ids = np.array([3, 1, 3, 7, 1, 3])
    loc = np.asarray(cues.location_cue(colour, ids))
    assert loc.shape == colour.shape and loc.dtype == np.float32
    for i, v in enumerate(ids):
        np.testing.assert_allclose(loc[i], colour[ids == v].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(loc[3], colour[3])  # a video of one frame
    with pytest.raises(ValueError, match="video_id"):
        cues.location_cue(colour, ids[:5])
    with pytest.raises(ValueError, match="video_id"):
        cues.location_cue(colour, ids.astype(float))


# --------------------------------------------------------------------------- objectness


def test_spectral_residual_is_in_unit_range_and_peaks_at_a_blob():
    image = np.full((60, 90, 3), 120, np.uint8)
    image += np.random.default_rng(3).integers(0, 6, image.shape, dtype=np.uint8)
    image[20:32, 55:70] = (240, 240, 240)
    m = cues.spectral_residual_saliency(image)
    assert m.shape == (60, 90) and m.dtype == np.float32
    assert m.min() >= 0 and m.max() == 1.0
    assert m[20:32, 55:70].mean() > 3 * m[:, :30].mean()
    obj = cues.objectness_cue(np.stack([image, image[::-1]]))
    assert obj.shape == (2, 60, 90) and obj.dtype == np.float32
    np.testing.assert_array_equal(obj[0], m)


@needs_bing
def test_bing_on_a_real_frame_ranks_the_instrument_high():
    image, truth, known = _real_frame()
    bing = cues.BingObjectness(BING, top_k=1000, weight="count")
    m = bing(image)
    assert m.shape == image.shape[:2] and m.dtype == np.float32
    assert m.min() >= 0 and m.max() == 1.0
    assert cues.pixel_auc(m, truth, known) > 0.9  # 0.96 over the 72 frames at this size
    boxes, values = bing.boxes(image)
    assert boxes.shape[1] == 4 and len(boxes) == len(values) > 1000
    assert np.all(np.diff(values) >= 0)  # best first = lowest OpenCV value first
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 854) and np.all(boxes[:, 3] <= 480)
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    assert (Path(bing._results.name) / "BBoxesB2W8I" / "bb.txt").is_file()  # OpenCV's side file stays private
    score = cues.bing_objectness(image, BING, weight="score")
    assert score.max() == 1.0 and not np.array_equal(score, m)


@needs_bing
def test_bing_on_small_images_and_through_objectness_cue():
    image, _, _ = _real_frame()
    small = np.stack([cv2.resize(image, (232, 128), interpolation=cv2.INTER_AREA)] * 2)
    obj = cues.objectness_cue(small, method="bing", model_dir=BING, top_k=50)
    assert obj.shape == (2, 128, 232) and obj.dtype == np.float32 and obj.max() == 1.0
    np.testing.assert_array_equal(obj[0], obj[1])
    bing = cues.BingObjectness(BING)
    assert bing(cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)).max() == 1.0
    tiny = cv2.resize(image, (6, 5), interpolation=cv2.INTER_AREA)  # under BING's smallest window: no boxes
    assert len(bing.boxes(tiny)[0]) == 0
    np.testing.assert_array_equal(bing(tiny), np.zeros((5, 6), np.float32))


def test_bing_folder_checks_name_the_folder_and_the_files(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder") as e:
        cues.BingObjectness(missing)
    assert "ObjNessB2W8MAXBGR.idx.yml.gz" in str(e.value) and "ObjNessB2W8I.wS2.yml.gz" in str(e.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in cues.BING_MODEL_FILES[:3]:
        (partial / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks ObjNessB2W8HSV.idx.yml.gz"):
        cues.BingObjectness(partial)
    with pytest.raises(FileNotFoundError):
        cues.objectness_cue(np.zeros((1, 8, 8, 3), np.uint8), method="bing", model_dir=missing)


def test_objectness_cue_and_bing_argument_errors(tmp_path, monkeypatch):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="method"):
        cues.objectness_cue(images, method="edge_boxes")
    with pytest.raises(ValueError, match="model_dir"):
        cues.objectness_cue(images, method="bing")
    if BING.is_dir():
        with pytest.raises(ValueError, match="weight"):
            cues.BingObjectness(BING, weight="area")
        with pytest.raises(ValueError, match="top_k"):
            cues.BingObjectness(BING, top_k=0)
    monkeypatch.delattr(cv2, "saliency")
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        cues.BingObjectness(tmp_path)


# --------------------------------------------------------------------------- pixel AUC


def _brute_auc(score, truth):
    pos, neg = score[truth], score[~truth]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(4))
def test_pixel_auc_equals_a_brute_force_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((2, 9, 7)) < 0.3
    score = np.round(rng.random((2, 9, 7)) + 0.4 * truth, 1)  # one decimal: many ties
    valid = rng.random((2, 9, 7)) < 0.8
    got = cues.pixel_auc(score, truth, valid)
    assert got == pytest.approx(_brute_auc(score[valid], truth[valid]), abs=1e-12)
    assert cues.pixel_auc(score, truth.astype(np.uint8)) == pytest.approx(_brute_auc(score.ravel(), truth.ravel()), abs=1e-12)


def test_pixel_auc_equals_sklearn():
    metrics = pytest.importorskip("sklearn.metrics", reason="sklearn is optional (not installed here)")
    rng = np.random.default_rng(9)
    truth = rng.random(500) < 0.2
    score = np.round(rng.random(500) + 0.3 * truth, 2)
    assert cues.pixel_auc(score, truth) == pytest.approx(metrics.roc_auc_score(truth, score), abs=1e-12)


def test_pixel_auc_edge_cases():
    truth = np.array([[True, False], [False, False]])
    assert cues.pixel_auc(np.array([[0.9, 0.1], [0.2, 0.3]]), truth) == 1.0
    assert cues.pixel_auc(np.array([[0.0, 0.1], [0.2, 0.3]]), truth) == 0.0
    assert cues.pixel_auc(np.ones((2, 2)), truth) == 0.5
    assert np.isnan(cues.pixel_auc(np.ones((2, 2)), np.zeros((2, 2), bool)))
    assert np.isnan(cues.pixel_auc(np.ones((2, 2)), truth, valid=~truth))
    with pytest.raises(ValueError, match="shape"):
        cues.pixel_auc(np.ones((2, 2)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="binary"):
        cues.pixel_auc(np.ones((2, 2)), np.full((2, 2), 2))

