"""Lovász-Softmax / hinge against a straightforward PyTorch version of Berman's algorithm.

The reference removes ignored pixels with boolean indexing (dynamic shapes), sorts the
errors in decreasing order, computes the Jaccard increments with cumulative sums and takes
the dot product; gradients come from torch autograd.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxsurg.losses import lovasz

# ----------------------------------------------------------------------------- reference


def _ref_jaccard_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(gt_sorted) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def _ref_softmax_flat(probs: torch.Tensor, labels: torch.Tensor, classes) -> torch.Tensor:
    """probs (P, C) and labels (P,) of VALID pixels only."""
    if probs.numel() == 0:
        return probs.sum() * 0.0
    num_classes = probs.shape[1]
    chosen = range(num_classes) if classes in ("all", "present") else classes
    losses = []
    for c in chosen:
        fg = (labels == c).double()
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _ref_jaccard_grad(fg[perm])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def ref_lovasz_softmax(probs, labels, ignore=255, classes="present", per_image=False):
    """Returns (loss, d loss / d probs) in float64."""
    p = torch.tensor(np.asarray(probs), dtype=torch.float64, requires_grad=True)
    y = torch.tensor(np.asarray(labels), dtype=torch.int64)
    c = p.shape[-1]

    def flat(pp, yy):
        pp, yy = pp.reshape(-1, c), yy.reshape(-1)
        keep = yy != ignore
        return _ref_softmax_flat(pp[keep], yy[keep], classes)

    if per_image:
        loss = torch.stack([flat(p[i], y[i]) for i in range(p.shape[0])]).mean()
    else:
        loss = flat(p, y)
    loss.backward()
    return loss.item(), p.grad.numpy()


def ref_lovasz_hinge(logits, labels, ignore=255, per_image=True):
    z = torch.tensor(np.asarray(logits), dtype=torch.float64, requires_grad=True)
    y = torch.tensor(np.asarray(labels), dtype=torch.int64)

    def flat(zz, yy):
        zz, yy = zz.reshape(-1), yy.reshape(-1)
        keep = yy != ignore
        zz, yy = zz[keep], yy[keep].double()
        if zz.numel() == 0:
            return zz.sum() * 0.0
        errors = 1.0 - zz * (2.0 * yy - 1.0)
        errors_sorted, perm = torch.sort(errors, descending=True)
        return torch.dot(torch.relu(errors_sorted), _ref_jaccard_grad(yy[perm]))

    if per_image:
        loss = torch.stack([flat(z[i], y[i]) for i in range(z.shape[0])]).mean()
    else:
        loss = flat(z, y)
    loss.backward()
    return loss.item(), z.grad.numpy()


def _random_case(seed, b=2, h=3, w=5, c=4, absent=(2,), ignore_frac=0.25):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, h, w, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    present = [k for k in range(c) if k not in absent]
    labels = rng.choice(present, size=(b, h, w))
    labels[rng.random((b, h, w)) < ignore_frac] = 255
    return probs.astype(np.float32), labels.astype(np.int32)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", (0, 2)])
def test_lovasz_softmax_matches_reference_value_and_gradient(per_image, classes):
    probs, labels = _random_case(0)
    # Second image: one class only in the valid pixels -> per-image 'present' differs.
    labels[1] = np.where(labels[1] == 255, 255, 1)
    ref_val, ref_grad = ref_lovasz_softmax(probs, labels, classes=classes, per_image=per_image)
    fn = lambda p: lovasz.lovasz_softmax(p, jnp.asarray(labels), classes=classes, per_image=per_image)
    val, grad = jax.value_and_grad(fn)(jnp.asarray(probs))
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
    # Ignored pixels receive exactly zero gradient.
    assert np.all(np.asarray(grad)[labels == 255] == 0)


def test_ignored_pixels_do_not_change_value_or_gradient():
    probs, labels = _random_case(1, ignore_frac=0.4)
    fn = jax.jit(jax.value_and_grad(lambda p, y: lovasz.lovasz_softmax(p, y)))
    v1, g1 = fn(jnp.asarray(probs), jnp.asarray(labels))
    # Arbitrary (even extreme) probabilities at ignored pixels change nothing.
    rng = np.random.default_rng(5)
    probs2 = probs.copy()
    ign = labels == 255
    probs2[ign] = rng.dirichlet(np.ones(4) * 0.1, size=ign.sum()).astype(np.float32)
    v2, g2 = fn(jnp.asarray(probs2), jnp.asarray(labels))
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g1)[~ign], np.asarray(g2)[~ign], rtol=1e-6, atol=1e-7)
    # Same as dropping the ignored pixels: the valid pixels alone, as one "image".
    valid = ~ign
    v3 = lovasz.lovasz_softmax(jnp.asarray(probs[valid])[None, None], jnp.asarray(labels[valid])[None, None])
    np.testing.assert_allclose(v1, v3, rtol=1e-5)


def test_lovasz_softmax_hand_computed():
    # 4 valid pixels + 1 ignored, 2 classes. p(class 1) = 0.9, 0.4, 0.3, 0.2; labels 1, 1, 0, 0.
    # Class 1: errors 0.1, 0.6, 0.3, 0.2; sorted 0.6(fg) 0.3 0.2 0.1(fg); gts = 2,
    #   I = 1, 1, 1, 0; U = 2, 3, 4, 4; J = 1/2, 2/3, 3/4, 1; g = 1/2, 1/6, 1/12, 1/4
    #   loss1 = 0.3 + 0.05 + 0.2/12 + 0.025 = 0.3916667.
    # Class 0: errors equal; sorted 0.6 0.3(fg) 0.2(fg) 0.1; I = 2, 1, 0, 0; U = 3, 3, 3, 4;
    #   J = 1/3, 2/3, 1, 1; g = 1/3, 1/3, 1/3, 0; loss0 = 0.2 + 0.1 + 0.2/3 = 0.3666667.
    p1 = np.array([0.9, 0.4, 0.3, 0.2, 0.99], np.float32)
    probs = np.stack([1 - p1, p1], -1)[None, None]
    labels = np.array([[[1, 1, 0, 0, 255]]], np.int32)
    expected = (0.3 + 0.05 + 0.2 / 12 + 0.025 + 0.2 + 0.1 + 0.2 / 3) / 2
    np.testing.assert_allclose(lovasz.lovasz_softmax(jnp.asarray(probs), jnp.asarray(labels)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        lovasz.lovasz_softmax_binary(jnp.asarray(p1)[None, None], jnp.asarray(labels)), expected, rtol=1e-6
    )
    fg_only = 0.3 + 0.05 + 0.2 / 12 + 0.025
    np.testing.assert_allclose(
        lovasz.lovasz_softmax_binary(jnp.asarray(p1)[None, None], jnp.asarray(labels), classes=(1,)), fg_only, rtol=1e-6
    )


def test_perfect_prediction_and_empty_cases_give_zero():
    labels = np.array([[[0, 1, 2], [2, 255, 1]]], np.int32)
    probs = np.eye(3, dtype=np.float32)[np.where(labels == 255, 0, labels)]
    for classes in ("present", "all"):
        for per_image in (False, True):
            assert float(lovasz.lovasz_softmax(jnp.asarray(probs), jnp.asarray(labels), classes=classes, per_image=per_image)) == 0.0
    all_ignored = np.full_like(labels, 255)
    v, g = jax.value_and_grad(lambda p: lovasz.lovasz_softmax(p, jnp.asarray(all_ignored)))(jnp.asarray(probs))
    assert float(v) == 0.0 and np.all(np.asarray(g) == 0)
    # Perfect binary hinge: margins >= 1 everywhere.
    y = np.array([[[0, 1], [1, 255]]], np.int32)
    assert float(lovasz.lovasz_hinge(jnp.asarray(np.where(y == 1, 2.0, -2.0)), jnp.asarray(y))) == 0.0


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_hinge_matches_reference(per_image):
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(3, 4, 4)) * 1.5).astype(np.float32)
    labels = rng.integers(0, 2, size=(3, 4, 4)).astype(np.int32)
    labels[rng.random((3, 4, 4)) < 0.3] = 255
    labels[2] = 255  # an image with no valid pixel contributes 0 but counts in the mean
    ref_val, ref_grad = ref_lovasz_hinge(logits, labels, per_image=per_image)
    val, grad = jax.value_and_grad(lambda z: lovasz.lovasz_hinge(z, jnp.asarray(labels), per_image=per_image))(
        jnp.asarray(logits)
    )
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
    # (B, H, W, 1) is accepted too.
    np.testing.assert_allclose(
        lovasz.lovasz_hinge(jnp.asarray(logits)[..., None], jnp.asarray(labels), per_image=per_image), val, rtol=1e-6
    )


def test_binary_softmax_matches_two_channel_reference_and_jit():
    rng = np.random.default_rng(4)
    p = rng.random((2, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=(2, 3, 4)).astype(np.int32)
    labels[0, 0] = 255
    ref_val, _ = ref_lovasz_softmax(np.stack([1 - p, p], -1), labels, per_image=True)
    f = jax.jit(lambda q, y: lovasz.lovasz_softmax_binary(q, y, per_image=True))
    np.testing.assert_allclose(f(jnp.asarray(p), jnp.asarray(labels)), ref_val, rtol=1e-5)


def test_finite_difference_gradient():
    probs, labels = _random_case(7, b=1, h=2, w=4, c=3, absent=())
    x0 = jnp.asarray(probs)
    fn = lambda p: lovasz.lovasz_softmax(p, jnp.asarray(labels), classes="all")
    g = np.asarray(jax.grad(fn)(x0))
    direction = np.random.default_rng(0).normal(size=probs.shape).astype(np.float32)
    eps = 1e-3  # small enough not to reorder the (distinct) errors
    fd = (float(fn(x0 + eps * direction)) - float(fn(x0 - eps * direction))) / (2 * eps)
    np.testing.assert_allclose(fd, np.sum(g * direction), rtol=1e-3, atol=1e-4)


def test_bad_inputs_raise():
    probs = jnp.ones((1, 2, 2, 3)) / 3
    with pytest.raises(ValueError, match="labels must have shape"):
        lovasz.lovasz_softmax(probs, jnp.zeros((1, 2, 3), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        lovasz.lovasz_softmax(probs, jnp.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="classes"):
        lovasz.lovasz_softmax(probs, jnp.zeros((1, 2, 2), jnp.int32), classes="some")
    with pytest.raises(ValueError, match="classes"):
        lovasz.lovasz_softmax(probs, jnp.zeros((1, 2, 2), jnp.int32), classes=(3,))
    with pytest.raises(ValueError, match="probs must be"):
        lovasz.lovasz_softmax(probs[0], jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="logits must be"):
        lovasz.lovasz_hinge(jnp.ones((1, 2, 2, 2)), jnp.zeros((1, 2, 2), jnp.int32))
