"""Laparoflow-SSL contrastive losses against brute-force NumPy loops on tiny grids."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxsurg.methods.laparoflow import contrastive as C
from jaxsurg.methods.laparoflow import temperatures

TAU0, LAM, CW = 0.07, 10.0, 4.0


# ----------------------------------------------------------------------------- references


def ref_flow_infonce(za, zo, flow, valid, anchors, amask, tau_p, tau_n, exclude_self=False):
    """Explicit loops over images, anchors, positives and negatives (float64)."""
    za, zo, flow = (np.asarray(x, np.float64) for x in (za, zo, flow))
    num = total = 0.0
    for b in range(za.shape[0]):
        for i, a in enumerate(anchors[b]):
            if not (amask[b, i] and valid[b, a]):
                continue
            fa = flow[b, a]
            dist = np.linalg.norm(fa - flow[b], axis=-1) / max(np.linalg.norm(fa), 1e-6)
            vidx = np.flatnonzero(valid[b])
            med = np.median(dist[vidx])
            pos = {int(l): math.exp(-dist[l] / tau_p) for l in vidx if dist[l] <= med}
            neg = {int(l): 1 - math.exp(-dist[l] / tau_n) for l in vidx if dist[l] > med}
            if exclude_self:
                pos.pop(int(a))
            else:
                pos[int(a)] = CW
            for p, wp in pos.items():
                s_ap = math.exp(za[b, a] @ zo[b, p] / TAU0)
                for n, wn in neg.items():
                    s_an = math.exp(za[b, a] @ zo[b, n] / TAU0)
                    num += wp * wn * -math.log(s_ap / (s_ap + LAM * s_an))
                    total += wp * wn
    return (num / total if total > 0 else 0.0), total


def ref_view_infonce(za, zo, coords, valid, anchors, amask, radius):
    num = total = 0.0
    for b in range(za.shape[0]):
        for i, a in enumerate(anchors[b]):
            if not (amask[b, i] and valid[b, a]):
                continue
            s_ap = math.exp(za[b, a] @ zo[b, a] / TAU0)
            for n in range(za.shape[1]):
                if valid[b, n] and np.linalg.norm(coords[n] - coords[a]) > radius:
                    s_an = math.exp(za[b, a] @ zo[b, n] / TAU0)
                    num += -math.log(s_ap / (s_ap + LAM * s_an))
                    total += 1
    return (num / total if total > 0 else 0.0), total


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _case(seed=0, b=2, h=3, w=4, d=5):
    rng = np.random.default_rng(seed)
    n = h * w
    za = _unit(rng.normal(size=(b, n, d)))
    zo = _unit(za + 0.7 * rng.normal(size=(b, n, d)))
    flow = rng.normal(size=(b, n, 2)) * 2
    valid = rng.random((b, n)) > 0.2
    anchors = np.array([[0, 3, 7, 5], [1, 2, 10, 11]], np.int32)[:b]
    valid[0, [0, 3, 7]] = True
    valid[0, 5] = False  # an anchor on an invalid pixel is not counted
    valid[1, [1, 2, 10, 11]] = True
    amask = np.array([[True, True, False, True], [True, True, True, False]])[:b]
    return za, zo, flow, valid, anchors, amask


def _flow_loss(za, zo, flow, valid, anchors, amask, **kw):
    kw.setdefault("tau_p", 0.4)
    kw.setdefault("tau_n", 1.3)
    return C.flow_guided_infonce(
        jnp.asarray(za), jnp.asarray(zo), jnp.asarray(flow), jnp.asarray(valid), jnp.asarray(anchors), jnp.asarray(amask), **kw
    )


# ----------------------------------------------------------------------------- flow-guided


@pytest.mark.parametrize("exclude_self", [False, True])
def test_flow_infonce_matches_bruteforce(exclude_self):
    za, zo, flow, valid, anchors, amask = _case(0)
    if exclude_self:
        zo = za  # C.1: s^(1,1)
    ref, ref_total = ref_flow_infonce(za, zo, flow, valid, anchors, amask, 0.4, 1.3, exclude_self)
    loss, aux = _flow_loss(za, zo, flow, valid, anchors, amask, exclude_self=exclude_self)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(aux["total_weight"], ref_total, rtol=1e-5)
    np.testing.assert_allclose(aux["loss_sum"], ref * ref_total, rtol=1e-5)
    assert float(aux["anchors"]) == 2.5  # masked and invalid anchors are not counted
    # jit, several anchors per lax.map step, and num_pairs >= N (every pair kept, exact).
    jitted = jax.jit(lambda *x: _flow_loss(*x, exclude_self=exclude_self, anchors_per_step=3)[0])
    np.testing.assert_allclose(jitted(za, zo, flow, valid, anchors, amask), ref, rtol=1e-5)
    full, _ = _flow_loss(za, zo, flow, valid, anchors, amask, exclude_self=exclude_self, num_pairs=12, key=jax.random.PRNGKey(3))
    np.testing.assert_allclose(full, ref, rtol=1e-5)


def test_num_pairs_estimate_is_unbiased():
    za, zo, flow, valid, anchors, amask = _case(1)
    exact, _ = _flow_loss(za, zo, flow, valid, anchors, amask)
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    est = jax.vmap(lambda k: _flow_loss(za, zo, flow, valid, anchors, amask, num_pairs=3, key=k)[0])(keys)
    est = np.asarray(est)
    assert est.std() > 0  # it really samples
    assert abs(est.mean() - float(exact)) < 4 * est.std() / math.sqrt(len(est))


def test_flow_infonce_gradient_finite_differences():
    za, zo, flow, valid, anchors, amask = _case(2)
    with jax.enable_x64(True):
        f = jax.jit(lambda a, o: _flow_loss(a, o, flow, valid, anchors, amask)[0])
        check_grads(f, (jnp.asarray(za), jnp.asarray(zo)), order=1, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-5)
        g = jax.jit(lambda a: _flow_loss(a, a, flow, valid, anchors, amask, exclude_self=True, num_pairs=4, key=jax.random.PRNGKey(1))[0])
        check_grads(g, (jnp.asarray(za),), order=1, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-5)


def test_relative_flow_distance_and_median_split():
    # One image, 8 pixels, anchor flow (2, 0); pixel l has flow (2 + l/2, 0) -> Δf = l/4.
    n = 8
    flow = np.stack([2 + np.arange(n) / 2, np.zeros(n)], -1)[None]
    dist = C.relative_flow_distance(jnp.asarray(flow[:, :1]), jnp.asarray(flow))
    np.testing.assert_allclose(dist[0, 0], np.arange(n) / 4, rtol=1e-6)
    valid = np.ones((1, n), bool)
    w_pos, w_neg = C.flow_pair_weights(dist, jnp.asarray(valid), 0.5, 1.0)
    w_pos, w_neg = np.asarray(w_pos)[0, 0], np.asarray(w_neg)[0, 0]
    d = np.arange(n) / 4
    # Median of 8 distinct values = mean of the 4th and 5th: 4 positives, 4 negatives.
    np.testing.assert_allclose(w_pos, np.where(d <= 0.875, np.exp(-d / 0.5), 0), rtol=1e-6)
    np.testing.assert_allclose(w_neg, np.where(d > 0.875, 1 - np.exp(-d / 1.0), 0), rtol=1e-6)
    # Odd number of valid pixels (pixel 6 invalid): median = 4th of 7 -> 4 positives, 3 negatives.
    valid[0, 6] = False
    w_pos, w_neg = C.flow_pair_weights(dist, jnp.asarray(valid), 0.5, 1.0)
    assert np.sum(np.asarray(w_pos) > 0) == 4 and np.sum(np.asarray(w_neg) > 0) == 3
    assert float(w_pos[0, 0, 6]) == 0 and float(w_neg[0, 0, 6]) == 0


def test_weights_in_unit_interval_and_half_split_on_random_flow():
    rng = np.random.default_rng(4)
    flow = rng.normal(size=(3, 64, 2))
    valid = rng.random((3, 64)) > 0.25
    anchors, amask = C.sample_anchors(jax.random.PRNGKey(0), jnp.asarray(flow), jnp.asarray(valid), 5, 0.5)
    assert np.asarray(amask).all()  # plenty of moving valid pixels
    fa = jnp.take_along_axis(jnp.asarray(flow), anchors[..., None], axis=1)
    w_pos, w_neg = C.flow_pair_weights(C.relative_flow_distance(fa, jnp.asarray(flow)), jnp.asarray(valid), 0.3, 0.9)
    w_pos, w_neg = np.asarray(w_pos), np.asarray(w_neg)
    assert w_pos.min() >= 0 and w_pos.max() <= 1 and w_neg.min() >= 0 and w_neg.max() <= 1
    assert not np.any((w_pos > 0) & (w_neg > 0))
    m = valid.sum(-1)[:, None]
    np.testing.assert_array_equal((w_pos > 0).sum(-1), np.broadcast_to((m + 1) // 2, (3, 5)))  # distinct distances
    np.testing.assert_array_equal((w_neg > 0).sum(-1), np.broadcast_to(m // 2, (3, 5)))
    assert np.all(w_pos[~np.broadcast_to(valid[:, None], w_pos.shape)] == 0)


def _two_groups(seed, b=2, h=4, w=4):
    rng = np.random.default_rng(seed)
    n = h * w
    group = np.tile((np.arange(w) >= w // 2).astype(int), h)  # left / right halves
    flow = np.where(group[:, None] == 0, [2.0, 0.0], [0.0, 2.0])[None] + 0.05 * rng.normal(size=(b, n, 2))
    return group, flow, np.ones((b, n), bool)


def test_separated_representations_beat_random_ones():
    group, flow, valid = _two_groups(0)
    b, n = valid.shape
    anchors, amask = C.sample_anchors(jax.random.PRNGKey(1), jnp.asarray(flow), jnp.asarray(valid), 6)
    separated = np.broadcast_to(np.eye(3)[group], (b, n, 3))
    random = _unit(np.random.default_rng(1).normal(size=(b, n, 3)))
    loss = jax.jit(lambda z: _flow_loss(z, z, flow, valid, anchors, amask)[0])
    l_sep, l_rand = loss(jnp.asarray(separated, jnp.float32)), loss(jnp.asarray(random, jnp.float32))
    assert float(l_sep) < 1e-3
    assert float(l_rand) > 1.0


def test_sgd_on_free_unit_vectors_decreases_loss():
    _, flow, valid = _two_groups(1)
    anchors, amask = C.sample_anchors(jax.random.PRNGKey(2), jnp.asarray(flow), jnp.asarray(valid), 8)
    u0 = jnp.asarray(np.random.default_rng(2).normal(size=valid.shape + (4,)), jnp.float32)

    @jax.jit
    def loss_fn(u):
        z = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
        return _flow_loss(z, z, flow, valid, anchors, amask)[0]

    step = jax.jit(lambda u: u - 0.5 * jax.grad(loss_fn)(u))
    u = u0
    for _ in range(30):
        u = step(u)
    assert float(loss_fn(u)) < 0.5 * float(loss_fn(u0))


def test_no_counted_anchor_gives_zero_loss_and_gradient():
    za, zo, flow, valid, anchors, _ = _case(3)
    amask = np.zeros_like(anchors, bool)
    f = lambda a: _flow_loss(a, zo, flow, valid, anchors, amask)
    (loss, aux), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(za))
    assert float(loss) == 0 and float(aux["total_weight"]) == 0 and np.all(np.asarray(g) == 0)


# ----------------------------------------------------------------------------- anchors


def test_sample_anchors_only_moving_valid_pixels_and_masks_extras():
    flow = np.zeros((2, 10, 2))
    flow[0, [1, 4, 6, 8, 9], 0] = 1.0
    flow[1, [2, 3], 1] = 0.5
    flow[1, 7] = [0.2, 0.2]  # norm 0.28 < 1/3: quasi-stationary
    valid = np.ones((2, 10), bool)
    valid[0, 9] = False
    idx, mask = C.sample_anchors(jax.random.PRNGKey(0), jnp.asarray(flow), jnp.asarray(valid), 4)
    idx, mask = np.asarray(idx), np.asarray(mask)
    assert idx.dtype == np.int32 and idx.shape == (2, 4)
    assert set(idx[0]) <= {1, 4, 6, 8} and mask[0].all() and len(set(idx[0])) == 4
    assert mask[1].sum() == 2 and set(idx[1][mask[1]]) == {2, 3}


def test_sample_anchors_is_uniform():
    flow = np.ones((1, 6, 2))
    valid = np.ones((1, 6), bool)
    keys = jax.random.split(jax.random.PRNGKey(0), 3000)
    idx, _ = jax.vmap(lambda k: C.sample_anchors(k, jnp.asarray(flow), jnp.asarray(valid), 2))(keys)
    counts = np.bincount(np.asarray(idx).ravel(), minlength=6)
    expected = 3000 * 2 / 6
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))  # ~5 sigma


# ----------------------------------------------------------------------------- view-contrastive


def test_view_infonce_matches_bruteforce_and_radius():
    za, zo, _, valid, anchors, amask = _case(5)
    yy, xx = np.meshgrid(np.arange(3) * 4.0, np.arange(4) * 4.0, indexing="ij")
    coords = np.stack([xx.ravel(), yy.ravel()], -1)  # pixel centres of a 3x4 grid, stride 4
    for radius in (0.0, 5.0, 9.0):
        ref, ref_total = ref_view_infonce(za, zo, coords, valid, anchors, amask, radius)
        args = (jnp.asarray(za), jnp.asarray(zo), jnp.asarray(coords), jnp.asarray(valid), jnp.asarray(anchors), jnp.asarray(amask))
        loss, aux = C.view_contrastive_infonce(*args, radius=radius)
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        assert float(aux["total_weight"]) == ref_total
        batched = jnp.broadcast_to(jnp.asarray(coords), (2, 12, 2))
        loss_b, _ = jax.jit(lambda *x, r=radius: C.view_contrastive_infonce(*x, radius=r))(args[0], args[1], batched, *args[3:])
        np.testing.assert_allclose(loss_b, ref, rtol=1e-5)
    # Nothing lies beyond the grid diagonal: no negatives, loss 0.
    loss, aux = C.view_contrastive_infonce(*args, radius=100.0)
    assert float(loss) == 0 and float(aux["total_weight"]) == 0
    with jax.enable_x64(True):
        f = jax.jit(lambda a, o: C.view_contrastive_infonce(a, o, *args[2:], radius=5.0)[0])
        check_grads(f, (jnp.asarray(za), jnp.asarray(zo)), order=1, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-5)


def test_balanced_sum():
    la, ta, lb, tb = 2.0, 3.0, 5.0, 1.0
    np.testing.assert_allclose(C.balanced_sum(la, ta, lb, tb), (2 * 1 + 5 * 3) / 4, rtol=1e-6)
    grads = jax.grad(C.balanced_sum, argnums=(0, 1, 2, 3))(la, ta, lb, tb)
    np.testing.assert_allclose(grads, [0.25, 0.0, 0.75, 0.0], rtol=1e-6)  # totals stop-gradient
    assert float(C.balanced_sum(1.0, 0.0, 2.0, 0.0)) == 0.0


# ----------------------------------------------------------------------------- quantiles


def test_relative_distance_quantiles_known_distribution():
    # One moving pixel with flow (1, 0); 2001 others with flow (x, 0), x uniform on
    # [-0.3, 0.3] (below min_flow, so never anchors): Δf = 1 - x ~ U[0.7, 1.3].
    x = np.linspace(-0.3, 0.3, 2001)
    flow = np.zeros((1, 2002, 2))
    flow[0, :2001, 0] = x
    flow[0, 2001, 0] = 1.0
    valid = np.ones((1, 2002), bool)
    tau_p, tau_n = temperatures.relative_distance_quantiles([flow], [valid], pixels_per_anchor=None)
    np.testing.assert_allclose([tau_p, tau_n], [0.85, 1.15], rtol=1e-6)
    # Invalid pixels are left out: drop the x > 0 half -> Δf ~ U[1.0, 1.3].
    valid2 = valid.copy()
    valid2[0, :2001] = x <= 0
    q = temperatures.relative_distance_quantiles([flow, flow], [valid2, valid2], quantiles=(0.5,), pixels_per_anchor=None)
    np.testing.assert_allclose(q, [1.15], rtol=1e-6)
    # Subsampled pixels: close to the exact values.
    tau_p, tau_n = temperatures.relative_distance_quantiles([flow] * 4, [valid] * 4, pixels_per_anchor=500, seed=1)
    np.testing.assert_allclose([tau_p, tau_n], [0.85, 1.15], atol=0.03)
    with pytest.raises(ValueError, match="no anchor qualifies"):
        temperatures.relative_distance_quantiles([flow * 0.1], [valid])


def test_bad_inputs_raise():
    za, zo, flow, valid, anchors, amask = _case(0)
    with pytest.raises(ValueError, match="z_other"):
        _flow_loss(za, zo[:, :5], flow, valid, anchors, amask)
    with pytest.raises(ValueError, match="tau_p"):
        _flow_loss(za, zo, flow, valid, anchors, amask, tau_p=0.0)
    with pytest.raises(ValueError, match="key"):
        _flow_loss(za, zo, flow, valid, anchors, amask, num_pairs=4)
    with pytest.raises(ValueError, match="num_anchors"):
        C.sample_anchors(jax.random.PRNGKey(0), jnp.asarray(flow), jnp.asarray(valid), 13)
    with pytest.raises(ValueError, match="coords"):
        C.view_contrastive_infonce(*map(jnp.asarray, (za, zo, np.zeros((5, 2)), valid, anchors, amask)), radius=1.0)
