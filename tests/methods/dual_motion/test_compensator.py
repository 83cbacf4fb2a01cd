"""Intermediate-flow algebra (Dual MF Eq. 4), the warp cycle (Eq. 5) and the cycle loss (Eq. 6)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.methods.dual_motion.compensator import cycle_loss, cycle_warps, intermediate_flows
from jaxsurg.ops.warp import backward_warp, forward_warp


def _const_flow(b, h, w, v):
    """(B, H, W, 2) flow, constant per example: v is (B, 2)."""
    v = np.asarray(v, np.float32).reshape(b, 1, 1, 2)
    return np.broadcast_to(v, (b, h, w, 2)).copy()


def _translate(img, dx, dy):
    """NumPy integer translation of (H, W, C): out[y, x] = img[y - dy, x - dx], 0 outside."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    ys = slice(max(dy, 0), h + min(dy, 0))
    xs = slice(max(dx, 0), w + min(dx, 0))
    ys_src = slice(max(-dy, 0), h + min(-dy, 0))
    xs_src = slice(max(-dx, 0), w + min(-dx, 0))
    out[ys, xs] = img[ys_src, xs_src]
    return out


# ------------------------------------------------------------------ Eq. 4


def test_intermediate_flows_match_numpy_formulas():
    rng = np.random.default_rng(0)
    f01 = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    f10 = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    t = np.array([0.2, 0.5, 0.9], np.float32)
    out = intermediate_flows(jnp.asarray(f01), jnp.asarray(f10), jnp.asarray(t))
    tt = t[:, None, None, None]
    f_t0 = -(1 - tt) * tt * f01 + tt**2 * f10
    f_t1 = (1 - tt) ** 2 * f01 - tt * (1 - tt) * f10
    np.testing.assert_allclose(np.asarray(out["F_t0"]), f_t0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["F_t1"]), f_t1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["F_1t"]), f10 - f_t0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["F_0t"]), f01 - f_t1, rtol=1e-5, atol=1e-6)
    # A scalar t equals the same t per example.
    s = intermediate_flows(jnp.asarray(f01), jnp.asarray(f10), 0.5)
    np.testing.assert_allclose(np.asarray(s["F_t0"])[1], np.asarray(out["F_t0"])[1], rtol=1e-6)


def test_intermediate_flows_linear_motion():
    v = np.array([[2.0, -1.0], [0.5, 3.0]], np.float32)
    f01 = _const_flow(2, 3, 4, v)
    t = np.array([0.25, 0.6], np.float32)
    out = jax.jit(intermediate_flows)(jnp.asarray(f01), jnp.asarray(-f01), jnp.asarray(t))
    tt = t[:, None, None, None]
    np.testing.assert_allclose(np.asarray(out["F_t0"]), -tt * f01, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["F_t1"]), (1 - tt) * f01, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["F_0t"]), tt * f01, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["F_1t"]), -(1 - tt) * f01, rtol=1e-6, atol=1e-6)


def test_intermediate_flows_limits():
    rng = np.random.default_rng(1)
    f01 = jnp.asarray(rng.normal(size=(1, 3, 3, 2)), jnp.float32)
    f10 = jnp.asarray(rng.normal(size=(1, 3, 3, 2)), jnp.float32)
    z = np.zeros((1, 3, 3, 2))
    o0 = intermediate_flows(f01, f10, 0.0)
    np.testing.assert_array_equal(np.asarray(o0["F_t0"]), z)
    np.testing.assert_array_equal(np.asarray(o0["F_0t"]), z)
    np.testing.assert_array_equal(np.asarray(o0["F_t1"]), np.asarray(f01))
    np.testing.assert_array_equal(np.asarray(o0["F_1t"]), np.asarray(f10))
    o1 = intermediate_flows(f01, f10, 1.0)
    np.testing.assert_array_equal(np.asarray(o1["F_t1"]), z)
    np.testing.assert_array_equal(np.asarray(o1["F_1t"]), z)
    np.testing.assert_array_equal(np.asarray(o1["F_t0"]), np.asarray(f10))
    np.testing.assert_array_equal(np.asarray(o1["F_0t"]), np.asarray(f01))


def test_intermediate_flows_bad_arguments():
    f = jnp.zeros((2, 3, 3, 2))
    with pytest.raises(ValueError, match="flow10"):
        intermediate_flows(f, jnp.zeros((2, 3, 3, 3)), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        intermediate_flows(f, jnp.zeros((2, 3, 4, 2)), 0.5)
    with pytest.raises(ValueError, match="t must be"):
        intermediate_flows(f, f, jnp.zeros((3,)))


# ------------------------------------------------------------------ Eq. 5


@pytest.mark.parametrize(
    "warp",
    [forward_warp, backward_warp, functools.partial(backward_warp, border="zeros")],
    ids=["fwd", "bwd", "bwd0"],
)
def test_cycle_of_translating_image_returns_it(warp):
    rng = np.random.default_rng(2)
    h, w, m = 10, 11, 4  # m: margin that every translation of the cycle stays within
    # Example 0: v = (2, -2), t = 0.5; example 1: v = (4, 0), t = 0.25 (t·v integer).
    vs = [(2, -2), (4, 0)]
    ts = np.array([0.5, 0.25], np.float32)
    i0 = rng.random((2, h, w, 3)).astype(np.float32)
    i1 = np.stack([_translate(i0[n], *vs[n]) for n in range(2)])
    f01 = _const_flow(2, h, w, vs)
    flows = intermediate_flows(jnp.asarray(f01), jnp.asarray(-f01), jnp.asarray(ts))
    out = cycle_warps(jnp.asarray(i0), jnp.asarray(i1), flows, warp)
    inner = (slice(None), slice(m, -m), slice(m, -m))
    it = np.stack(
        [_translate(i0[n], int(ts[n] * vs[n][0]), int(ts[n] * vs[n][1])) for n in range(2)]
    )
    np.testing.assert_allclose(np.asarray(out["I_t0"])[inner], it[inner], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["I_1"])[inner], i1[inner], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["I_t1"])[inner], it[inner], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["I_0"])[inner], i0[inner], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["M_0"])[inner], 1.0)
    # The cycle is not the identity everywhere: content crossing the border is lost.
    assert np.abs(np.asarray(out["I_0"]) - i0).max() > 0.1
    if warp is forward_warp:  # forward holes: coverage 0 and value 0 there
        m0, i0_hat = np.asarray(out["M_0"])[..., 0], np.asarray(out["I_0"])
        assert (m0 == 0).any()
        np.testing.assert_array_equal(i0_hat[m0 == 0], 0.0)
        loss, _ = cycle_loss(jnp.asarray(i0), jnp.asarray(i1), out, use_coverage=True)
        assert float(loss) < 1e-6


def test_cycle_warps_direction():
    i0 = jnp.zeros((1, 4, 4, 1))
    flows = intermediate_flows(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2)), 0.5)
    with pytest.raises(ValueError, match="direction"):
        cycle_warps(i0, i0, flows, lambda s, f: s)
    out = cycle_warps(i0 + 1.0, i0, flows, lambda s, f: s, direction="backward")
    np.testing.assert_array_equal(np.asarray(out["I_0"]), 1.0)
    with pytest.raises(ValueError, match="missing"):
        cycle_warps(i0, i0, {"F_t0": flows["F_t0"]})
    with pytest.raises(ValueError, match="I1"):
        cycle_warps(i0, jnp.zeros((1, 4, 5, 1)), flows)


# ------------------------------------------------------------------ Eq. 6


def test_cycle_loss_zero_for_exact_cycle():
    rng = np.random.default_rng(3)
    i0 = jnp.asarray(rng.random((2, 5, 6, 3)), jnp.float32)
    i1 = jnp.asarray(rng.random((2, 5, 6, 3)), jnp.float32)
    it = jnp.asarray(rng.random((2, 5, 6, 3)), jnp.float32)
    warps = {"I_0": i0, "I_1": i1, "I_t0": it, "I_t1": it}
    loss, terms = cycle_loss(i0, i1, warps, perceptual=lambda a, b: jnp.mean((a - b) ** 2))
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in terms.values())


def test_cycle_loss_hand_computed():
    a = lambda *v: jnp.asarray(np.array(v, np.float32).reshape(1, 1, len(v), 1))
    i0, i1 = a(0.0, 1.0), a(1.0, 1.0)
    warps = {"I_0": a(0.5, 1.0), "I_t0": a(0.0, 0.0), "I_t1": a(1.0, 0.0), "I_1": a(1.0, 0.0)}
    sq = lambda x, y: jnp.sum((x - y) ** 2)
    loss, terms = cycle_loss(i0, i1, warps, perceptual=sq)
    # l1_0 = (0.5 + 0)/2, l1_t = (1 + 0)/2, l1_1 = (0 + 1)/2; L_c1 = 0.25 + 0.8·0.5 + 2·0.5.
    np.testing.assert_allclose(float(terms["l1_0"]), 0.25)
    np.testing.assert_allclose(float(terms["l1_t"]), 0.5)
    np.testing.assert_allclose(float(terms["l1_1"]), 0.5)
    np.testing.assert_allclose(float(terms["l_c1"]), 1.65, rtol=1e-6)
    # Perceptual over the three pairs: 0.25 + 1 + 1 = 2.25; λp = 0.01.
    np.testing.assert_allclose(float(terms["perceptual"]), 2.25, rtol=1e-6)
    np.testing.assert_allclose(float(loss), 1.65 + 0.0225, rtol=1e-6)
    # Valid mask keeps pixel 0 only: l1_0 = 0.5, l1_t = 1, l1_1 = 0.
    loss_m, _ = cycle_loss(i0, i1, warps, valid=jnp.asarray([[[1.0, 0.0]]]), lambda_p=0.0)
    np.testing.assert_allclose(float(loss_m), 0.5 + 0.8, rtol=1e-6)
    # Custom weights.
    loss_w, _ = cycle_loss(i0, i1, warps, lambda0=2.0, lambda_i=0.0, lambda1=1.0)
    np.testing.assert_allclose(float(loss_w), 2 * 0.25 + 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="valid"):
        cycle_loss(i0, i1, warps, valid=jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="missing"):
        cycle_loss(i0, i1, warps, use_coverage=True)


@pytest.mark.parametrize("warp", [forward_warp, backward_warp], ids=["fwd", "bwd"])
def test_cycle_loss_gradient_through_flows_is_finite(warp):
    rng = np.random.default_rng(4)
    i0 = jnp.asarray(rng.random((1, 8, 8, 3)), jnp.float32)
    i1 = jnp.asarray(rng.random((1, 8, 8, 3)), jnp.float32)
    f01 = jnp.asarray(rng.normal(0, 1.5, (1, 8, 8, 2)), jnp.float32)
    f10 = jnp.asarray(rng.normal(0, 1.5, (1, 8, 8, 2)), jnp.float32)

    @jax.jit
    def loss_fn(f01, f10):
        warps = cycle_warps(i0, i1, intermediate_flows(f01, f10, 0.5), warp)
        return cycle_loss(
            i0, i1, warps, perceptual=lambda a, b: jnp.mean((a - b) ** 2), use_coverage=True
        )[0]

    loss, (g01, g10) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(f01, f10)
    assert np.isfinite(float(loss)) and float(loss) > 0
    for g in (g01, g10):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    # Directional derivative agrees with a central difference (float32, loose).
    d = jnp.asarray(rng.normal(size=f01.shape), jnp.float32)
    h = 1e-3
    fd = (float(loss_fn(f01 + h * d, f10)) - float(loss_fn(f01 - h * d, f10))) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g01 * d)), fd, rtol=0.05, atol=1e-3)
