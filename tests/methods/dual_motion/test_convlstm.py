"""Dual MF★'s networks (Sec. 2.3): the ConvLSTM cell against the usual PyTorch cell (torch
is used for testing only), the scanned stack, U-Net11 with a ConvLSTM bottleneck and the
labels of its two learning rates."""

from __future__ import annotations

import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsurg.methods.dual_motion.convlstm import ConvLSTM, ConvLSTMCell, UNet11ConvLSTM, param_labels
from jaxsurg.models import UNet11
from jaxsurg.models.unet11 import unet11_layers

from dmf_helpers import (  # tests/methods/dual_motion/dmf_helpers.py
    _assert_close, _nchw, _nhwc, _random_params, _torch,
)


# ----------------------------------------------------------------------------- ConvLSTM


def test_convlstm_cell_matches_torch():
    torch = _torch()
    torch.manual_seed(8)
    cin, feat = 3, 4
    conv = torch.nn.Conv2d(cin + feat, 4 * feat, 3, padding=1)
    rng = np.random.default_rng(8)
    x, h, c = (rng.standard_normal((2, 5, 6, n), dtype=np.float32) for n in (cin, feat, feat))
    with torch.no_grad():
        z = conv(torch.cat([_nchw(x), _nchw(h)], 1))
        i, f, o, g = torch.split(z, feat, 1)
        c_ref = torch.sigmoid(f) * _nchw(c) + torch.sigmoid(i) * torch.tanh(g)
        h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    params = {"conv": {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": conv.bias.detach().numpy()}}
    (h1, c1), out = ConvLSTMCell(feat).apply({"params": params}, (jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    np.testing.assert_allclose(c1, _nhwc(c_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h1, _nhwc(h_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, h1)
    with pytest.raises(ValueError, match="carry"):
        ConvLSTMCell(feat).apply({"params": params}, (jnp.asarray(h[..., :2]), jnp.asarray(c)), jnp.asarray(x))


def test_convlstm_scan_equals_python_loop_and_gradients():
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.standard_normal((2, 4, 6, 5, 3), dtype=np.float32))
    model = ConvLSTM(5, kernel_size=3, num_layers=2)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert set(params) == {"layer0", "layer1"}
    assert params["layer1"]["conv"]["kernel"].shape == (3, 3, 10, 20)
    out = jax.jit(model.apply)({"params": params}, x)
    assert out.shape == (2, 4, 6, 5, 5) and out.dtype == jnp.float32

    seq = x
    for layer in ("layer0", "layer1"):
        carry, hs = ConvLSTMCell.zero_carry((2, 6, 5), 5), []
        for t in range(4):
            carry, h = ConvLSTMCell(5).apply({"params": params[layer]}, carry, seq[:, t])
            hs.append(h)
        seq = jnp.stack(hs, 1)
    np.testing.assert_allclose(out, seq, rtol=1e-5, atol=1e-6)

    # Gradient: jit, finite, and equal to a central finite difference along a random direction.
    w = jnp.asarray(rng.standard_normal(out.shape, dtype=np.float32))
    loss = lambda p: jnp.sum(model.apply({"params": p}, x) * w)
    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape, dtype=np.float32)), params)
    eps = 1e-2
    plus = loss(jax.tree.map(lambda p, d: p + eps * d, params, direction))
    minus = loss(jax.tree.map(lambda p, d: p - eps * d, params, direction))
    fd = (plus - minus) / (2 * eps)
    analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(analytic), float(fd), rtol=2e-2)

    with pytest.raises(ValueError, match=re.escape("(2, 6, 5, 3)")):
        model.apply({"params": params}, x[:, 0])


# ----------------------------------------------------------------------------- U-Net11 + ConvLSTM


class _HookedUNet11(nn.Module):
    """A plain U-Net11 body with a given bottleneck function (U-Net11's param names)."""

    bottleneck: Callable[[jax.Array], jax.Array]

    @nn.compact
    def __call__(self, x):
        return unet11_layers(x, num_classes=2, num_filters=4, bottleneck=self.bottleneck)


def _center_output(intermediates):
    return intermediates["intermediates"]["center"]["__call__"][0]


def test_unet11_convlstm_loads_unet11_params_and_matches_documented_behaviour():
    rng = np.random.default_rng(10)
    clip = jnp.asarray(rng.random((1, 2, 32, 32, 3), dtype=np.float32))
    base = UNet11(num_classes=2, num_filters=4)
    base_params = _random_params(base, clip[:, 0], gain=np.sqrt(2.0))
    model = UNet11ConvLSTM(num_classes=2, num_filters=4, convlstm_layers=1, residual=True)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)["params"]
    assert set(template) == set(base_params) | {"convlstm"}
    assert jax.tree.map(lambda s: s.shape, {k: v for k, v in template.items() if k != "convlstm"}) == jax.tree.map(
        lambda s: s.shape, base_params
    )
    assert template["convlstm"]["layer0"]["conv"]["kernel"].shape == (3, 3, 1024, 2048)

    # residual=True with the ConvLSTM zeroed: exactly U-Net11 on every frame.
    zero_lstm = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template["convlstm"])
    params = {**base_params, "convlstm": zero_lstm}
    per_frame = lambda p: jnp.stack([base.apply({"params": p}, clip[:, t]) for t in range(2)], 1)
    out, ref = jax.jit(lambda p: (model.apply({"params": p}, clip), per_frame(base_params)))(params)
    assert out.shape == (1, 2, 32, 32, 2) and out.dtype == jnp.float32
    _assert_close(out, ref, rel=1e-5)

    # Gradients reach the ConvLSTM from the zero start (through the candidate gate).
    g = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, clip) ** 2)))(params)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
    assert float(jnp.abs(g["convlstm"]["layer0"]["conv"]["kernel"]).max()) > 0

    # residual=False, T = 1: the bottleneck is h_1 = σ(o)·tanh(σ(i)·tanh(g)) from the zero state.
    kernel = jnp.asarray(0.02 * rng.standard_normal((3, 3, 1024, 2048), dtype=np.float32))
    bias = jnp.asarray(0.5 * rng.standard_normal((2048,), dtype=np.float32))
    lstm = {"layer0": {"conv": {"kernel": kernel, "bias": bias}}}
    plain = UNet11ConvLSTM(num_classes=2, num_filters=4, convlstm_layers=1, residual=False)

    def manual_bottleneck(pooled):
        x = jnp.concatenate([pooled, jnp.zeros_like(pooled)], -1)
        z = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
        i, _, o, gg = jnp.split(z, 4, -1)
        return jax.nn.sigmoid(o) * jnp.tanh(jax.nn.sigmoid(i) * jnp.tanh(gg))

    capture = {"capture_intermediates": True, "mutable": ["intermediates"]}

    def run(p):
        got = plain.apply({"params": {**p, "convlstm": lstm}}, clip[:, :1], **capture)
        ref = _HookedUNet11(manual_bottleneck).apply({"params": p}, clip[:, 0], **capture)
        unhooked = base.apply({"params": p}, clip[:, 0], **capture)
        return got, ref, unhooked

    (out1, got_i), (ref1, ref_i), (_, base_i) = jax.jit(run)(base_params)
    assert out1.shape == (1, 1, 32, 32, 2)
    _assert_close(out1[:, 0], ref1, rel=1e-5)
    _assert_close(_center_output(got_i), _center_output(ref_i), rel=1e-5)
    diff = float(jnp.abs(_center_output(got_i) - _center_output(base_i)).max())
    assert diff > 0.1 * float(jnp.abs(_center_output(base_i)).max())  # the ConvLSTM really is in the path

    for shape in [(1, 32, 32, 3), (1, 2, 48, 32, 3)]:
        with pytest.raises(ValueError, match=re.escape(str(shape))):
            model.apply({"params": params}, jnp.zeros(shape))


def test_param_labels_label_exactly_the_convlstm_leaves():
    template = jax.eval_shape(
        UNet11ConvLSTM(num_filters=4, convlstm_layers=2).init, jax.random.PRNGKey(0), jnp.zeros((1, 1, 32, 32, 3))
    )
    labels = param_labels(template["params"])
    flat = jax.tree_util.tree_flatten_with_path(labels)[0]
    lstm = {jax.tree_util.keystr(p) for p, lab in flat if lab == "convlstm"}
    assert lstm == {f"['convlstm']['layer{i}']['conv']['{n}']" for i in (0, 1) for n in ("kernel", "bias")}
    assert {lab for _, lab in flat} == {"convlstm", "base"} and len(flat) == len(jax.tree.leaves(template))
    assert param_labels(template)["params"]["convlstm"]["layer1"]["conv"]["bias"] == "convlstm"

    # With optax.multi_transform: the two groups get their own learning rates (SGD here).
    params = {"convlstm": {"layer0": {"conv": {"kernel": jnp.ones(3)}}}, "center": {"conv": {"kernel": jnp.ones(2)}}}
    tx = optax.multi_transform({"convlstm": optax.sgd(1e-4), "base": optax.sgd(1e-5)}, param_labels)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["convlstm"]["layer0"]["conv"]["kernel"], -1e-4)
    np.testing.assert_allclose(updates["center"]["conv"]["kernel"], -1e-5)
