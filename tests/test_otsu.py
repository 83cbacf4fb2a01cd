"""Otsu's threshold (jaxsurg.ops.otsu) against skimage.filters.threshold_otsu: random bimodal
images, a real photograph, batches, valid masks, constant images and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.ops.otsu import otsu_threshold

skimage_filters = pytest.importorskip("skimage.filters", reason="the reference is skimage.filters.threshold_otsu")
skimage_data = pytest.importorskip("skimage.data")


def _bimodal(rng, h, w):
    fg = rng.random((h, w)) < rng.uniform(0.05, 0.6)
    lo, hi = rng.uniform(0.0, 0.4), rng.uniform(0.6, 1.0)
    x = np.where(fg, rng.normal(hi, 0.08, (h, w)), rng.normal(lo, 0.12, (h, w)))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _close(got, want, x):
    """Equal up to float rounding of the bin centres (far below one bin width)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, abs(float(want))))
    assert abs(got - want) < (x.max() - x.min()) / 256 / 100


@pytest.mark.parametrize("seed", range(6))
def test_matches_skimage_on_random_bimodal_images(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(7, 90, size=2)
    x = _bimodal(rng, h, w)
    got = otsu_threshold(jnp.asarray(x))
    assert got.shape == () and got.dtype == jnp.float32
    _close(float(got), float(skimage_filters.threshold_otsu(x)), x)


@pytest.mark.parametrize("bins", [2, 16, 256, 1000])
def test_matches_skimage_on_a_real_photograph_for_several_bin_counts(bins):
    x = skimage_data.camera().astype(np.float32) / 255.0  # float: skimage bins it, not per integer
    got = float(otsu_threshold(x, bins=bins))
    _close(got, float(skimage_filters.threshold_otsu(x, nbins=bins)), x)


def test_batched_call_equals_per_image_calls_and_jits():
    rng = np.random.default_rng(7)
    x = np.stack([_bimodal(rng, 24, 31) for _ in range(6)]).reshape(2, 3, 24, 31)
    batched = jax.jit(otsu_threshold)(jnp.asarray(x))
    assert batched.shape == (2, 3) and batched.dtype == jnp.float32
    for i in range(2):
        for j in range(3):
            assert float(batched[i, j]) == float(otsu_threshold(x[i, j]))
            _close(float(batched[i, j]), float(skimage_filters.threshold_otsu(x[i, j])), x[i, j])


def test_valid_mask_ignores_the_pixels_outside():
    rng = np.random.default_rng(3)
    x = _bimodal(rng, 40, 50)
    valid = rng.random(x.shape) < 0.6
    x_out = np.where(valid, x, 5.0).astype(np.float32)  # would widen the range if counted
    got = float(otsu_threshold(x_out, valid))
    _close(got, float(skimage_filters.threshold_otsu(x[valid])), x[valid])
    # Batched with different masks per image.
    xs = np.stack([x_out, x_out[::-1]])
    vs = np.stack([valid, valid[::-1]])
    both = otsu_threshold(xs, vs)
    assert float(both[0]) == got and float(both[1]) == got


def test_constant_image_returns_its_value_and_no_valid_pixel_gives_nan():
    x = np.full((2, 5, 6), 0.25, np.float32)
    x[1] = 0.75
    np.testing.assert_array_equal(np.asarray(otsu_threshold(x)), [0.25, 0.75])
    assert float(skimage_filters.threshold_otsu(x[0])) == 0.25
    # Constant over the valid pixels only.
    y = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    valid = np.zeros((5, 6), bool)
    valid[1:3, 2:4] = True
    y[valid] = 0.5
    assert float(otsu_threshold(y, valid)) == 0.5
    assert np.isnan(float(otsu_threshold(y, np.zeros_like(valid))))


def test_two_value_image_splits_between_them():
    x = np.zeros((8, 8), np.float32)
    x[:, :3] = 1.0
    t = float(otsu_threshold(x))
    assert 0.0 <= t < 1.0 and t == float(skimage_filters.threshold_otsu(x))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="H, W"):
        otsu_threshold(jnp.zeros((5,)))
    with pytest.raises(ValueError, match="shape"):
        otsu_threshold(jnp.zeros((4, 5)), jnp.ones((5, 4), bool))
    with pytest.raises(ValueError, match="bins"):
        otsu_threshold(jnp.zeros((4, 5)), bins=1)
