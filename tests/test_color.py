"""RGB↔HSV and sRGB↔Lab: references (colorsys, OpenCV, a float64 NumPy CIE implementation),
known colours, round trips, jit/vmap and gradients."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxsurg.ops import color


def _random_rgb(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3)).astype(np.float32)
    # Add the awkward cases: greys, black, white, ties between channels, pure primaries.
    special = np.array(
        [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1],
         [1, 0, 1], [0.3, 0.3, 0.1], [0.1, 0.3, 0.3], [0.3, 0.1, 0.3], [1e-4, 0, 0], [0.02, 0.03, 0.01]],
        np.float32,
    )
    return np.concatenate([special, x])


def _hue_distance(a, b):
    d = np.abs(a - b) % 1.0
    return np.minimum(d, 1.0 - d)


# ---------------------------------------------------------------- NumPy CIE reference (float64)
def _np_srgb_to_linear(c):
    c = np.asarray(c, np.float64)
    out = np.empty_like(c)
    lo = c <= 0.04045
    out[lo] = c[lo] / 12.92
    out[~lo] = ((c[~lo] + 0.055) / 1.055) ** 2.4
    return out


def _np_rgb_to_lab(rgb):
    m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    white = m @ np.ones(3)
    xyz = _np_srgb_to_linear(rgb) @ m.T / white
    eps = (6 / 29) ** 3
    kappa = (29 / 3) ** 3  # CIE: L = kappa·Y below eps, the same curve as f's linear part
    f = np.where(xyz > eps, np.cbrt(np.maximum(xyz, eps)), (kappa * xyz + 16) / 116)
    lum = 116 * f[:, 1] - 16
    return np.stack([lum, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], -1)


# ---------------------------------------------------------------- HSV
def test_rgb_to_hsv_matches_colorsys():
    x = _random_rgb()
    got = np.asarray(color.rgb_to_hsv(x))
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in x.astype(np.float64)])
    assert np.all((got[:, 0] >= 0) & (got[:, 0] < 1))
    np.testing.assert_array_less(_hue_distance(got[:, 0], ref[:, 0]), 1e-5)
    np.testing.assert_allclose(got[:, 1:], ref[:, 1:], atol=1e-6)


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(1)
    hsv = rng.random((2000, 3)).astype(np.float32)
    got = np.asarray(color.hsv_to_rgb(hsv))
    ref = np.array([colorsys.hsv_to_rgb(*p) for p in hsv.astype(np.float64)])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # Hue is periodic: H and H ± 1, H + 3 give the same colour.
    np.testing.assert_allclose(color.hsv_to_rgb(hsv + np.array([1.0, 0, 0], np.float32)), got, atol=1e-5)
    np.testing.assert_allclose(color.hsv_to_rgb(hsv - np.array([3.0, 0, 0], np.float32)), got, atol=1e-5)


def test_rgb_to_hsv_matches_opencv_float():
    cv2 = pytest.importorskip("cv2")
    x = _random_rgb(seed=2)
    x = x[x.max(-1) > 1e-2]  # OpenCV divides by V + FLT_EPSILON: S differs for near-black pixels
    got = np.asarray(color.rgb_to_hsv(x))
    ref = cv2.cvtColor(x[None], cv2.COLOR_RGB2HSV)[0]  # float: H in degrees
    np.testing.assert_array_less(_hue_distance(got[:, 0], ref[:, 0] / 360.0), 1e-5)
    np.testing.assert_allclose(got[:, 1:], ref[:, 1:], atol=1e-5)


def test_hsv_known_colours():
    rgb = jnp.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1],
                     [0.5, 0.5, 0.5], [0, 0, 0], [1, 0.5, 0]], jnp.float32)
    want = np.array([[0, 1, 1], [1 / 6, 1, 1], [1 / 3, 1, 1], [1 / 2, 1, 1], [2 / 3, 1, 1], [5 / 6, 1, 1],
                     [0, 0, 0.5], [0, 0, 0], [1 / 12, 1, 1]])
    np.testing.assert_allclose(color.rgb_to_hsv(rgb), want, atol=1e-6)
    np.testing.assert_allclose(color.hsv_to_rgb(want.astype(np.float32)), rgb, atol=1e-6)


def test_hsv_round_trips():
    x = _random_rgb(seed=3)
    np.testing.assert_allclose(color.hsv_to_rgb(color.rgb_to_hsv(x)), x, atol=1e-5)
    rng = np.random.default_rng(4)
    hsv = rng.random((1000, 3)).astype(np.float32)
    hsv[:, 1:] = 0.05 + 0.95 * hsv[:, 1:]  # hue is only recoverable for S, V > 0
    back = np.asarray(color.rgb_to_hsv(color.hsv_to_rgb(hsv)))
    np.testing.assert_array_less(_hue_distance(back[:, 0], hsv[:, 0]), 1e-5)
    np.testing.assert_allclose(back[:, 1:], hsv[:, 1:], atol=1e-5)


# ---------------------------------------------------------------- Lab
def test_rgb_to_lab_matches_cie_numpy_reference():
    x = _random_rgb(seed=5)
    np.testing.assert_allclose(color.rgb_to_lab(x), _np_rgb_to_lab(x), atol=2e-3)


def test_rgb_to_lab_matches_opencv_float():
    cv2 = pytest.importorskip("cv2")
    x = _random_rgb(seed=6)
    ref = cv2.cvtColor(x[None], cv2.COLOR_RGB2Lab)[0]
    # OpenCV's float path interpolates a lookup table: it is only ~0.3 accurate in a*, b*.
    np.testing.assert_allclose(color.rgb_to_lab(x), ref, atol=0.5)
    np.testing.assert_allclose(np.asarray(color.rgb_to_lab(x))[:, 0], ref[:, 0], atol=0.2)


def test_lab_known_colours():
    lab = np.asarray(color.rgb_to_lab(jnp.array([[1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5], [1, 0, 0]], jnp.float32)))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=1e-4)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(lab[2, 1:], [0, 0], atol=1e-4)  # greys are achromatic
    np.testing.assert_allclose(lab[2, 0], 53.389, atol=0.01)  # sRGB 0.5 grey: Y = 0.21404
    np.testing.assert_allclose(lab[3], [53.24, 80.09, 67.20], atol=0.02)  # sRGB red (well-known value)


def test_lab_round_trip_and_clip():
    x = _random_rgb(seed=7)
    np.testing.assert_allclose(color.lab_to_rgb(color.rgb_to_lab(x)), x, atol=2e-5)
    out_of_gamut = jnp.array([[50.0, 120.0, -120.0], [100.0, -90.0, 90.0]])
    raw = np.asarray(color.lab_to_rgb(out_of_gamut))
    assert np.all(np.isfinite(raw)) and (raw.min() < 0 or raw.max() > 1)
    clipped = np.asarray(color.lab_to_rgb(out_of_gamut, clip=True))
    np.testing.assert_allclose(clipped, np.clip(raw, 0, 1))


# ---------------------------------------------------------------- jax behaviour
def test_leading_shapes_jit_vmap():
    x = jnp.asarray(_random_rgb(n=2 * 5 * 7 - 14, seed=8)).reshape(2, 5, 7, 3)
    for fwd, inv in [(color.rgb_to_hsv, color.hsv_to_rgb), (color.rgb_to_lab, color.lab_to_rgb)]:
        y = jax.jit(fwd)(x)
        assert y.shape == x.shape and y.dtype == jnp.float32
        np.testing.assert_allclose(jax.vmap(fwd)(x), y, atol=1e-5)
        np.testing.assert_allclose(fwd(x.reshape(-1, 3)).reshape(x.shape), y, atol=1e-5)
        np.testing.assert_allclose(jax.jit(inv)(y), x, atol=3e-5)
    assert color.rgb_to_hsv(jnp.array([0.2, 0.4, 0.6])).shape == (3,)


def test_bad_shape_raises():
    for fn in (color.rgb_to_hsv, color.hsv_to_rgb, color.rgb_to_lab, color.lab_to_rgb):
        with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
            fn(jnp.zeros((4, 4)))


def test_gradients_finite_everywhere_and_match_finite_differences():
    special = jnp.array([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0.3, 0.3, 0.1], [0.001, 0.002, 0.0]])
    for fn in (color.rgb_to_hsv, color.rgb_to_lab):
        g = jax.grad(lambda x, fn=fn: jnp.sum(fn(x) * jnp.array([1.0, 2.0, 3.0])))(special)
        assert np.all(np.isfinite(g)), fn.__name__
    g = jax.grad(lambda x: jnp.sum(color.hsv_to_rgb(x)))(jnp.array([[0.0, 0.0, 0.0], [0.5, 1.0, 1.0]]))
    assert np.all(np.isfinite(g))
    # Finite differences in float64 at generic interior points (away from the kinks).
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(9).uniform(0.1, 0.9, (6, 3)), jnp.float64)
        check_grads(jax.jit(color.rgb_to_lab), (x,), order=1, modes=("rev",), eps=1e-6, atol=1e-4, rtol=1e-4)
        check_grads(jax.jit(color.rgb_to_hsv), (x,), order=1, modes=("rev",), eps=1e-6, atol=1e-4, rtol=1e-4)
        lab = color.rgb_to_lab(x)
        check_grads(jax.jit(color.lab_to_rgb), (lab,), order=1, modes=("rev",), eps=1e-6, atol=1e-4, rtol=1e-4)
        hsv = jnp.asarray(np.random.default_rng(10).uniform(0.1, 0.9, (6, 3)), jnp.float64)
        check_grads(jax.jit(color.hsv_to_rgb), (hsv,), order=1, modes=("rev",), eps=1e-6, atol=1e-4, rtol=1e-4)
