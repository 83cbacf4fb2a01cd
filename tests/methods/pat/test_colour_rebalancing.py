"""PAT's colour rebalancing: a*, b* histograms of frames (against scikit-image's Lab), the
rarity weights of a hand-made histogram recomputed step by step in numpy (Gaussian smoothing
with reflecting boundaries, Zhang et al.'s mix, E_p̃[w] = 1), the literal relative frequency,
the per-pixel lookup and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsurg.methods.pat.colour_rebalancing import (
    NUM_BINS,
    ab_histograms,
    accumulate_ab_histograms,
    rebalancing_weights,
    weight_map,
)

skimage_color = pytest.importorskip("skimage.color")


def _hand_rarity(counts, mix=0.5, sigma=5.0):
    """Zhang et al. 2016 per row, written out: a truncated (4σ) normalised Gaussian, the
    histogram extended by mirroring (scipy's 'reflect' = numpy's 'symmetric')."""
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = []
    for row in np.asarray(counts, np.float64):
        p = row / row.sum()
        padded = np.pad(p, radius, mode="symmetric")
        smooth = np.array([padded[i : i + 2 * radius + 1] @ taps for i in range(len(p))])
        smooth /= smooth.sum()
        w = 1 / ((1 - mix) * smooth + mix / len(p))
        out.append((w / (smooth * w).sum(), smooth))
    return np.stack([w for w, _ in out]), np.stack([s for _, s in out])


def _hand_histogram():
    counts = np.zeros((2, NUM_BINS), np.int64)
    counts[0, 128] = 900  # a* = 0: frequent (grey, black, white)
    counts[0, 150] = 100  # a* = 22: rare
    counts[0, 3] = 50  # near the lower edge: the reflection keeps its mass
    counts[1] = 1  # b*: uniform
    return counts


def test_rarity_weights_match_the_hand_computation():
    counts = _hand_histogram()
    w = rebalancing_weights(counts)
    want, smooth = _hand_rarity(counts)
    assert w.shape == (2, NUM_BINS) and w.dtype == np.float32
    np.testing.assert_allclose(w, want, rtol=1e-5)
    np.testing.assert_allclose((smooth * w).sum(axis=1), 1.0, rtol=1e-5)  # E_p̃[w] = 1
    a = w[0]
    assert a[150] > a[128]  # the rare colour weighs more than the frequent one
    assert a.argmin() == 128 and a.max() == a[255]  # the frequent bin least, an empty far bin most
    assert np.all(a > 0)
    np.testing.assert_allclose(w[1], 1.0, rtol=1e-5)  # a uniform histogram weighs every colour 1
    assert a.max() <= NUM_BINS / 0.5 * (1 - 0.5 + 0.5 / NUM_BINS)  # the documented bound

    # Other mixes and no smoothing; mix = 1 is the uniform weight.
    np.testing.assert_allclose(rebalancing_weights(counts, mix=0.2, sigma=2.0), _hand_rarity(counts, 0.2, 2.0)[0], rtol=1e-5)
    p = counts / counts.sum(axis=1, keepdims=True)
    w0 = 1 / (0.5 * p + 0.5 / NUM_BINS)
    np.testing.assert_allclose(rebalancing_weights(counts, sigma=0.0), w0 / (p * w0).sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(rebalancing_weights(counts, mix=1.0), 1.0, rtol=1e-6)


def test_literal_form_is_the_relative_frequency():
    counts = _hand_histogram()
    w = rebalancing_weights(counts, form="literal")
    np.testing.assert_allclose(w, counts / counts.sum(axis=1, keepdims=True), rtol=1e-6)
    assert w[0, 128] > w[0, 150]  # Eq. 3 as written weighs the FREQUENT colour more
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    small = rebalancing_weights(np.array([[1.0, 3.0], [2.0, 2.0]]), form="literal")  # any (C, Q)
    np.testing.assert_allclose(small, [[0.25, 0.75], [0.5, 0.5]])


def test_histograms_of_known_colours_match_skimage():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (400, 3), dtype=np.uint8)
    lab = skimage_color.rgb2lab(colours[None] / 255.0)[0]
    frac = np.abs(lab[:, 1:] - np.floor(lab[:, 1:]) - 0.5)
    colours = colours[np.all(frac > 0.05, axis=1)]  # away from the rounding boundaries
    greys = np.array([[0, 0, 0], [128, 128, 128], [255, 255, 255], [37, 37, 37]], np.uint8)
    pixels = np.concatenate([greys, colours])
    frames = pixels[: len(pixels) // 20 * 20].reshape(-1, 4, 5, 3)  # whole 4×5 frames
    ref = skimage_color.rgb2lab(frames / 255.0)[..., 1:]
    want = np.stack([np.bincount(np.rint(ref[..., c]).astype(int).ravel() + 128, minlength=256) for c in range(2)])
    counts = ab_histograms(frames)
    assert counts.dtype == np.int64 and counts.shape == (2, NUM_BINS)
    np.testing.assert_array_equal(counts, want)

    grey = np.full((1, 3, 2, 3), 128, np.uint8)  # pure grey: a* = b* = 0
    np.testing.assert_array_equal(ab_histograms(grey)[:, 128], [6, 6])
    assert ab_histograms(grey).sum() == 12
    red = np.zeros((2, 2, 3), np.uint8)  # one (H, W, 3) frame; red (53.24, 80.09, 67.20)
    red[..., 0] = 255
    assert ab_histograms(red)[0, 80 + 128] == 4 and ab_histograms(red)[1, 67 + 128] == 4

    # A mask counts only its pixels; streaming batches add up to the whole.
    valid = np.zeros(frames.shape[:-1], bool)
    valid[:, 1:3] = True
    masked = ab_histograms(frames, valid)
    assert masked.sum(axis=1).tolist() == [valid.sum()] * 2
    want_masked = np.stack([np.bincount(np.rint(ref[..., c][valid]).astype(int) + 128, minlength=256) for c in range(2)])
    np.testing.assert_array_equal(masked, want_masked)
    running = None
    for i in range(0, len(frames), 3):
        running = accumulate_ab_histograms(running, frames[i : i + 3])
    np.testing.assert_array_equal(running, counts)


def test_weight_map_looks_up_each_pixels_true_colour():
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.1, 3.0, (2, NUM_BINS)).astype(np.float32)
    ab = np.array([[0.0, 0.0], [2.4, -2.6], [-127.6, 127.4], [200.0, -300.0], [80.09, 67.2], [0.5, 1.5]], np.float32)
    ab = np.broadcast_to(ab.reshape(1, 2, 3, 2), (2, 2, 3, 2))
    bins = np.array([[128, 128], [130, 125], [0, 255], [255, 0], [208, 195], [128, 130]])  # rint: half to even
    want = np.stack([weights[0][bins[:, 0]], weights[1][bins[:, 1]]], axis=-1).reshape(1, 2, 3, 2)
    got = np.asarray(weight_map(ab, weights))
    assert got.shape == (2, 2, 3, 2) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape))


def test_errors():
    counts = _hand_histogram()
    empty_b = counts.copy()
    empty_b[1] = 0
    with pytest.raises(ValueError, match="channel 'b' is empty"):
        rebalancing_weights(empty_b)
    with pytest.raises(ValueError, match="channel 'a' is empty"):
        rebalancing_weights(np.zeros((2, NUM_BINS)), form="literal")
    with pytest.raises(ValueError, match="form"):
        rebalancing_weights(counts, form="inverse")
    with pytest.raises(ValueError, match="mix"):
        rebalancing_weights(counts, mix=0.0)
    with pytest.raises(ValueError, match="sigma"):
        rebalancing_weights(counts, sigma=-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        rebalancing_weights(-counts)
    with pytest.raises(ValueError, match="histogram"):
        rebalancing_weights(counts[0])
    frames = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ab_histograms(frames.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ab_histograms(frames[..., :2])
    with pytest.raises(ValueError, match="valid"):
        ab_histograms(frames, np.ones((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="valid"):
        ab_histograms(frames, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="counts"):
        accumulate_ab_histograms(np.zeros((2, 10)), frames)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        weight_map(np.zeros((1, 2, 2, 3)), np.ones((2, NUM_BINS)))
    with pytest.raises(ValueError, match="weights"):
        weight_map(np.zeros((1, 2, 2, 2)), np.ones((2, 100)))
