"""Laparoflow-SSL's random views (jaxsurg.methods.laparoflow.views.make_views): exactness on
linear images, the G2-inside-view-1 constraint, the representation-grid map (grid2to1) with a
marker and with average-pooling "backbones" centred at 4i and 4i + 1.5, cells bordering
rotation holes left out, flow/valid transport, jit/vmap/determinism and input checks (the
geometry itself: test_view_geometry.py; P: test_photometric.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.methods.laparoflow import view_geometry, views
from jaxsurg.methods.laparoflow.photometric import PhotometricParams
from view_checks import map_points, support_valid  # tests/methods/laparoflow/view_checks.py


def _ramp(b, h, w, seed=0):
    """Images linear in (x, y) — bilinear sampling reproduces them exactly — in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    coef = rng.uniform(-1, 1, (b, 3, 2)).astype(np.float32)
    img = coef[:, None, None, :, 0] * (xx / w)[None, :, :, None] + coef[:, None, None, :, 1] * (yy / h)[None, :, :, None]
    return (0.5 + 0.2 * img).astype(np.float32), coef


def _ramp_value(coef, x, y, h, w):
    """The ramp of ``_ramp`` at float points x, y (B, ...)."""
    return 0.5 + 0.2 * (coef[:, None, :, 0] * (x.reshape(len(coef), -1, 1) / w) + coef[:, None, :, 1] * (y.reshape(len(coef), -1, 1) / h))


def _grid(h, w):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64)


def _flow_and_valid(b, h, w):
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    flow = np.stack([0.1 * xx + 0.2 * yy + 1.0, -0.05 * xx + 0.3 * yy - 2.0], -1)
    circle = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= (0.45 * max(h, w)) ** 2
    return np.repeat(flow[None], b, 0), np.repeat(circle[None], b, 0)


NO_GEOMETRY = dict(max_zoom=1.0, rotate=False, flip=False)


# ------------------------------------------------------------------------------ affine conventions
def test_identity_geometry_reproduces_the_input_exactly():
    img = np.random.default_rng(2).random((2, 16, 20, 3)).astype(np.float32)
    flow, valid = _flow_and_valid(2, 16, 20)
    v = views.make_views(jax.random.PRNGKey(0), img, flow, valid, (16, 20), photometric=None, **NO_GEOMETRY)
    np.testing.assert_array_equal(v["view1"], img)
    np.testing.assert_array_equal(v["view2"], img)
    np.testing.assert_array_equal(v["flow1"], flow)
    np.testing.assert_array_equal(v["valid1"], valid)
    np.testing.assert_array_equal(v["valid2"], valid)
    rep = np.stack(np.meshgrid(np.arange(5), np.arange(4), indexing="xy"), -1)  # (4, 5, 2) = (j, i)
    np.testing.assert_allclose(v["grid2to1"], np.broadcast_to(rep, (2, 4, 5, 2)), atol=1e-6)
    np.testing.assert_allclose(v["coords3"], 4 * rep.reshape(-1, 2))  # receptive centres 4j, 4i
    # flow3 and flow_rep1 are the (linear) flow at the receptive centres 4j, 4i.
    x, y = 4 * rep[..., 0], 4 * rep[..., 1]
    for key in ("flow3", "flow_rep1"):
        np.testing.assert_allclose(v[key][0, ..., 0], 0.1 * x + 0.2 * y + 1.0, atol=1e-5)
        np.testing.assert_allclose(v[key][0, ..., 1], -0.05 * x + 0.3 * y - 2.0, atol=1e-5)
    # valid3 (= valid_rep1 = valid_rep2 here): every pixel within 3 px of the centre valid.
    v3 = support_valid(valid, x, y, 3)
    for key in ("valid3", "valid_rep1", "valid_rep2"):
        np.testing.assert_array_equal(v[key], v3)
    assert v3.any() and not v3.all()
    # Identity photometric parameters: equal up to the HSV round trip.
    w = views.make_views(jax.random.PRNGKey(0), img, flow, valid, (16, 20), photometric=PhotometricParams.identity(), **NO_GEOMETRY)
    np.testing.assert_allclose(w["view1"], img, atol=2e-6)


# ------------------------------------------------------------------------------ geometry of make_views
def _random_ramp_views(seed=0, b=6, in_hw=(40, 48), out_hw=(24, 24), **kw):
    img, coef = _ramp(b, *in_hw, seed=seed)
    flow, valid = _flow_and_valid(b, *in_hw)
    v = views.make_views(jax.random.PRNGKey(seed), img, flow, valid, out_hw, photometric=None, **kw)
    return img, coef, flow, valid, jax.tree.map(np.asarray, v)


def test_views_follow_their_affines_exactly_on_linear_images():
    (hh, ww), (h, w) = (40, 48), (24, 24)
    _, coef, _, valid, v = _random_ramp_views()
    pix = np.broadcast_to(_grid(h, w), (6, h * w, 2))
    for name, aff, ins in [("view1", v["affine1"], v["valid1"]), ("view2", v["affine12"], v["valid2"])]:
        p = map_points(aff.astype(np.float64), pix)
        clean = (p[..., 0] >= 0) & (p[..., 0] <= ww - 1) & (p[..., 1] >= 0) & (p[..., 1] <= hh - 1)
        want = _ramp_value(coef, p[..., 0], p[..., 1], hh, ww)
        got = v[name].reshape(6, -1, 3)
        assert clean.mean() > 0.5
        np.testing.assert_allclose(got[clean], want[clean], atol=1e-4)
        outside = (p[..., 0] < -0.501) | (p[..., 0] > ww - 0.499) | (p[..., 1] < -0.501) | (p[..., 1] > hh - 0.499)
        assert np.all(got[outside] == 0) and not np.any(ins.reshape(6, -1)[outside])
        # valid = the circle mask at the nearest input pixel, within the input.
        xi = np.clip(np.floor(p[..., 0] + 0.5), 0, ww - 1).astype(int)
        yi = np.clip(np.floor(p[..., 1] + 0.5), 0, hh - 1).astype(int)
        near = valid[np.arange(6)[:, None], yi, xi] & ~outside
        far_from_ties = np.all(np.abs(p - np.round(p)) < 0.499, -1)
        np.testing.assert_array_equal(ins.reshape(6, -1)[far_from_ties], near[far_from_ties])


def test_view2_equals_view1_resampled_with_g2_away_from_borders():
    (hh, ww), (h, w) = (40, 48), (24, 24)
    _, _, flow, valid, v = _random_ramp_views(seed=3)
    coords = view_geometry.apply_affine(v["affine2"], view_geometry.pixel_grid((h, w)))
    resampled, inside = view_geometry.sample_bilinear(jnp.asarray(v["view1"]), coords)
    # Clean: every view-1 pixel used by the bilinear sample comes from the input interior.
    p1 = map_points(v["affine1"].astype(np.float64), np.broadcast_to(_grid(h, w), (6, h * w, 2)))
    clean1 = ((p1[..., 0] >= 0) & (p1[..., 0] <= ww - 1) & (p1[..., 1] >= 0) & (p1[..., 1] <= hh - 1)).reshape(6, h, w, 1)
    frac, _ = view_geometry.sample_bilinear(jnp.asarray(clean1, jnp.float32), coords)
    ok = np.asarray(frac[..., 0] > 1 - 1e-5)
    assert bool(np.asarray(inside).all()) and ok.mean() > 0.4
    np.testing.assert_allclose(np.asarray(resampled)[ok], v["view2"][ok], atol=1e-4)
    # On a smooth natural-like image the double resampling stays close to the single one.
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:hh, :ww] / 40.0
    smooth = 0.5 + 0.2 * np.sin(2 * xx[None, :, :, None] + rng.uniform(0, 6, (6, 1, 1, 3))) * np.cos(1.5 * yy)[None, :, :, None]
    sv = views.make_views(jax.random.PRNGKey(3), smooth.astype(np.float32), flow, valid, (h, w), photometric=None)
    resampled, _ = view_geometry.sample_bilinear(sv["view1"], coords)
    np.testing.assert_allclose(np.asarray(resampled)[ok], np.asarray(sv["view2"])[ok], atol=2e-3)


@pytest.mark.parametrize("out_hw", [(24, 24), (28, 12), (5, 7)])
def test_every_view2_pixel_lies_inside_view1(out_hw):
    h, w = out_hw
    keys = jax.random.split(jax.random.PRNGKey(5), 3000)
    aff = np.asarray(jax.jit(jax.vmap(lambda k: views.sample_g2(k, out_hw, max_zoom=1.5)))(keys), np.float64)
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    p = map_points(aff, np.broadcast_to(corners, (len(aff), 4, 2)))
    tol = 1e-3
    assert p[..., 0].min() >= -0.5 - tol and p[..., 0].max() <= w - 0.5 + tol
    assert p[..., 1].min() >= -0.5 - tol and p[..., 1].max() <= h - 0.5 + tol
    zoom = 1 / np.sqrt(np.abs(np.linalg.det(aff[:, :, :2])))
    assert zoom.min() >= 1 - 1e-5
    if h == w:
        assert zoom.max() <= 1.5 + 1e-5  # square views never need more than √2
    angles = np.degrees(np.arctan2(aff[:, 1, 0], aff[:, 1, 1]))  # sin θ, cos θ (flip-free row)
    assert angles.min() < -170 and angles.max() > 170 and abs(np.mean(np.abs(angles)) - 90) < 5
    flips = np.linalg.det(aff[:, :, :2]) < 0
    assert 0.45 < flips.mean() < 0.55
    # The same constraint seen through make_views: every view-2 representation centre (4j, 4i:
    # all lie in view 2's image, whatever the size) lands inside view 1.
    img = np.random.default_rng(0).random((32, h + 3, w + 5, 3)).astype(np.float32)
    flow, valid = _flow_and_valid(32, h + 3, w + 5)
    v = views.make_views(jax.random.PRNGKey(6), img, flow, valid, out_hw, stride=4)
    g = np.asarray(v["grid2to1"])
    hr, wr = -(-h // 4), -(-w // 4)
    assert g.shape == (32, hr, wr, 2)
    c3 = np.asarray(v["coords3"]).reshape(hr, wr, 2)
    assert (c3[..., 0] <= w - 1).all() and (c3[..., 1] <= h - 1).all()
    p1 = 4 * g  # in view-1 image pixels
    assert p1[..., 0].min() >= -0.5 - tol and p1[..., 1].min() >= -0.5 - tol
    assert p1[..., 0].max() <= w - 0.5 + tol and p1[..., 1].max() <= h - 0.5 + tol


def test_g1_zoom_range_and_no_holes_without_rotation():
    keys = jax.random.split(jax.random.PRNGKey(7), 2000)
    aff = np.asarray(jax.jit(jax.vmap(lambda k: views.sample_g1(k, (30, 50), (16, 16), max_zoom=1.5, rotate=False)))(keys), np.float64)
    zoom = (30 / 16) / np.sqrt(np.abs(np.linalg.det(aff[:, :, :2])))  # base scale min(30/16, 50/16)
    assert zoom.min() >= 1 - 1e-5 and zoom.max() <= 1.5 + 1e-5 and zoom.max() > 1.45
    p = map_points(aff, np.broadcast_to(np.array([[-0.5, -0.5], [15.5, 15.5]]), (2000, 2, 2)))
    assert p[..., 0].min() >= -0.5 - 1e-3 and p[..., 0].max() <= 49.5 + 1e-3
    assert p[..., 1].min() >= -0.5 - 1e-3 and p[..., 1].max() <= 29.5 + 1e-3
    assert p[..., 0].min() < 0.5 and p[..., 0].max() > 48.5  # crops reach both edges


def test_grid2to1_moves_a_marker_like_the_image():
    # G2 = rotation by 90° (and a flip) about the centre: view 2 = rot90(view 1). On a grid
    # symmetric about the frame's centre (cells centred at 4i + 1.5, a 4×4-block backbone)
    # the representation maps must satisfy z3 = rot90(z1) exactly, marker included.
    out_hw, stride = (32, 32), 4
    z1 = np.zeros((2, 8, 8, 2), np.float32)
    z1[:, 1, 6, 0] = 1.0  # the marker
    z1[..., 1] = np.random.default_rng(8).random((2, 8, 8))
    for flip, ref in [(False, np.rot90(z1, 1, axes=(1, 2))), (True, np.rot90(z1, 1, axes=(1, 2))[:, :, ::-1])]:
        a2 = view_geometry.view_affine(90.0, 1.0, flip, (15.5, 15.5), out_hw)[None].repeat(2, 0)
        grid2to1, points1 = view_geometry.representation_map(a2, out_hw, stride, grid_offset=1.5)
        z3, inside = view_geometry.sample_bilinear(z1, grid2to1)
        assert bool(inside.all())
        np.testing.assert_allclose(z3, ref, atol=1e-5)
        i, j = np.unravel_index(np.argmax(np.asarray(z3[0, ..., 0])), (8, 8))
        assert (i, j) == ((1, 1) if not flip else (1, 6))  # rot90 moves (1, 6) to (1, 1); the flip mirrors it
        np.testing.assert_allclose(points1, 4 * np.asarray(grid2to1) + 1.5, atol=1e-5)
        # SegFormer's grid (cells centred at 4i, default): the receptive centres map by G2 itself.
        grid2to1, points1 = view_geometry.representation_map(a2, out_hw, stride)
        want = map_points(np.asarray(a2, np.float64), np.broadcast_to(4 * _grid(8, 8), (2, 64, 2))).reshape(2, 8, 8, 2)
        np.testing.assert_allclose(points1, want, atol=1e-4)
        np.testing.assert_allclose(4 * np.asarray(grid2to1), want, atol=1e-4)


def _pool(a, offset):
    """A stride-4 "backbone" on (B, h, w, C): offset 1.5 = means of 4×4 blocks (cells centred
    at 4i + 1.5); offset 0 = means of the 5×5 windows centred on 4i (zero-padded beyond the
    border, cells centred at 4i like SegFormer's). On linear images each cell is the image's
    value at its centre wherever its window is clean."""
    a = np.asarray(a, np.float64)
    b, h, w = a.shape[:3]
    if offset == 1.5:
        return a.reshape(b, h // 4, 4, w // 4, 4, -1).mean(axis=(2, 4))
    p = np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0)))
    out = np.zeros((b, h // 4, w // 4, a.shape[-1]))
    for dy in range(5):
        for dx in range(5):
            out += p[:, dy:dy + h:4, dx:dx + w:4] / 25.0
    return out


@pytest.mark.parametrize("offset", [0.0, 1.5])
def test_grid2to1_and_flow3_with_an_average_pooling_backbone(offset):
    """z = an average-pooling "backbone" whose cells are centred at 4i + offset (``_pool``):
    with ``grid_offset=offset``, on linear images and flows z3 = sample(z1, grid2to1) must
    equal z2, and flow3 the input flow at the same points; the other offset breaks it."""
    (hh, ww), (h, w), b = (40, 48), (24, 24), 8
    v = _random_ramp_views(seed=9, b=b, in_hw=(hh, ww), out_hw=(h, w), grid_offset=offset)[-1]
    z1, z2 = _pool(v["view1"], offset), _pool(v["view2"], offset)
    z3, _ = view_geometry.sample_bilinear(z1, v["grid2to1"])
    # Exactness needs linear z1, z2: every pooled pixel from the input interior.
    pix = _grid(h, w)

    def clean(aff):
        p = map_points(aff.astype(np.float64), np.broadcast_to(pix, (b, h * w, 2)))
        c = (p[..., 0] >= 0) & (p[..., 0] <= ww - 1) & (p[..., 1] >= 0) & (p[..., 1] <= hh - 1)
        return c.reshape(b, h, w, 1)

    c1 = _pool(clean(v["affine1"]).astype(np.float32), offset) > 1 - 1e-9
    c2 = _pool(clean(v["affine12"]).astype(np.float32), offset)[..., 0] > 1 - 1e-9
    frac, _ = view_geometry.sample_bilinear(c1.astype(np.float32), v["grid2to1"])
    g = v["grid2to1"]
    ok = (np.asarray(frac)[..., 0] > 1 - 1e-5) & c2 & (g.min(-1) >= 0) & (g[..., 0] <= w // 4 - 1) & (g[..., 1] <= h // 4 - 1)
    assert ok.mean() > 0.2
    np.testing.assert_allclose(np.asarray(z3)[ok], z2[ok], atol=1e-4)
    # The other grid offset breaks it for rotated/zoomed views.
    wrong, _ = view_geometry.representation_map(jnp.asarray(v["affine2"]), (h, w), 4, grid_offset=1.5 - offset)
    z3w, _ = view_geometry.sample_bilinear(z1, wrong)
    assert np.abs(np.asarray(z3w)[ok] - z2[ok]).max() > 1e-3
    # flow3 = input flow at affine12(centre) where the view-1 pixels around it are clean.
    rep = np.asarray(v["coords3"], np.float64)
    np.testing.assert_allclose(rep.reshape(h // 4, w // 4, 2), 4 * _grid(h // 4, w // 4).reshape(h // 4, w // 4, 2) + offset)
    p = map_points(v["affine12"].astype(np.float64), np.broadcast_to(rep, (b, len(rep), 2))).reshape(b, h // 4, w // 4, 2)
    want = np.stack([0.1 * p[..., 0] + 0.2 * p[..., 1] + 1.0, -0.05 * p[..., 0] + 0.3 * p[..., 1] - 2.0], -1)
    frac1, _ = view_geometry.sample_bilinear(clean(v["affine1"]).astype(np.float32), jnp.asarray(4 * g + offset))
    okf = np.asarray(frac1)[..., 0] > 1 - 1e-5
    assert okf.mean() > 0.5
    np.testing.assert_allclose(v["flow3"][okf], want[okf], atol=2e-3)


def test_valid_masks_holes_and_flow_vector_rotation():
    (hh, ww), (h, w), b = (20, 20), (16, 16), 8
    img = np.random.default_rng(10).random((b, hh, ww, 3)).astype(np.float32)
    flow = np.broadcast_to(np.array([1.0, 0.5], np.float32), (b, hh, ww, 2))
    valid = np.ones((b, hh, ww), bool)
    v = views.make_views(jax.random.PRNGKey(11), img, flow, valid, (h, w))
    holes = ~np.asarray(v["valid1"])
    assert holes.any()  # rotations leave holes even when the whole frame is valid
    assert np.all(np.asarray(v["view1"])[holes] == 0) and np.all(np.asarray(v["flow1"])[holes] == 0)
    np.testing.assert_allclose(np.asarray(v["flow1"])[~holes], np.broadcast_to([1.0, 0.5], ((~holes).sum(), 2)))
    # valid3 implies the view-1 pixel nearest to the point is valid.
    _, circle = _flow_and_valid(b, hh, ww)
    v = views.make_views(jax.random.PRNGKey(11), img, flow, circle & (np.arange(ww) < 12), (h, w))
    p = 4 * np.asarray(v["grid2to1"]) + view_geometry.RECEPTIVE_OFFSET
    xi, yi = np.floor(p[..., 0] + 0.5).astype(int).clip(0, w - 1), np.floor(p[..., 1] + 0.5).astype(int).clip(0, h - 1)
    near = np.asarray(v["valid1"])[np.arange(b)[:, None, None], yi, xi]
    assert np.all(near[np.asarray(v["valid3"])]) and (~np.asarray(v["valid3"])).any() and np.asarray(v["valid3"]).any()
    # rotate_flow_vectors: a translation d of the scene is A1_lin⁻¹ d in view coordinates.
    r = views.make_views(jax.random.PRNGKey(11), img, flow, valid, (h, w), rotate_flow_vectors=True)
    want = np.einsum("bij,j->bi", np.linalg.inv(np.asarray(r["affine1"])[:, :, :2]), [1.0, 0.5])
    got = np.asarray(r["flow1"])
    for k in range(b):
        np.testing.assert_allclose(got[k][~holes[k]], np.broadcast_to(want[k], ((~holes[k]).sum(), 2)), atol=1e-4)
    assert np.abs(want - [1.0, 0.5]).max() > 0.1


def test_cells_bordering_rotation_holes_are_left_out():
    """valid3 judges a representation pixel at its receptive centre (4j, 4i) and its support
    (3 px around it), in view 2 and in every view-1 cell z3 reads: the former rule (a point at
    4i + 1.5 with its four view-1 pixels valid) counted cells whose centre lies in a hole."""
    (hh, ww), (h, w), b = (32, 32), (32, 32), 64
    img = np.random.default_rng(22).random((b, hh, ww, 3)).astype(np.float32)
    flow = np.broadcast_to(np.array([1.0, 0.5], np.float32), (b, hh, ww, 2))
    v = jax.tree.map(np.asarray, views.make_views(jax.random.PRNGKey(23), img, flow, np.ones((b, hh, ww), bool), (h, w)))
    assert (~v["valid2"]).any()  # whole frames valid: the holes are the rotations'
    rep = np.asarray(view_geometry.representation_grid((h, w), 4))
    x, y = rep[..., 0].astype(int), rep[..., 1].astype(int)
    centre2 = v["valid2"][:, y, x]
    support2 = support_valid(v["valid2"], x, y, 3)
    support1 = support_valid(v["valid1"], x, y, 3)
    np.testing.assert_array_equal(v["valid_rep2"], support2)
    np.testing.assert_array_equal(v["valid_rep1"], support1)
    v3 = v["valid3"]
    assert 0.5 < v3.mean() < 1.0
    assert not (v3 & ~support2).any()
    # Every view-1 representation pixel that z3's bilinear sample reads (weight > 1e-4) is valid.
    g = v["grid2to1"]
    lo = np.floor(g)
    frac = g - lo
    for dx in (0, 1):
        for dy in (0, 1):
            weight = np.abs(1 - dx - frac[..., 0]) * np.abs(1 - dy - frac[..., 1])
            j1 = np.clip(lo[..., 0] + dx, 0, w // 4 - 1).astype(int)
            i1 = np.clip(lo[..., 1] + dy, 0, h // 4 - 1).astype(int)
            read = v3 & (weight > 1e-4)
            assert support1[np.arange(b)[:, None, None], i1, j1][read].all()
    # The former rule counted cells whose receptive centre lies in a hole; they are out now.
    _, old_points = view_geometry.representation_map(jnp.asarray(v["affine2"]), (h, w), 4, grid_offset=1.5)
    frac, _ = view_geometry.sample_bilinear(jnp.asarray(v["valid1"], jnp.float32)[..., None], old_points)
    old3 = np.asarray(frac)[..., 0] > 1 - 1e-4
    in_hole = old3 & ~centre2
    assert in_hole.sum() >= 3 and not (v3 & in_hole).any()
    # So are cells with a valid centre whose support reaches into a hole.
    bordering = centre2 & ~support2
    assert bordering.sum() >= 10 and not (v3 & bordering).any()


# ------------------------------------------------------------------------------ jax behaviour
def test_jit_vmap_and_determinism():
    b, hh, ww = 2, 12, 14
    rng = np.random.default_rng(14)
    img = rng.random((b, hh, ww, 3)).astype(np.float32)
    flow, valid = _flow_and_valid(b, hh, ww)
    fn = functools.partial(views.make_views, out_size=(8, 8), stride=4)
    key = jax.random.PRNGKey(3)
    eager = fn(key, img, flow, valid)
    jitted = jax.jit(fn)(key, img, flow, valid)
    for name in eager:
        np.testing.assert_allclose(np.asarray(jitted[name], np.float32), np.asarray(eager[name], np.float32), atol=1e-5, err_msg=name)
    again = fn(key, img, flow, valid)
    for name in eager:
        np.testing.assert_array_equal(again[name], eager[name])
    other = fn(jax.random.PRNGKey(4), img, flow, valid)
    assert not np.allclose(other["affine1"], eager["affine1"])
    # vmap over an outer axis (e.g. micro-batches) = a Python loop.
    keys = jax.random.split(key, 3)
    imgs = np.stack([img, img[::-1], img * 0.5])
    batched = jax.vmap(fn, in_axes=(0, 0, None, None))(keys, imgs, flow, valid)
    for n in range(3):
        single = fn(keys[n], imgs[n], flow, valid)
        np.testing.assert_allclose(batched["view2"][n], single["view2"], atol=1e-5)
        np.testing.assert_array_equal(batched["valid3"][n], single["valid3"])


def test_bad_inputs_raise():
    img = np.zeros((1, 8, 8, 3), np.float32)
    flow = np.zeros((1, 8, 8, 2), np.float32)
    valid = np.ones((1, 8, 8), bool)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="image"):
        views.make_views(key, img[..., :2], flow, valid, (8, 8))
    with pytest.raises(ValueError, match="floating"):
        views.make_views(key, (img * 255).astype(np.uint8), flow, valid, (8, 8))
    with pytest.raises(ValueError, match="flow"):
        views.make_views(key, img, flow[..., :1], valid, (8, 8))
    with pytest.raises(ValueError, match="valid"):
        views.make_views(key, img, flow, valid[:, :4], (8, 8))
    with pytest.raises(ValueError, match="out_size"):
        views.make_views(key, img, flow, valid, (0, 8))
    with pytest.raises(ValueError, match="stride"):
        views.make_views(key, img, flow, valid, (8, 8), stride=0)
    with pytest.raises(ValueError, match="max_zoom"):
        views.make_views(key, img, flow, valid, (8, 8), max_zoom=0.5)
