"""Forward (splatting) and backward (sampling) warps, label warping.

References are written here: NumPy loops for the splat and the nearest sampler, cv2.remap
for bilinear sampling with a replicated border, central finite differences for gradients.
"""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.ops.warp import (
    backward_warp,
    backward_warp_labels,
    forward_warp,
    forward_warp_labels,
    sample_bilinear,
    sample_nearest,
)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _const_flow(b, h, w, dx, dy, dtype=np.float32):
    f = np.zeros((b, h, w, 2), dtype)
    f[..., 0] = dx
    f[..., 1] = dy
    return f


def _smooth_flow(h, w, amp, phase=0.0):
    """An analytic smooth flow field (dx, dy)(x, y) of amplitude ``amp`` pixels."""

    def f(x, y):
        dx = amp * np.sin(2 * np.pi * (y / 11.0 + x / 17.0) + phase) + 0.3 * amp
        dy = amp * np.cos(2 * np.pi * (x / 13.0 - y / 19.0) + phase) - 0.2 * amp
        return dx, dy

    return f


def _grid(h, w):
    ys, xs = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    return xs, ys


def _np_splat(src, flow):
    """Loop reference of the normalised bilinear splat: (out, weights)."""
    b, h, w, c = src.shape
    acc = np.zeros((b, h, w, c))
    wsum = np.zeros((b, h, w))
    for n in range(b):
        for y in range(h):
            for x in range(w):
                tx, ty = x + flow[n, y, x, 0], y + flow[n, y, x, 1]
                x0, y0 = int(np.floor(tx)), int(np.floor(ty))
                for cx in (x0, x0 + 1):
                    for cy in (y0, y0 + 1):
                        if 0 <= cx < w and 0 <= cy < h:
                            wt = (1 - abs(tx - cx)) * (1 - abs(ty - cy))
                            acc[n, cy, cx] += wt * src[n, y, x]
                            wsum[n, cy, cx] += wt
    out = np.where(wsum[..., None] > 1e-3, acc / np.maximum(wsum, 1e-300)[..., None], 0.0)
    return out, wsum


# ------------------------------------------------------------------ forward warp


def test_forward_warp_matches_loop_reference():
    rng = np.random.default_rng(0)
    src = rng.random((2, 6, 7, 3)).astype(np.float32)
    flow = rng.uniform(-2.5, 2.5, (2, 6, 7, 2)).astype(np.float32)
    out, wts = forward_warp(jnp.asarray(src), jnp.asarray(flow), return_weights=True)
    ref, ref_w = _np_splat(src.astype(np.float64), flow.astype(np.float64))
    np.testing.assert_allclose(np.asarray(wts), ref_w, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4)


def test_forward_warp_integer_translation_exact_with_holes():
    rng = np.random.default_rng(1)
    src = rng.random((2, 5, 6, 3)).astype(np.float32)
    out, wts = forward_warp(
        jnp.asarray(src), jnp.asarray(_const_flow(2, 5, 6, 2, -1)), return_weights=True
    )
    out, wts = np.asarray(out), np.asarray(wts)
    # Content moves right by 2, up by 1: out[y, x] = src[y + 1, x - 2].
    np.testing.assert_array_equal(out[:, :4, 2:], src[:, 1:, :4])
    np.testing.assert_array_equal(wts[:, :4, 2:], 1.0)
    # Uncovered: the two left columns and the bottom row are holes, exactly 0.
    np.testing.assert_array_equal(out[:, :, :2], 0.0)
    np.testing.assert_array_equal(out[:, 4:], 0.0)
    np.testing.assert_array_equal(wts[:, :, :2], 0.0)
    np.testing.assert_array_equal(wts[:, 4:], 0.0)


def test_forward_warp_constant_image_stays_constant_where_covered():
    h, w = 12, 14
    xs, ys = _grid(h, w)
    dx, dy = _smooth_flow(h, w, amp=1.3)(xs, ys)
    flow = np.stack([dx, dy], -1)[None].astype(np.float32)
    src = np.full((1, h, w, 2), 0.37, np.float32)
    out, wts = forward_warp(jnp.asarray(src), jnp.asarray(flow), return_weights=True)
    out, wts = np.asarray(out), np.asarray(wts)
    covered = wts > 1e-3
    assert covered.mean() > 0.7 and (~covered).any()  # holes at the borders
    np.testing.assert_allclose(out[covered], 0.37, rtol=1e-5)
    np.testing.assert_array_equal(out[~covered], 0.0)


def test_forward_warp_subpixel_translation_is_bilinear_sampling():
    # Constant translation v: the covered interior equals bilinear sampling at q - v.
    rng = np.random.default_rng(2)
    src = rng.random((1, 8, 9, 2)).astype(np.float32)
    v = (0.3, -0.6)
    fwd = np.asarray(forward_warp(jnp.asarray(src), jnp.asarray(_const_flow(1, 8, 9, *v))))
    bwd = np.asarray(
        backward_warp(jnp.asarray(src), jnp.asarray(_const_flow(1, 8, 9, -v[0], -v[1])))
    )
    np.testing.assert_allclose(fwd[:, 1:-1, 1:-1], bwd[:, 1:-1, 1:-1], atol=1e-6)


def test_forward_warp_pileup_is_weighted_average():
    # Two sources land exactly on one target: plain average, weight 2, no z-buffer.
    src = np.zeros((1, 1, 4, 1), np.float32)
    src[0, 0, 0, 0], src[0, 0, 2, 0] = 1.0, 3.0
    flow = np.zeros((1, 1, 4, 2), np.float32)
    flow[0, 0, 0, 0] = 1.0  # x=0 -> 1
    flow[0, 0, 2, 0] = -1.0  # x=2 -> 1
    flow[0, 0, 1, 0] = 10.0  # x=1 leaves the image (dropped)
    out, wts = forward_warp(jnp.asarray(src), jnp.asarray(flow), return_weights=True)
    np.testing.assert_allclose(np.asarray(wts)[0, 0], [0.0, 2.0, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(out)[0, 0, :, 0], [0.0, 2.0, 0.0, 0.0])


def _fd_check(fun, args, argnum, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Full central-difference gradient of scalar ``fun`` w.r.t. ``args[argnum]`` (float64)."""
    grad = np.asarray(jax.grad(fun, argnums=argnum)(*args))
    f = jax.jit(fun)
    base = np.asarray(args[argnum])
    num = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[i] += eps
        minus[i] -= eps
        a_p = list(args)
        a_m = list(args)
        a_p[argnum], a_m[argnum] = jnp.asarray(plus), jnp.asarray(minus)
        num[i] = (float(f(*a_p)) - float(f(*a_m))) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=rtol, atol=atol)
    return grad


def _away_from_kinks(rng, shape, lo, hi):
    """Random flow whose sample/target coordinates stay >= 0.15 px from integers."""
    f = rng.integers(lo, hi, shape).astype(np.float64)
    return f + rng.uniform(0.15, 0.85, shape)


def test_forward_warp_gradients_match_finite_differences(x64):
    rng = np.random.default_rng(3)
    src = jnp.asarray(rng.random((1, 4, 5, 2)))
    flow = _away_from_kinks(rng, (1, 4, 5, 2), -2, 2)
    flow[..., 0] = _away_from_kinks(rng, (1, 4, 5), 1, 2)  # dx in (1, 2): column x = 0 is a hole
    flow = jnp.asarray(flow)
    r = jnp.asarray(rng.normal(size=(1, 4, 5, 2)))
    _, wts = forward_warp(src, flow, return_weights=True)
    # The output jumps at weight == eps: keep every weight clear of it (FD step is 1e-6).
    assert np.all(np.abs(np.asarray(wts) - 1e-3) > 1e-4)
    assert np.any(np.asarray(wts) == 0.0)  # holes present: their gradient must be 0, finite

    def loss(s, f):
        return jnp.sum(forward_warp(s, f) * r)

    g_src = _fd_check(loss, (src, flow), 0)
    g_flow = _fd_check(loss, (src, flow), 1, rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(g_src)) and np.abs(g_flow).max() > 1e-3


def test_forward_warp_gradient_finite_at_tiny_weights():
    # Targets with weight just above and far below eps: gradients stay finite.
    src = jnp.ones((1, 3, 3, 1)) * jnp.arange(9.0).reshape(1, 3, 3, 1)
    flow = jnp.full((1, 3, 3, 2), 0.9995)  # corner weights 2.5e-7 (holes) and 5e-4*0.9995
    g = jax.grad(lambda f: jnp.sum(forward_warp(src, f, eps=1e-4) ** 2))(flow)
    assert np.all(np.isfinite(np.asarray(g)))


# ------------------------------------------------------------------ backward warp


def test_backward_warp_integer_translation_exact():
    rng = np.random.default_rng(4)
    src = rng.random((2, 5, 6, 3)).astype(np.float32)
    flow = jnp.asarray(_const_flow(2, 5, 6, 2, -1))
    for mode in ("bilinear", "nearest"):
        out, inside = backward_warp(
            jnp.asarray(src), flow, mode=mode, border="zeros", return_inside=True
        )
        out, inside = np.asarray(out), np.asarray(inside)
        # out[y, x] = src[y - 1, x + 2]
        np.testing.assert_array_equal(out[:, 1:, :4], src[:, :4, 2:])
        np.testing.assert_array_equal(out[:, 0], 0.0)
        np.testing.assert_array_equal(out[:, :, 4:], 0.0)
        assert inside[:, 1:, :4].all() and not inside[:, 0].any() and not inside[:, :, 4:].any()
        clamp = np.asarray(backward_warp(jnp.asarray(src), flow, mode=mode, border="clamp"))
        np.testing.assert_array_equal(clamp[:, 1:, :4], src[:, :4, 2:])
        np.testing.assert_array_equal(clamp[:, 0, :4], src[:, 0, 2:])  # row clamped to 0
        np.testing.assert_array_equal(clamp[:, 1:, 4:], np.repeat(src[:, :4, 5:6], 2, axis=2))


def test_backward_warp_bilinear_matches_cv2_remap_replicate():
    rng = np.random.default_rng(5)
    h, w = 9, 11
    src = rng.random((h, w, 3)).astype(np.float32)
    # Multiples of 1/32 px: cv2.remap quantises sample positions to 1/32 (INTER_BITS = 5).
    flow = (rng.integers(-96, 96, (h, w, 2)) / 32.0).astype(np.float32)
    xs, ys = _grid(h, w)
    map_x = (xs + flow[..., 0]).astype(np.float32)
    map_y = (ys + flow[..., 1]).astype(np.float32)
    assert (map_x < 0).any() and (map_x > w - 1).any()  # borders exercised
    ref = cv2.remap(
        src, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    out = np.asarray(
        backward_warp(jnp.asarray(src[None]), jnp.asarray(flow[None]), border="clamp")
    )[0]
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_backward_warp_zeros_and_nearest_match_numpy_reference():
    rng = np.random.default_rng(6)
    b, h, w, c = 2, 5, 6, 2
    src = rng.random((b, h, w, c))
    flow = _away_from_kinks(rng, (b, h, w, 2), -3, 3)
    bil = np.zeros_like(src)
    near = np.zeros_like(src)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                sx, sy = x + flow[n, y, x, 0], y + flow[n, y, x, 1]
                x0, y0 = int(np.floor(sx)), int(np.floor(sy))
                for cx in (x0, x0 + 1):
                    for cy in (y0, y0 + 1):
                        if 0 <= cx < w and 0 <= cy < h:
                            bil[n, y, x] += (1 - abs(sx - cx)) * (1 - abs(sy - cy)) * src[n, cy, cx]
                nx, ny = int(np.floor(sx + 0.5)), int(np.floor(sy + 0.5))
                if 0 <= nx < w and 0 <= ny < h:
                    near[n, y, x] = src[n, ny, nx]
    s, f = jnp.asarray(src, jnp.float32), jnp.asarray(flow, jnp.float32)
    np.testing.assert_allclose(np.asarray(backward_warp(s, f, border="zeros")), bil, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(backward_warp(s, f, mode="nearest", border="zeros")), near, atol=1e-6
    )


def test_backward_warp_gradients_match_finite_differences(x64):
    rng = np.random.default_rng(7)
    src = jnp.asarray(rng.random((1, 4, 5, 2)))
    flow = jnp.asarray(_away_from_kinks(rng, (1, 4, 5, 2), -2, 2))
    r = jnp.asarray(rng.normal(size=(1, 4, 5, 2)))
    for border in ("clamp", "zeros"):

        def loss(s, f, border=border):
            return jnp.sum(backward_warp(s, f, border=border) * r)

        _fd_check(loss, (src, flow), 0)
        g_flow = _fd_check(loss, (src, flow), 1, rtol=1e-5, atol=1e-7)
        assert np.abs(g_flow).max() > 1e-2


def test_forward_and_backward_warps_agree_on_smooth_invertible_flow():
    h, w = 32, 32
    xs, ys = _grid(h, w)
    img = (
        0.5
        + 0.2 * np.sin(2 * np.pi * xs / 16.0) * np.cos(2 * np.pi * ys / 20.0)
        + 0.1 * np.sin(2 * np.pi * (xs + ys) / 24.0)
    )
    src = jnp.asarray(np.stack([img, 1.0 - img], -1)[None], jnp.float32)

    def f(x, y):  # smooth flow, up to ~1.9 px, gradient <= 0.3 (invertible, no folds)
        return 1.5 * np.sin(2 * np.pi * (y / 40 + x / 52)) + 0.4, 1.5 * np.cos(
            2 * np.pi * (x / 40 - y / 68)
        ) - 0.3

    fx, fy = f(xs, ys)
    # Inverse flow G(q) = -F(q + G(q)), by fixed-point iteration (F is a contraction here).
    gx, gy = -fx, -fy
    for _ in range(100):
        ax, ay = f(xs + gx, ys + gy)
        gx, gy = -ax, -ay
    fwd_flow = jnp.asarray(np.stack([fx, fy], -1)[None], jnp.float32)
    inv_flow = jnp.asarray(np.stack([gx, gy], -1)[None], jnp.float32)
    fwd = np.asarray(forward_warp(src, fwd_flow))
    bwd = np.asarray(backward_warp(src, inv_flow))
    inner = (slice(None), slice(4, -4), slice(4, -4))  # away from borders (holes, clamping)
    err = np.abs(fwd[inner] - bwd[inner])
    assert err.max() < 0.015 and err.mean() < 0.003, (err.max(), err.mean())
    # The test can fail: backward-warping with F itself (the wrong direction) is far off.
    wrong = np.asarray(backward_warp(src, fwd_flow))
    assert np.abs(fwd[inner] - wrong[inner]).max() > 0.15


def test_warps_jit():
    rng = np.random.default_rng(8)
    src = jnp.asarray(rng.random((2, 6, 7, 3)), jnp.float32)
    flow = jnp.asarray(rng.uniform(-2, 2, (2, 6, 7, 2)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, (2, 6, 7)), jnp.uint8)
    fw = jax.jit(functools.partial(forward_warp, return_weights=True))
    bw = jax.jit(backward_warp, static_argnames=("mode", "border", "return_inside"))
    for a, b in zip(fw(src, flow), forward_warp(src, flow, return_weights=True)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(bw(src, flow, border="zeros")),
        np.asarray(backward_warp(src, flow, border="zeros")),
        atol=1e-6,
    )
    fl = jax.jit(forward_warp_labels, static_argnames=("num_classes", "ignore_index", "eps"))
    bl = jax.jit(
        backward_warp_labels, static_argnames=("num_classes", "ignore_index", "mode", "border")
    )
    np.testing.assert_array_equal(
        np.asarray(fl(labels, flow, num_classes=3)),
        np.asarray(forward_warp_labels(labels, flow, 3)),
    )
    np.testing.assert_array_equal(
        np.asarray(bl(labels, flow, num_classes=3, mode="bilinear")),
        np.asarray(backward_warp_labels(labels, flow, 3, mode="bilinear")),
    )


def test_bad_arguments_raise():
    src = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="flow"):
        forward_warp(src, jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="flow"):
        backward_warp(src, jnp.zeros((1, 4, 5, 2)))
    with pytest.raises(ValueError, match="src"):
        forward_warp(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="mode"):
        backward_warp(src, jnp.zeros((1, 4, 4, 2)), mode="cubic")
    with pytest.raises(ValueError, match="border"):
        backward_warp(src, jnp.zeros((1, 4, 4, 2)), border="reflect")
    with pytest.raises(TypeError, match="labels"):
        forward_warp_labels(jnp.zeros((1, 4, 4)), jnp.zeros((1, 4, 4, 2)), 3)
    with pytest.raises(ValueError, match="ignore_index"):
        backward_warp_labels(
            jnp.zeros((1, 4, 4), jnp.int32), jnp.zeros((1, 4, 4, 2)), 3, ignore_index=2
        )


# ------------------------------------------------------------------ labels


def test_label_warps_integer_translation_and_ignore():
    labels = np.array(
        [
            [0, 1, 1, 2, 2],
            [0, 1, 255, 2, 2],
            [0, 0, 255, 1, 1],
            [2, 2, 0, 1, 1],
        ],
        np.uint8,
    )[None]
    flow = jnp.asarray(_const_flow(1, 4, 5, 1, 1))
    fwd = np.asarray(forward_warp_labels(jnp.asarray(labels), flow, 3))
    assert fwd.dtype == np.uint8
    expect = np.full_like(labels, 255)
    expect[:, 1:, 1:] = labels[:, :-1, :-1]  # moved by (1, 1); uncovered row/col -> ignore
    np.testing.assert_array_equal(fwd, expect)
    # Backward with the opposite flow reads the same pixels (nearest and bilinear).
    neg = jnp.asarray(_const_flow(1, 4, 5, -1, -1))
    for mode in ("nearest", "bilinear"):
        bwd = np.asarray(
            backward_warp_labels(jnp.asarray(labels), neg, 3, mode=mode, border="zeros")
        )
        np.testing.assert_array_equal(bwd, expect)
        clamp = np.asarray(
            backward_warp_labels(jnp.asarray(labels), neg, 3, mode=mode, border="clamp")
        )
        np.testing.assert_array_equal(clamp[:, 1:, 1:], labels[:, :-1, :-1])
        np.testing.assert_array_equal(clamp[:, 0, 1:], labels[:, 0, :-1])


def test_label_warps_subpixel_votes_hand_computed():
    # One row: classes 0 1 1 255 2 2 with ignore at x=3 (K = 3).
    labels = jnp.asarray(np.array([[[0, 1, 1, 255, 2, 2]]], np.int32))
    flow = jnp.asarray(_const_flow(1, 1, 6, 0.3, 0.0))
    # Forward, target q gets 0.7 from x=q and 0.3 from x=q-1.
    # q=0: 0 (0.7) -> 0;  q=1: 1 (.7) vs 0 (.3) -> 1;  q=3: ignore (.7) vs 1 (.3) -> 255;
    # q=4: 2 (.7) vs ignore (.3) -> 2;  q=5: 2.
    fwd = np.asarray(forward_warp_labels(labels, flow, 3))
    np.testing.assert_array_equal(fwd[0, 0], [0, 1, 1, 255, 2, 2])
    flow2 = jnp.asarray(_const_flow(1, 1, 6, 0.7, 0.0))  # now x=q-1 has weight 0.7
    fwd2 = np.asarray(forward_warp_labels(labels, flow2, 3))
    np.testing.assert_array_equal(fwd2[0, 0], [0, 0, 1, 1, 255, 2])
    # Backward bilinear at x + 0.7: nearer right neighbour wins; 'zeros' border: last pixel
    # reads 0.3 of label 2 and 0.7 outside -> ignore.
    bwd = np.asarray(backward_warp_labels(labels, flow2, 3, mode="bilinear", border="zeros"))
    np.testing.assert_array_equal(bwd[0, 0], [1, 1, 255, 2, 2, 255])
    near = np.asarray(backward_warp_labels(labels, flow2, 3, mode="nearest", border="clamp"))
    np.testing.assert_array_equal(near[0, 0], [1, 1, 255, 2, 2, 2])


def test_label_warps_stay_in_label_set():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, (2, 10, 12)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = 255
    flow = jnp.asarray(rng.normal(0, 2.0, (2, 10, 12, 2)), jnp.float32)
    allowed = {0, 1, 2, 3, 255}
    outs = [forward_warp_labels(jnp.asarray(labels), flow, 4)]
    for mode in ("nearest", "bilinear"):
        for border in ("clamp", "zeros"):
            outs.append(
                backward_warp_labels(jnp.asarray(labels), flow, 4, mode=mode, border=border)
            )
    for out in outs:
        assert set(np.unique(np.asarray(out)).tolist()) <= allowed
    # Nearest backward labels equal a NumPy gather of the rounded, clamped sample point.
    xs, ys = _grid(10, 12)
    f = np.asarray(flow)
    nx = np.clip(np.floor(xs + f[..., 0] + 0.5), 0, 11).astype(int)
    ny = np.clip(np.floor(ys + f[..., 1] + 0.5), 0, 9).astype(int)
    ref = labels[np.arange(2)[:, None, None], ny, nx]
    np.testing.assert_array_equal(np.asarray(outs[1]), ref)


# Samplers at arbitrary coordinates.
def test_samplers_at_arbitrary_coordinates_match_references():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    b, h, w, c = 2, 5, 7, 3
    src = rng.random((b, h, w, c)).astype(np.float32)
    coords = (rng.integers(-96, 320, (b, 4, 9, 2)) / 32.0).astype(np.float32)  # 1/32 px: cv2's grid
    assert (coords < 0).any() and (coords[..., 0] > w - 1).any()
    # zeros border: grid_sample(align_corners=True), normalised x ↦ 2x/(W−1) − 1.
    grid = np.stack([2 * coords[..., 0] / (w - 1) - 1, 2 * coords[..., 1] / (h - 1) - 1], -1)
    ref = torch.nn.functional.grid_sample(
        torch.from_numpy(src.transpose(0, 3, 1, 2).copy()), torch.from_numpy(grid),
        mode="bilinear", padding_mode="zeros", align_corners=True,
    ).numpy().transpose(0, 2, 3, 1)
    out = np.asarray(sample_bilinear(jnp.asarray(src), jnp.asarray(coords), border="zeros"))
    assert out.shape == (b, 4, 9, c)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # clamp border: cv2.remap with a replicated border.
    for n in range(b):
        ref = cv2.remap(src[n], coords[n, ..., 0], coords[n, ..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        got = np.asarray(sample_bilinear(jnp.asarray(src), jnp.asarray(coords)))[n]
        np.testing.assert_allclose(got, ref, atol=2e-6)
    # nearest: floor(x + 0.5); 'zeros' reads 0 outside, 'clamp' the clamped pixel.
    labels = rng.integers(0, 9, (b, h, w, 1)).astype(np.int32)
    xi, yi = np.floor(coords[..., 0] + 0.5).astype(int), np.floor(coords[..., 1] + 0.5).astype(int)
    bi = np.arange(b)[:, None, None]
    clamped = labels[bi, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
    inside = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))[..., None]
    np.testing.assert_array_equal(sample_nearest(jnp.asarray(labels), jnp.asarray(coords)), clamped)
    np.testing.assert_array_equal(
        sample_nearest(jnp.asarray(labels), jnp.asarray(coords), border="zeros"), np.where(inside, clamped, 0)
    )
    with pytest.raises(ValueError, match="coords"):
        sample_bilinear(jnp.asarray(src), jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="border"):
        sample_nearest(jnp.asarray(src), jnp.asarray(coords), border="reflect")
