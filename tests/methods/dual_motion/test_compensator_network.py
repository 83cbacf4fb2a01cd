"""Dual Motion Flow's flow compensator network (Sec. 2.2): Super SloMo's 5-stage U-Net
against a PyTorch reference written here (torch is used for testing only), and the
compensator's input order, residuals and checks."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.methods.dual_motion.compensator_network import FLOW_KEYS, WARPED_KEYS, FlowCompensator, UNet5

from dmf_helpers import (  # tests/methods/dual_motion/dmf_helpers.py
    _assert_close, _count, _nchw, _nhwc, _random_params, _torch, _torch_convs_to_params,
)


# ----------------------------------------------------------------------------- UNet5


def _torch_unet5(cin: int, cout: int, b: int):
    """Super SloMo's ``UNet`` (conv names as its attributes), LeakyReLU 0.1 on the output."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    leaky = lambda y: F.leaky_relu(y, 0.1)

    class Down(nn.Module):
        def __init__(self, i, o, k):
            super().__init__()
            self.conv1 = nn.Conv2d(i, o, k, padding=(k - 1) // 2)
            self.conv2 = nn.Conv2d(o, o, k, padding=(k - 1) // 2)

        def forward(self, x):
            return leaky(self.conv2(leaky(self.conv1(F.avg_pool2d(x, 2)))))

    class Up(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.conv1 = nn.Conv2d(i, o, 3, padding=1)
            self.conv2 = nn.Conv2d(2 * o, o, 3, padding=1)

        def forward(self, x, skip):
            x = leaky(self.conv1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)))
            return leaky(self.conv2(torch.cat([x, skip], 1)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, b, 7, padding=3)
            self.conv2 = nn.Conv2d(b, b, 7, padding=3)
            self.down1, self.down2 = Down(b, 2 * b, 5), Down(2 * b, 4 * b, 3)
            self.down3, self.down4 = Down(4 * b, 8 * b, 3), Down(8 * b, 16 * b, 3)
            self.down5 = Down(16 * b, 16 * b, 3)
            self.up1, self.up2, self.up3 = Up(16 * b, 16 * b), Up(16 * b, 8 * b), Up(8 * b, 4 * b)
            self.up4, self.up5 = Up(4 * b, 2 * b), Up(2 * b, b)
            self.conv3 = nn.Conv2d(b, cout, 3, padding=1)

        def forward(self, x):
            s1 = leaky(self.conv2(leaky(self.conv1(x))))
            s2 = self.down1(s1)
            s3 = self.down2(s2)
            s4 = self.down3(s3)
            s5 = self.down4(s4)
            y = self.down5(s5)
            y = self.up5(self.up4(self.up3(self.up2(self.up1(y, s5), s4), s3), s2), s1)
            return leaky(self.conv3(y))

    return Net()


def test_unet5_paper_width_matches_torch():
    torch = _torch()
    torch.manual_seed(0)
    net = _torch_unet5(26, 8, 32)
    model = UNet5(8)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 26)))["params"]
    assert _count(template) == sum(p.numel() for p in net.parameters()) == 19_826_632
    params = _torch_convs_to_params(net)
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, template)
    x = np.random.default_rng(0).standard_normal((1, 32, 64, 26), dtype=np.float32)
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
    with torch.no_grad():
        ref = _nhwc(net(_nchw(x)))
    assert got.shape == (1, 32, 64, 8) and got.dtype == jnp.float32
    assert (ref < 0).any()  # the leaky output branch is exercised
    _assert_close(got, ref)


def test_unet5_linear_output_and_shape_errors():
    model = UNet5(3, base_features=2, final_activation=False)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 32, 32, 4), dtype=np.float32))
    variables = {"params": _random_params(model, x)}
    both = lambda v, x: (UNet5(3, base_features=2).apply(v, x), model.apply(v, x))
    leaky, linear = jax.jit(both)(variables, x)
    assert float(linear.min()) < 0
    np.testing.assert_allclose(leaky, np.where(linear > 0, linear, 0.1 * linear), rtol=1e-6, atol=1e-7)
    for shape in [(1, 48, 32, 4), (32, 32, 4)]:
        with pytest.raises(ValueError, match=re.escape(str(shape))):
            model.apply(variables, jnp.zeros(shape))


# ----------------------------------------------------------------------------- compensator


def _compensator_inputs(rng, b=1, h=32, w=32):
    frame = lambda: jnp.asarray(rng.random((b, h, w, 3), dtype=np.float32))
    flows = {k: jnp.asarray(3 * rng.standard_normal((b, h, w, 2), dtype=np.float32)) for k in FLOW_KEYS}
    warped = {k: frame() for k in WARPED_KEYS}
    return frame(), frame(), flows, warped


def test_flow_compensator_channel_order_residuals_and_grads():
    rng = np.random.default_rng(2)
    f0, f1, flows, warped = _compensator_inputs(rng)
    model = FlowCompensator(base_features=4)
    variables = {"params": _random_params(model, f0, f1, flows, warped)}
    assert set(variables["params"]) == {"unet"}
    assert variables["params"]["unet"]["conv1"]["kernel"].shape == (7, 7, 26, 4)
    # The documented input order, run through the bare U-Net with the same params.
    x = jnp.concatenate([f0, f1, *(flows[k] for k in FLOW_KEYS), *(warped[k] for k in WARPED_KEYS)], -1)
    unet = lambda v: UNet5(8, base_features=4).apply({"params": v["params"]["unet"]}, x)
    out, residual = jax.jit(lambda v: (model.apply(v, f0, f1, flows, warped), unet(v)))(variables)
    assert set(out) == set(FLOW_KEYS)
    assert float(jnp.abs(residual).max()) > 0
    for j, k in enumerate(FLOW_KEYS):
        assert out[k].shape == (1, 32, 32, 2) and out[k].dtype == jnp.float32
        np.testing.assert_allclose(out[k], flows[k] + residual[..., 2 * j : 2 * j + 2], rtol=1e-6, atol=1e-6)

    def loss(p):
        o = model.apply({"params": p}, f0, f1, flows, warped)
        return sum(jnp.mean(jnp.abs(v)) for v in o.values())

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves) and any(float(jnp.abs(g).max()) > 0 for g in leaves)

    with pytest.raises(ValueError, match="lacks keys.*'1_to_i'"):
        model.apply(variables, f0, f1, {k: v for k, v in flows.items() if k != "1_to_i"}, warped)
    with pytest.raises(ValueError, match=r"warped\['forward_1'\]"):
        model.apply(variables, f0, f1, flows, {**warped, "forward_1": jnp.zeros((1, 32, 32, 2))})
    with pytest.raises(ValueError, match="frame1"):
        model.apply(variables, f0, f1[:, :16], flows, warped)
