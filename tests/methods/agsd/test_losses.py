"""AGSD's anchor loss (Eq. 1, and the code's log form) and semantic diffusion (Eq. 2–4)
against direct numpy computations, their gradients, and that the diffusion loss prefers the
segmentation that follows the features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.methods.agsd.anchor_loss import anchor_loss
from jaxsurg.methods.agsd.semantic_diffusion import MARGINS, l2_normalize, pool, semantic_diffusion_loss


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_anchor_loss_paper_and_code_forms_match_numpy_and_their_gradients():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 7)).astype(np.float32) * 2
    a_pos, a_neg = rng.uniform(size=(2, 3, 5, 7)).astype(np.float32)
    p = _sigmoid(z)
    paper = (-a_pos * p - a_neg * (1 - p)).mean(axis=(1, 2))
    code = 1.5 * (-a_pos * np.log(p)).mean(axis=(1, 2)) + (-a_neg * np.log(1 - p)).mean(axis=(1, 2))
    np.testing.assert_allclose(anchor_loss(jnp.asarray(z), a_pos, a_neg, "paper"), paper, rtol=1e-5)
    np.testing.assert_allclose(anchor_loss(jnp.asarray(z), a_pos, a_neg, "code"), code, rtol=1e-5)
    # d/dz of the paper's form: (a_neg − a_pos)·p(1 − p)/HW: pushes p up where a_pos dominates.
    g = jax.grad(lambda z: anchor_loss(z, a_pos, a_neg, "paper").sum())(jnp.asarray(z))
    np.testing.assert_allclose(g, (a_neg - a_pos) * p * (1 - p) / (5 * 7), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="form"):
        anchor_loss(jnp.asarray(z), a_pos, a_neg, "log")
    with pytest.raises(ValueError, match="one shape"):
        anchor_loss(jnp.asarray(z), a_pos[:, :4], a_neg, "paper")


def _numpy_diffusion(p0, p1, f0, f1, m_fg, m_bg):
    def pooled(p, f):
        fg = (p[..., None] * f).sum((0, 1)) / (p.sum() + 1e-10)
        bg = ((1 - p)[..., None] * f).sum((0, 1)) / ((1 - p).sum() + 1e-10)
        return fg, bg

    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    fg0, bg0 = pooled(p0, f0)
    fg1, bg1 = pooled(p1, f1)
    intra = cos(fg0, bg0) + cos(fg1, bg1)
    return max(intra - 2 * cos(fg0, fg1) + m_fg, 0), max(intra - 2 * cos(bg0, bg1) + m_bg, 0)


def test_semantic_diffusion_matches_numpy_and_prefers_the_segmentation_the_features_support():
    rng = np.random.default_rng(1)
    h, w, d = 8, 10, 6
    # Two frames: an "instrument" block with feature direction u, the rest direction v.
    u, v = np.eye(d)[0], np.eye(d)[1]
    truth = np.zeros((2, h, w), bool)
    truth[0, 2:6, 1:5], truth[1, 2:6, 2:6] = True, True  # it moves one pixel
    f = np.where(truth[..., None], u, v) + 0.3 * rng.normal(size=(2, h, w, d))
    f = np.asarray(l2_normalize(jnp.asarray(f)))
    good = truth.astype(np.float32) * 0.9 + 0.05
    wrong = np.roll(good, 4, axis=2)  # the same shape in the wrong place
    for name, (m_fg, m_bg, w_fg, w_bg) in MARGINS.items():
        l_fg, l_bg = semantic_diffusion_loss(good[:1], good[1:], f[:1], f[1:], name)
        ref_fg, ref_bg = _numpy_diffusion(good[0], good[1], f[0], f[1], m_fg, m_bg)
        np.testing.assert_allclose([float(l_fg[0]), float(l_bg[0])], [w_fg * ref_fg, w_bg * ref_bg], rtol=1e-4, atol=1e-6)
    good_total = sum(float(t[0]) for t in semantic_diffusion_loss(good[:1], good[1:], f[:1], f[1:]))
    wrong_total = sum(float(t[0]) for t in semantic_diffusion_loss(wrong[:1], wrong[1:], f[:1], f[1:]))
    assert good_total < wrong_total
    # Gradients flow to the predictions only, and are finite.
    g = jax.grad(lambda p: sum(t.sum() for t in semantic_diffusion_loss(p[:1], p[1:], f[:1], f[1:])))(jnp.asarray(wrong))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0
    with pytest.raises(ValueError, match="margins"):
        semantic_diffusion_loss(good[:1], good[1:], f[:1], f[1:], "wide")


def test_pool_normalises_by_the_weights_which_the_cosine_ignores():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=(1, 4, 4)).astype(np.float32)
    f = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    fg, bg = pool(jnp.asarray(p), jnp.asarray(f))
    np.testing.assert_allclose(fg[0], (p[0, ..., None] * f[0]).sum((0, 1)) / p.sum(), rtol=1e-5)
    np.testing.assert_allclose(bg[0], ((1 - p[0])[..., None] * f[0]).sum((0, 1)) / (1 - p).sum(), rtol=1e-5)


def test_pooling_inside_the_field_of_view_ignores_the_border_and_its_gradient():
    rng = np.random.default_rng(4)
    p = rng.uniform(size=(1, 4, 6)).astype(np.float32)
    f = rng.normal(size=(1, 4, 6, 3)).astype(np.float32)
    valid = np.ones((1, 4, 6), np.float32)
    valid[:, :, :2] = 0  # a border on the left
    fg, bg = pool(jnp.asarray(p), jnp.asarray(f), jnp.asarray(valid))
    inner_fg, inner_bg = pool(jnp.asarray(p[:, :, 2:]), jnp.asarray(f[:, :, 2:]))  # the same pixels without a border
    np.testing.assert_allclose(fg, inner_fg, rtol=1e-5)
    np.testing.assert_allclose(bg, inner_bg, rtol=1e-5)
    np.testing.assert_allclose(pool(jnp.asarray(p), jnp.asarray(f), jnp.ones((1, 4, 6)))[0], pool(jnp.asarray(p), jnp.asarray(f))[0], rtol=1e-6)
    f2 = rng.normal(size=(1, 4, 6, 3)).astype(np.float32)
    g = jax.grad(lambda q: sum(t.sum() for t in semantic_diffusion_loss(q, q, jnp.asarray(f), jnp.asarray(f2), "paper", valid, valid)))(jnp.asarray(p))
    assert float(jnp.abs(g[:, :, :2]).max()) == 0.0 and float(jnp.abs(g[:, :, 2:]).max()) > 0  # p on the border is not pushed


def test_the_gradient_stays_finite_when_a_region_pools_nothing():
    """p = 0 everywhere (after the clip of its bicubic resize) pools f_fg = 0: the loss and
    its gradient must stay finite (a norm's gradient at 0 is NaN)."""
    rng = np.random.default_rng(3)
    f = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(2, 4, 4, 5)))))
    for p in (np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 4), np.float32)):
        def total(p):
            return sum(t.sum() for t in semantic_diffusion_loss(p[:1], p[1:], f[:1], f[1:]))

        assert np.isfinite(float(total(jnp.asarray(p))))
        assert np.isfinite(np.asarray(jax.grad(total)(jnp.asarray(p)))).all()
