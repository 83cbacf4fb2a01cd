"""Perceptual (feature reconstruction) and Gram/style losses: hand-computed cases, a PyTorch
reference, finite-difference gradients, and the loss through VGG16Features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.losses.perceptual import gram_matrix, perceptual_loss, style_loss
from jaxsurg.models.vgg16 import VGG16Features

LAYERS = ("relu1_2", "relu2_2")


def _features(seed, shapes=((2, 6, 5, 4), (2, 3, 2, 7))):
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(0, 2, s).astype(np.float32) for name, s in zip(LAYERS, shapes)}


def test_gram_matrix_hand_computed():
    # one image, H=1, W=2, C=2: pixels (1, 2) and (3, 4)
    f = jnp.asarray([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = np.asarray([[1 + 9, 2 + 12], [2 + 12, 4 + 16]], np.float32) / (1 * 2 * 2)
    np.testing.assert_allclose(gram_matrix(f), expected[None], rtol=1e-6)


def test_gram_matrix_properties():
    f = _features(0)["relu1_2"]
    g = np.asarray(gram_matrix(f))
    assert g.shape == (2, 4, 4) and g.dtype == np.float32
    np.testing.assert_allclose(g, g.transpose(0, 2, 1), rtol=1e-6)
    assert np.all(np.linalg.eigvalsh(g.astype(np.float64)) > -1e-6)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        gram_matrix(jnp.zeros((3, 4, 5)))


def test_perceptual_loss_hand_computed():
    a = {"x": jnp.asarray([[[[1.0, -2.0]]]]), "y": jnp.zeros((1, 2, 1, 1))}
    b = {"x": jnp.asarray([[[[0.0, 1.0]]]]), "y": jnp.asarray([[[[2.0]], [[0.0]]]])}
    # l1: x: (1 + 3)/2 = 2; y: (2 + 0)/2 = 1.  mse: x: (1 + 9)/2 = 5; y: (4 + 0)/2 = 2.
    assert float(perceptual_loss(a, b, layers=("x", "y"))) == pytest.approx(3.0)
    assert float(perceptual_loss(a, b, layers=("x", "y"), distance="mse")) == pytest.approx(7.0)
    assert float(perceptual_loss(a, b, layers=("x", "y"), weights=(0.5, 3.0))) == pytest.approx(4.0)
    assert float(perceptual_loss(a, b, layers="y", distance="mse", weights={"y": 0.25})) == pytest.approx(0.5)


def test_zero_for_identical_positive_otherwise():
    a, b = _features(1), _features(2)
    for distance in ("l1", "mse"):
        assert float(perceptual_loss(a, a, layers=LAYERS, distance=distance)) == 0.0
        assert float(perceptual_loss(a, b, layers=LAYERS, distance=distance)) > 0.0
    assert float(style_loss(a, a, LAYERS)) == 0.0
    assert float(style_loss(a, b, LAYERS)) > 0.0


def test_gram_and_style_match_torch_reference():
    torch = pytest.importorskip("torch")

    def torch_gram(x):  # NCHW, the usual PyTorch style-loss code
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        return flat.bmm(flat.transpose(1, 2)) / (c * h * w)

    a, b = _features(3), _features(4)
    weights = (1.0, 0.3)
    ta = {k: torch.from_numpy(v.transpose(0, 3, 1, 2).copy()).double() for k, v in a.items()}
    tb = {k: torch.from_numpy(v.transpose(0, 3, 1, 2).copy()).double() for k, v in b.items()}
    for name in LAYERS:
        np.testing.assert_allclose(gram_matrix(a[name]), torch_gram(ta[name]).numpy(), rtol=1e-5)
    mse = sum(w * torch.nn.functional.mse_loss(torch_gram(ta[n]), torch_gram(tb[n])) for n, w in zip(LAYERS, weights))
    fro = sum(
        w * ((torch_gram(ta[n]) - torch_gram(tb[n])) ** 2).sum(dim=(1, 2)).mean() for n, w in zip(LAYERS, weights)
    )
    np.testing.assert_allclose(style_loss(a, b, LAYERS, weights=weights), mse.item(), rtol=1e-5)
    np.testing.assert_allclose(style_loss(a, b, LAYERS, weights=weights, reduction="sum"), fro.item(), rtol=1e-5)
    l1 = sum(w * torch.nn.functional.l1_loss(ta[n], tb[n]) for n, w in zip(LAYERS, weights))
    np.testing.assert_allclose(perceptual_loss(a, b, layers=LAYERS, weights=weights), l1.item(), rtol=1e-5)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: perceptual_loss(a, b, layers=LAYERS, distance="mse", weights=(1.0, 2.0)),
        lambda a, b: perceptual_loss(a, b, layers=LAYERS, distance="l1"),
        lambda a, b: style_loss(a, b, LAYERS),
    ],
    ids=["mse", "l1", "style"],
)
def test_gradient_matches_finite_differences(fn):
    a, b = _features(5), _features(6)
    grad = jax.grad(fn)(a, b)
    rng = np.random.default_rng(0)
    for _ in range(3):
        name = LAYERS[rng.integers(2)]
        idx = tuple(int(rng.integers(s)) for s in a[name].shape)
        eps = 1e-2
        plus = {k: v.astype(np.float64).copy() for k, v in a.items()}
        minus = {k: v.astype(np.float64).copy() for k, v in a.items()}
        plus[name][idx] += eps
        minus[name][idx] -= eps
        with jax.enable_x64(True):
            num = (float(fn(plus, b)) - float(fn(minus, b))) / (2 * eps)
        assert np.isfinite(grad[name]).all()
        assert float(grad[name][idx]) == pytest.approx(num, rel=1e-3, abs=1e-6), (name, idx)


def test_loss_through_vgg16_is_jittable_with_finite_input_gradient():
    model = VGG16Features(layers=LAYERS)
    x = np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
    y = np.clip(x + 0.05, 0, 1)
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def loss(x, y):
        feats = model.apply(variables, jnp.concatenate([x, y]))  # one pass for both images
        fa = {k: v[:1] for k, v in feats.items()}
        fb = {k: v[1:] for k, v in feats.items()}
        return perceptual_loss(fa, fb, layers=("relu2_2",), distance="mse") + 1000.0 * style_loss(fa, fb, LAYERS)

    value, g = jax.value_and_grad(loss)(x, y)
    assert np.isfinite(float(value)) and float(value) > 0
    assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)
    # Identical images: zero up to rounding (the two halves of one batched pass may round
    # differently in XLA:CPU's convolutions: 2.6e-16 seen with jax 0.10.2).
    assert abs(float(loss(y, y))) <= 1e-9 * float(value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a, b: perceptual_loss(a, b, layers=LAYERS, distance="l2"), "`distance`"),
        (lambda a, b: perceptual_loss(a, b, layers=("relu3_3",)), "`features_a` has no feature map 'relu3_3'"),
        (lambda a, b: perceptual_loss(a, {"relu1_2": b["relu2_2"]}, layers="relu1_2"), r"features_a has shape \(2, 6, 5, 4\), features_b \(2, 3, 2, 7\)"),
        (lambda a, b: perceptual_loss(a, b, layers=LAYERS, weights=(1.0,)), "`weights` has 1 entries"),
        (lambda a, b: perceptual_loss(a, b, layers=()), "`layers` is empty"),
        (lambda a, b: style_loss(a, b, LAYERS, reduction="max"), "`reduction`"),
        (lambda a, b: style_loss(a, b, LAYERS, weights={"relu1_2": 1.0}), r"no entry for layers \['relu2_2'\]"),
    ],
)
def test_bad_arguments_raise(call, match):
    a, b = _features(0), _features(1)
    with pytest.raises(ValueError, match=match):
        call(a, b)
