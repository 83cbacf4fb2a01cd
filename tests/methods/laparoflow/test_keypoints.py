"""Key-point pipeline: Gaussian targets, loss, NMS peak finding, Du et al. matching and scores."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsurg.methods.laparoflow import keypoints as kp

# ----------------------------------------------------------------------------- targets


def test_keypoint_names_match_synthetic_data():
    synthetic = pytest.importorskip("jaxsurg.data.synthetic")
    assert kp.KEYPOINT_NAMES == tuple(synthetic.KEYPOINT_NAMES)


def test_heatmap_peak_value_one_and_formula():
    pts = np.zeros((3, 4, 2), np.float32)
    vis = np.zeros((3, 4), bool)
    pts[0, 0], vis[0, 0] = (10, 12), True
    pts[0, 3], vis[0, 3] = (20.5, 7.25), True  # off-grid
    heat = kp.gaussian_heatmaps(pts, vis, (24, 32), sigma=2.0)
    assert heat.shape == (24, 32, 4) and heat.dtype == np.float32
    assert heat[12, 10, 0] == 1.0  # (x, y) = (10, 12) → row 12, column 10
    assert np.unravel_index(np.argmax(heat[..., 0]), (24, 32)) == (12, 10)
    # Brute-force reference of the formula on the whole grid.
    yy, xx = np.mgrid[0:24, 0:32]
    ref = np.exp(-((xx - 20.5) ** 2 + (yy - 7.25) ** 2) / (2 * 2.0**2))
    np.testing.assert_allclose(heat[..., 3], ref, rtol=1e-6, atol=1e-7)
    assert heat[..., 3].max() < 1.0
    # Types with no visible point are all zero; unused slots at (0, 0) leave no trace.
    assert not heat[..., 1].any() and not heat[..., 2].any()
    assert heat[0, 0, 0] == pytest.approx(np.exp(-(100 + 144) / 8.0), rel=1e-5)


def test_heatmap_ignores_invisible_points():
    pts = np.array([[[5, 5], [9, 9]], [[15, 5], [3, 3]]], np.float32)  # (S=2, K=2, 2)
    vis = np.array([[True, False], [False, False]])
    heat = kp.gaussian_heatmaps(pts, vis, (12, 20), sigma=1.5)
    one = kp.gaussian_heatmaps(pts[:1, :1], vis[:1, :1], (12, 20), sigma=1.5)
    np.testing.assert_array_equal(heat[..., :1], one)
    assert heat[5, 15, 0] < 1e-6  # the invisible instrument 2 at (15, 5)
    assert not heat[..., 1].any()


def test_two_instruments_max_not_sum():
    pts = np.array([[[6, 8]], [[14, 8]]], np.float32)  # same type, 8 px apart
    heat = kp.gaussian_heatmaps(pts, np.ones((2, 1), bool), (16, 24), sigma=3.0)[..., 0]
    assert heat[8, 6] == 1.0 and heat[8, 14] == 1.0
    g = lambda d: np.exp(-(d**2) / 18.0)
    assert heat[8, 10] == pytest.approx(g(4.0), rel=1e-6)  # the max of two equal tails, not 2·g
    peaks = kp.find_peaks(heat[..., None], threshold=0.5, nms_radius=2)
    np.testing.assert_array_equal(peaks[0][0], [[6, 8], [14, 8]])


def test_heatmap_errors():
    pts, vis = np.zeros((1, 4, 2)), np.ones((1, 4), bool)
    with pytest.raises(ValueError, match="keypoints must be"):
        kp.gaussian_heatmaps(np.zeros((4, 2)), vis, (8, 8), 1.0)
    with pytest.raises(ValueError, match="visible must be"):
        kp.gaussian_heatmaps(pts, np.ones((1, 3), bool), (8, 8), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        kp.gaussian_heatmaps(pts, vis, (8, 8), 0.0)
    with pytest.raises(ValueError, match="size"):
        kp.gaussian_heatmaps(pts, vis, (0, 8), 1.0)
    bad = pts.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        kp.gaussian_heatmaps(bad, vis, (8, 8), 1.0)
    vis[0, 0] = False  # a NaN where invisible is fine
    assert kp.gaussian_heatmaps(bad, vis, (8, 8), 1.0)[..., 0].max() == 0


# ----------------------------------------------------------------------------- loss


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_bce_matches_numpy_and_analytic_gradient():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 5, 6, 3)).astype(np.float32) * 3
    z[0, 0] = 0.0  # exactly zero logits (zero-initialised classifier): gradient σ(0) − t
    z[1, 1, 0] = 60.0  # saturated logits stay finite
    z[1, 1, 1] = -60.0
    t = rng.uniform(0, 1, z.shape).astype(np.float32)
    z64 = z.astype(np.float64)
    p = _sigmoid(z64)
    # −t·log σ(z) − (1 − t)·log(1 − σ(z)), with −log σ(z) = log(1 + e^−z) (stable).
    ref = np.mean(t * np.logaddexp(0, -z64) + (1 - t) * np.logaddexp(0, z64), axis=(0, 1, 2))
    np.testing.assert_allclose(kp.keypoint_bce(jnp.asarray(z), jnp.asarray(t)), ref, rtol=1e-5)
    loss = kp.keypoint_loss(jnp.asarray(z), jnp.asarray(t), use_lovasz=False)
    assert float(loss) == pytest.approx(ref.mean(), rel=1e-5)
    # d/dz of mean_k mean_pixels BCE = (σ(z) − t) / (B·H·W·K).
    grad = jax.grad(lambda x: kp.keypoint_loss(x, jnp.asarray(t), use_lovasz=False))(jnp.asarray(z))
    np.testing.assert_allclose(grad, (p - t) / z.size, rtol=1e-4, atol=1e-9)


def _lovasz_softmax_binary_np(p_fg, labels):
    """Berman et al. (2018) Alg. 1 for two classes (0 = background, 1 = key point), classes present."""
    losses = []
    for c, pc in ((0, 1 - p_fg), (1, p_fg)):
        fg = (labels == c).astype(np.float64).ravel()
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - pc.ravel())
        order = np.argsort(-errors, kind="stable")
        e, g = errors[order], fg[order]
        inter = g.sum() - np.cumsum(g)
        union = g.sum() + np.cumsum(1 - g)
        jac = 1 - inter / union
        jac[1:] = jac[1:] - jac[:-1]
        losses.append(float(e @ jac))
    return np.mean(losses)


def test_lovasz_term_matches_numpy_reference():
    pytest.importorskip("jaxsurg.losses.lovasz")
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 6, 7, 2)).astype(np.float32)
    pts = np.array([[[2, 3], [5, 1]]], np.float32)
    heat = np.stack([kp.gaussian_heatmaps(pts + i, np.ones((1, 2), bool), (6, 7), 1.0) for i in range(2)])
    got = np.asarray(kp.keypoint_lovasz(jnp.asarray(z), jnp.asarray(heat)))
    p = _sigmoid(z.astype(np.float64))
    ref = [_lovasz_softmax_binary_np(p[..., k], (heat[..., k] >= 0.5).astype(int)) for k in range(2)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    full = kp.keypoint_loss(jnp.asarray(z), jnp.asarray(heat))
    bce = np.asarray(kp.keypoint_bce(jnp.asarray(z), jnp.asarray(heat)))
    # App. D.3: "we average the binary Lovász-Softmax loss and cross-entropy for every key
    # point type" — per type the mean of the two terms (not their sum), then over the types.
    assert float(full) == pytest.approx(np.mean((np.asarray(ref) + bce) / 2), rel=1e-5)
    assert float(full) == pytest.approx(0.5 * (np.mean(ref) + np.mean(bce)), rel=1e-5)


@pytest.mark.parametrize("use_lovasz", [False, True])
def test_loss_decreases_fitting_a_heatmap(use_lovasz):
    if use_lovasz:
        pytest.importorskip("jaxsurg.losses.lovasz")
    pts = np.array([[[4, 5], [10, 3]], [[12, 10], [2, 11]]], np.float32)
    target = jnp.asarray(kp.gaussian_heatmaps(pts, np.ones((2, 2), bool), (14, 16), 1.5))[None]
    loss_fn = jax.jit(jax.value_and_grad(lambda z: kp.keypoint_loss(z, target, use_lovasz=use_lovasz)))
    z = jnp.zeros_like(target)
    opt = optax.adam(0.3)
    opt_state = opt.init(z)
    losses = []
    for _ in range(40):
        value, g = loss_fn(z)
        losses.append(float(value))
        updates, opt_state = opt.update(g, opt_state)
        z = optax.apply_updates(z, updates)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    # The fitted map peaks at the labelled points.
    peaks = kp.find_peaks(jax.nn.sigmoid(z[0]), threshold=0.5, nms_radius=3)
    for k in range(2):
        np.testing.assert_array_equal(np.sort(peaks[k][0], axis=0), np.sort(pts[:, k], axis=0))


def test_loss_shape_errors():
    with pytest.raises(ValueError, match="targets must have the shape"):
        kp.keypoint_loss(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 3)), use_lovasz=False)
    with pytest.raises(ValueError, match=r"logits must be \(B, H, W, K\)"):
        kp.keypoint_bce(jnp.zeros((4, 4, 2)), jnp.zeros((4, 4, 2)))


# ----------------------------------------------------------------------------- peaks


def _nms_reference(heat, threshold, r):
    """Brute force: ≥ threshold, ≥ every pixel of the window, > every earlier (raster) pixel."""
    h, w = heat.shape
    out = []
    for y in range(h):
        for x in range(w):
            v = heat[y, x]
            if v < threshold:
                continue
            ok = True
            for yy in range(max(0, y - r), min(h, y + r + 1)):
                for xx in range(max(0, x - r), min(w, x + r + 1)):
                    earlier = (yy, xx) < (y, x)
                    if heat[yy, xx] > v or (earlier and heat[yy, xx] == v):
                        ok = False
            if ok:
                out.append((v, x, y))
    return out


def test_find_peaks_recovers_points_and_suppresses_near_duplicate():
    pts = np.array([[[8, 6], [20, 15]], [[25, 4], [0, 0]]], np.float32)
    vis = np.array([[True, True], [True, False]])
    heat = kp.gaussian_heatmaps(pts, vis, (20, 32), sigma=2.0)
    # A near-duplicate 3 px right of (8, 6), lower, and a weak bump under the threshold.
    heat[6, 11, 0] = 0.9
    heat[16, 3, 1] = 0.4
    peaks = kp.find_peaks(heat, threshold=0.5, nms_radius=4)
    assert len(peaks) == 2
    np.testing.assert_array_equal(peaks[0][0], [[25, 4], [8, 6]])  # equal scores: raster order
    np.testing.assert_array_equal(peaks[0][1], [1.0, 1.0])
    np.testing.assert_array_equal(peaks[1][0], [[20, 15]])
    assert peaks[0][0].dtype == np.float32
    # With a radius smaller than the offset the duplicate is its own peak.
    small = kp.find_peaks(heat, threshold=0.5, nms_radius=2)
    np.testing.assert_array_equal(small[0][0], [[25, 4], [8, 6], [11, 6]])
    np.testing.assert_allclose(small[0][1], [1.0, 1.0, 0.9])


def test_find_peaks_plateau_gives_one_peak():
    heat = np.zeros((10, 12, 1), np.float32)
    heat[2:6, 3:8, 0] = 1.0  # saturated sigmoid: a 4×5 plateau of equal values
    peaks = kp.find_peaks(heat, threshold=0.5, nms_radius=2)
    np.testing.assert_array_equal(peaks[0][0], [[3, 2]])  # the top-left pixel


@pytest.mark.parametrize("r", [0, 1, 3])
def test_find_peaks_padded_matches_brute_force(r):
    rng = np.random.default_rng(r)
    heat = rng.uniform(0, 1, (2, 7, 9, 2)).astype(np.float32)
    heat[0, 4, 2:6, 1] = 0.95  # ties
    heat = np.round(heat * 8) / 8  # many equal values
    out = jax.jit(lambda x: kp.find_peaks_padded(x, threshold=0.3, nms_radius=r, max_peaks=200))(heat)
    xy, scores, valid = (np.asarray(a) for a in out)  # host arrays: no per-index dispatch
    assert xy.shape == (2, 2, 200, 2) and scores.shape == valid.shape == (2, 2, 200)
    for b in range(2):
        for k in range(2):
            ref = _nms_reference(heat[b, :, :, k], 0.3, r)
            n = int(valid[b, k].sum())
            assert n == len(ref)
            assert valid[b, k, :n].all() and not valid[b, k, n:].any()
            got = {(float(s), int(x), int(y)) for s, (x, y) in zip(scores[b, k, :n], xy[b, k, :n])}
            assert got == {(float(v), x, y) for v, x, y in ref}
            assert np.all(np.diff(scores[b, k, :n]) <= 0)  # decreasing scores


def test_find_peaks_max_peaks_keeps_the_best():
    heat = np.zeros((8, 20, 1), np.float32)
    for i, v in enumerate([0.6, 0.9, 0.7, 0.8]):
        heat[4, 2 + 5 * i, 0] = v
    peaks = kp.find_peaks(heat, threshold=0.5, nms_radius=1, max_peaks=2)
    np.testing.assert_array_equal(peaks[0][0], [[7, 4], [17, 4]])
    np.testing.assert_allclose(peaks[0][1], [0.9, 0.8])
    with pytest.raises(ValueError, match="heatmap must be"):
        kp.find_peaks(heat[..., 0])
    with pytest.raises(ValueError, match="nms_radius"):
        kp.find_peaks(heat, nms_radius=-1)


# ----------------------------------------------------------------------------- matching


def test_match_radius_after_scaling_512_to_256():
    scale = (0.5, 0.5)  # 512×512 → 256×256
    gt = [np.array([[100.0, 100.0]])]
    c = kp.match_keypoints([np.array([[138.0, 100.0]])], gt, radius=20.0, scale=scale)  # 19 px
    assert (c.tp[0], c.fp[0], c.fn[0]) == (1, 0, 0) and c.distance_sum[0] == pytest.approx(19.0)
    c = kp.match_keypoints([np.array([[142.0, 100.0]])], gt, radius=20.0, scale=scale)  # 21 px
    assert (c.tp[0], c.fp[0], c.fn[0]) == (0, 1, 1) and c.distance_sum[0] == 0.0
    # Anisotropic scale: 30 px in y of a 768-high image is 10 px at 256.
    c = kp.match_keypoints([np.array([[0.0, 30.0]])], [np.array([[0.0, 0.0]])], scale=(0.5, 1 / 3))
    assert c.tp[0] == 1 and c.distance_sum[0] == pytest.approx(10.0)


def test_match_is_one_to_one_and_optimal():
    gt = [np.array([[50.0, 50.0]])]
    c = kp.match_keypoints([np.array([[53.0, 54.0], [50.0, 51.0]])], gt)
    assert (c.tp[0], c.fp[0], c.fn[0]) == (1, 1, 0) and c.distance_sum[0] == pytest.approx(1.0)
    # Greedy by distance would take (p1, g1) = 14 px first and leave p2 unmatched; the
    # optimal assignment matches both: (p1, g2) 16 px and (p2, g1) 15 px.
    gt = [np.array([[0.0, 0.0], [30.0, 0.0]])]
    pred = [np.array([[14.0, 0.0], [-15.0, 0.0]])]
    c = kp.match_keypoints(pred, gt)
    assert (c.tp[0], c.fp[0], c.fn[0]) == (2, 0, 0) and c.distance_sum[0] == pytest.approx(31.0)


def test_match_per_type_and_empty():
    pred = [np.array([[10.0, 10.0]]), np.zeros((0, 2)), [], np.array([[5.0, 5.0], [90.0, 90.0]])]
    gt = [np.zeros((0, 2)), np.array([[10.0, 10.0]]), [], np.array([[6.0, 5.0]])]
    c = kp.match_keypoints(pred, gt)  # a point of type 0 never matches one of type 1
    np.testing.assert_array_equal(c.tp, [0, 0, 0, 1])
    np.testing.assert_array_equal(c.fp, [1, 0, 0, 1])
    np.testing.assert_array_equal(c.fn, [0, 1, 0, 0])
    np.testing.assert_allclose(c.distance_sum, [0, 0, 0, 1.0])
    with pytest.raises(ValueError, match="one entry per key-point type"):
        kp.match_keypoints(pred[:3], gt)
    with pytest.raises(ValueError, match=r"pred\[0\] must be \(n, 2\)"):
        kp.match_keypoints([np.zeros((2, 3))], [np.zeros((0, 2))])
    with pytest.raises(ValueError, match="scale"):
        kp.match_keypoints(pred, gt, scale=(0.0, 1.0))


# ----------------------------------------------------------------------------- summary


def test_summary_hand_computed():
    a = kp.KeypointCounts(
        np.array([3, 1, 0, 0]), np.array([1, 0, 2, 0]), np.array([1, 1, 2, 0]), np.array([6.0, 2.5, 0, 0])
    )
    b = kp.KeypointCounts(
        np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0]), np.array([0, 0, 0, 0]), np.array([2.0, 0, 0, 0])
    )
    s = kp.summarize_keypoints([a, b])
    lc = s["per_type"]["LeftClasper"]  # TP 4, FP 1, FN 1, distances 8
    assert (lc["tp"], lc["fp"], lc["fn"]) == (4, 1, 1)
    assert lc["recall"] == pytest.approx(0.8) and lc["precision"] == pytest.approx(0.8)
    assert lc["distance"] == pytest.approx(2.0) and lc["f1"] == pytest.approx(0.8)
    rc = s["per_type"]["RightClasper"]  # TP 1, FP 1, FN 1
    assert rc["recall"] == rc["precision"] == rc["f1"] == pytest.approx(0.5) and rc["distance"] == 2.5
    head = s["per_type"]["Head"]  # TP 0, FP 2, FN 2
    assert head["recall"] == head["precision"] == head["f1"] == 0.0 and head["distance"] is None
    shaft = s["per_type"]["ShaftEnd"]  # nothing at all
    assert shaft["recall"] is None and shaft["precision"] is None and shaft["f1"] is None
    o = s["overall"]  # TP 5, FP 4, FN 4, distances 10.5
    assert o["recall"] == pytest.approx(5 / 9) and o["precision"] == pytest.approx(5 / 9)
    assert o["distance"] == pytest.approx(2.1) and o["f1"] == pytest.approx(10 / 18)
    assert o["f1_mean_over_types"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    json.dumps(s)  # serialisable
    assert kp.summarize_keypoints(a + b) == s


def test_summary_reproduces_table2_f1_as_mean_over_types():
    # Du et al. (2018) row of Laparoflow-SSL Table 2: R/P per type → F1 column .85.
    rp = [(0.86, 0.87), (0.85, 0.86), (0.76, 0.77), (0.91, 0.92)]
    counts = kp.KeypointCounts(
        tp=np.array([int(r * 10000) for r, _ in rp]),
        fp=np.array([round(r * 10000 / p) - int(r * 10000) for r, p in rp]),
        fn=np.array([10000 - int(r * 10000) for r, _ in rp]),
        distance_sum=np.zeros(4),
    )
    s = kp.summarize_keypoints(counts)
    assert round(s["overall"]["f1_mean_over_types"], 2) == 0.85


def test_end_to_end_heatmap_to_scores():
    pts = np.array([[[10, 10], [20, 10], [15, 20], [15, 40]], [[40, 30], [50, 30], [45, 20], [0, 0]]], np.float32)
    vis = np.array([[True, True, True, True], [True, True, True, False]])
    heat = kp.gaussian_heatmaps(pts, vis, (48, 64), sigma=2.0)
    peaks = kp.find_peaks(heat, threshold=0.5, nms_radius=3)
    truth = [pts[vis[:, k], k] for k in range(4)]
    counts = kp.match_keypoints([p for p, _ in peaks], truth, scale=(256 / 64, 256 / 48))
    s = kp.summarize_keypoints([counts])
    assert s["overall"]["tp"] == 7 and s["overall"]["fp"] == 0 and s["overall"]["fn"] == 0
    assert s["overall"]["distance"] == 0.0 and s["overall"]["f1"] == 1.0
