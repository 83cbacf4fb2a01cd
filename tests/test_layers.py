"""3×3 convolution formulations of ``jaxsurg.models.layers``: Winograd F(2×2, 3×3) vs PyTorch.

Values and both gradients of ``winograd_conv3x3`` / ``Conv2d`` (winograd and direct) are
compared with ``torch.nn.functional.conv2d`` (padding 1) and its autograd; a NumPy
direct-sum reference checks the Winograd transform matrices independently of torch.
``bias_add`` (the bias of every layer, with its gradient computed as a dot) is checked
against plain addition in both differentiation modes (and through ``Conv2d`` against
PyTorch's bias gradient).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.models.layers import (
    Conv2d,
    ConvReLU,
    conv2d,
    conv3x3_impl,
    winograd_conv3x3,
)


def _numpy_conv3x3(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Direct 'same' cross-correlation in float64: y[n,i,j,o] = Σ xp[n,i+a,j+b,c]·k[a,b,c,o]."""
    n, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, k.shape[-1]))
    for a in range(3):
        for b in range(3):
            y += np.einsum("nhwc,co->nhwo", xp[:, a : a + h, b : b + w], k[a, b].astype(np.float64))
    return y


@pytest.mark.parametrize("shape", [(2, 5, 7, 3, 4), (1, 1, 1, 2, 3), (2, 6, 4, 5, 6), (1, 9, 8, 4, 2)])
def test_winograd_matches_numpy_direct_sum(shape):
    n, h, w, cin, cout = shape  # odd and even H, W (odd sizes pad one extra row/column)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
    k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
    y = np.asarray(jax.jit(winograd_conv3x3)(x, k))
    ref = _numpy_conv3x3(x, k)
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("impl, atol", [("winograd", 1e-4), ("direct", 1e-5)])
@pytest.mark.parametrize("h, w", [(6, 8), (5, 7), (2, 3)])
def test_conv2d_values_and_grads_match_torch(h, w, impl, atol):
    torch = pytest.importorskip("torch")
    cin, cout = 5, 4
    rng = np.random.default_rng(h * 10 + w)
    x = rng.standard_normal((2, h, w, cin), dtype=np.float32)
    layer = torch.nn.Conv2d(cin, cout, 3, padding=1)
    params = {"kernel": layer.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": layer.bias.detach().numpy()}
    g = rng.standard_normal((2, h, w, cout), dtype=np.float32)

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    yt = layer(xt)
    yt.backward(torch.from_numpy(np.ascontiguousarray(g.transpose(0, 3, 1, 2))))

    module = Conv2d(cout, impl=impl)
    y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, jnp.asarray(x))
    dparams, dx = vjp(jnp.asarray(g))

    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dparams["kernel"], layer.weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(dparams["bias"], layer.bias.grad.numpy(), rtol=1e-5, atol=atol)


def test_winograd_kernel_gradient_finite_differences():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((1, 4, 5, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((1, 4, 5, 2)), jnp.float32)
    f = lambda k: jnp.sum(c * winograd_conv3x3(x, k))
    grad = jax.grad(f)(k)
    eps = 1e-2
    for idx in [(0, 0, 0, 0), (1, 2, 1, 0), (2, 1, 0, 1)]:
        e = jnp.zeros_like(k).at[idx].set(eps)
        fd = (f(k + e) - f(k - e)) / (2 * eps)  # f is linear in k: central differences are exact up to rounding
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-3, atol=1e-3)


def test_conv3x3_impl_switches_the_traced_formulation():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 6, 6, 3)), jnp.float32)
    module = ConvReLU(4)
    params = module.init(jax.random.PRNGKey(0), x)
    direct_hlo = jax.jit(module.apply).lower(params, x).as_text()
    with conv3x3_impl("winograd"):
        wino_hlo = jax.jit(module.apply).lower(params, x).as_text()
        wino = jax.jit(module.apply)(params, x)
    assert "convolution" in direct_hlo and "convolution" not in wino_hlo
    np.testing.assert_allclose(wino, module.apply(params, x), rtol=1e-5, atol=1e-5)
    # 1×1 kernels ignore the override; unknown names raise.
    with conv3x3_impl("winograd"):
        assert "convolution" in jax.jit(lambda x, k: conv2d(x, k)).lower(x, jnp.ones((1, 1, 3, 2))).as_text()
    with pytest.raises(ValueError, match="impl"):
        conv3x3_impl("fast")
    with pytest.raises(ValueError, match="impl"):
        conv2d(x, jnp.ones((3, 3, 3, 2)), impl="fast")


def test_winograd_bad_shapes_raise():
    with pytest.raises(ValueError, match="kernel"):
        winograd_conv3x3(jnp.ones((1, 4, 4, 3)), jnp.ones((5, 5, 3, 2)))
    with pytest.raises(ValueError, match="kernel"):
        winograd_conv3x3(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="x"):
        winograd_conv3x3(jnp.ones((4, 4, 3)), jnp.ones((3, 3, 3, 2)))
    with pytest.raises(ValueError, match="kernel"):
        conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 3, 2)))


@pytest.mark.parametrize("k,stride,h,w", [(3, 2, 7, 10), (5, 2, 8, 9), (7, 3, 11, 6)])
def test_strided_conv2d_matches_torch(k, stride, h, w):
    import torch

    conv = torch.nn.Conv2d(3, 4, k, stride=stride, padding=k // 2)
    x = np.random.default_rng(k).standard_normal((2, h, w, 3)).astype(np.float32)
    params = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": conv.bias.detach().numpy()}
    with torch.no_grad():
        ref = conv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    got = Conv2d(4, k, stride=stride).apply({"params": params}, jnp.asarray(x))
    assert got.shape == ref.shape == (2, (h - 1) // stride + 1, (w - 1) // stride + 1, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride-1"):
        conv2d(jnp.asarray(x), jnp.asarray(params["kernel"]), stride=stride, impl="winograd")


def test_bias_add_value_gradients_and_forward_mode_match_plain_addition():
    from jaxsurg.models.layers import bias_add

    rng = np.random.default_rng(11)
    y = jnp.asarray(rng.standard_normal((3, 5, 7, 6), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((6,), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((3, 5, 7, 6), dtype=np.float32))
    np.testing.assert_array_equal(bias_add(y, b), y + b)

    def loss(f):
        return lambda y, b: jnp.sum(jnp.tanh(f(y, b)) * w)

    dy, db = jax.jit(jax.grad(loss(bias_add), argnums=(0, 1)))(y, b)
    dy_ref, db_ref = jax.grad(loss(lambda y, b: y + b), argnums=(0, 1))(y, b)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-5)
    # the bias gradient is the sum of the output gradient over every leading axis (float64 check)
    g = np.asarray(w, np.float64) * (1 - np.tanh(np.asarray(y + b, np.float64)) ** 2)
    np.testing.assert_allclose(db, g.sum((0, 1, 2)), rtol=1e-5)
    # forward mode (jvp) through the custom rule: d(y + b) = dy + db broadcast
    ty, tb = jnp.ones_like(y), jnp.arange(6, dtype=jnp.float32)
    out, tangent = jax.jvp(bias_add, (y, b), (ty, tb))
    np.testing.assert_array_equal(out, y + b)
    np.testing.assert_allclose(tangent, ty + tb, rtol=1e-6)

