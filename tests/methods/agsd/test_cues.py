"""AGSD's colour and location cues (jaxsurg.methods.agsd.cues): the colour cue against a
direct skimage computation, the location cue as a per-video mean, and pixel_auc against a
brute-force pairwise count (the objectness cue: test_objectness.py)."""

import numpy as np
import pytest

from jaxsurg.methods.agsd import cues


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

