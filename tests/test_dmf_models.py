"""Dual Motion Flow networks: SDC-style flow predictor G, the 5-stage U-Net and flow
compensator, ConvLSTM, and U-Net11 with a ConvLSTM bottleneck.

PyTorch references (Super SloMo's UNet, SDC-Net2D's network_output, the usual ConvLSTM
cell) are written here; torch is used for testing only.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsurg.models import UNet11
from jaxsurg.models.convlstm import ConvLSTM, ConvLSTMCell, UNet11ConvLSTM, param_labels
from jaxsurg.models.flow_predictor import (
    SDC_FLOW_MEAN,
    SDC_FLOW_STD,
    MotionFlowPredictor,
    _sdc_conv,
)
from jaxsurg.models.unet import FLOW_KEYS, WARPED_KEYS, FlowCompensator, UNet5
from jaxsurg.models.unet11 import unet11_layers


def _torch():
    return pytest.importorskip("torch")


def _nchw(x):
    return _torch().from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _torch_convs_to_params(module) -> dict:
    """Every ``a.b.weight`` (Cout, Cin, k, k) → params[a][b]['kernel'] (k, k, Cin, Cout)."""
    params: dict = {}
    for key, value in module.named_parameters():
        *path, leaf = key.split(".")
        node = params
        for p in path:
            node = node.setdefault(p, {})
        v = value.detach().numpy()
        node["kernel" if leaf == "weight" else "bias"] = v.transpose(2, 3, 1, 0) if leaf == "weight" else v
    return params


def _random_params(model, *args, seed=0, gain=1.0):
    """Params of ``model`` without compiling its init: kernels N(0, gain²/fan_in), biases N(0, 0.01)."""
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        std = gain / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(std * rng.standard_normal(s.shape).astype(np.float32))

    return jax.tree.map(draw, template)


def _assert_close(got, ref, rel=1e-4):
    ref = np.asarray(ref)
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=rel * scale)


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


# ----------------------------------------------------------------------------- flow predictor G


def _torch_sdcnet(t: int, b: int, flow_mean, flow_std):
    """SDC-Net2D's ``network_output`` (bilinear-upsampling decoder, LeakyReLU 0.1), [0, 1] images."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    cin = 3 * t + 2 * (t - 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            spec = [("conv1", cin, b, 7), ("conv2", b, 2 * b, 5), ("conv3", 2 * b, 4 * b, 5),
                    ("conv3_1", 4 * b, 4 * b, 3), ("conv4", 4 * b, 8 * b, 3), ("conv4_1", 8 * b, 8 * b, 3),
                    ("conv5", 8 * b, 8 * b, 3), ("conv5_1", 8 * b, 8 * b, 3), ("conv6", 8 * b, 16 * b, 3),
                    ("conv6_1", 16 * b, 16 * b, 3), ("deconv5", 16 * b, 8 * b, 3), ("deconv4", 16 * b, 4 * b, 3),
                    ("deconv3", 12 * b, 2 * b, 3), ("deconv2", 6 * b, b, 3), ("deconv1", 3 * b, b // 2, 3),
                    ("deconv0", 3 * b // 2, b // 4, 3), ("final_flow", cin + b // 4, 2, 3)]  # fmt: skip
            for name, i, o, k in spec:
                stride = 2 if name in ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6") else 1
                setattr(self, name, nn.Conv2d(i, o, k, stride=stride, padding=(k - 1) // 2))
            self.register_buffer("flow_mean", torch.tensor(flow_mean, dtype=torch.float32).view(1, 2, 1, 1))
            self.register_buffer("flow_std", torch.tensor(flow_std, dtype=torch.float32).view(1, 2, 1, 1))

        def forward(self, images, flows):  # lists of (B, 3, H, W) and (B, 2, H, W)
            act = lambda name, y: F.leaky_relu(getattr(self, name)(y), 0.1)
            up = lambda name, y: act(name, F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))
            flows = [(f - self.flow_mean) / (3 * self.flow_std) for f in flows]
            stacked = torch.stack(images, 2)
            rgb_mean = stacked.flatten(2).mean(-1)[:, :, None, None]
            images = [im - rgb_mean for im in images]
            bsz, _, h, w = flows[0].shape
            x = torch.cat([torch.stack(flows, 2).reshape(bsz, -1, h, w), torch.stack(images, 2).reshape(bsz, -1, h, w)], 1)
            c1 = act("conv1", x)
            c2 = act("conv2", c1)
            c3 = act("conv3_1", act("conv3", c2))
            c4 = act("conv4_1", act("conv4", c3))
            c5 = act("conv5_1", act("conv5", c4))
            c6 = act("conv6_1", act("conv6", c5))
            y = torch.cat([c5, up("deconv5", c6)], 1)
            y = torch.cat([c4, up("deconv4", y)], 1)
            y = torch.cat([c3, up("deconv3", y)], 1)
            y = torch.cat([c2, up("deconv2", y)], 1)
            y = torch.cat([c1, up("deconv1", y)], 1)
            y = torch.cat([x, up("deconv0", y)], 1)
            return 3 * self.flow_std * self.final_flow(y) + self.flow_mean

    return Net()


def _g_inputs(rng, b=1, t=3, h=64, w=64):
    frames = rng.random((b, t, h, w, 3), dtype=np.float32)
    flows = 4 * rng.standard_normal((b, t - 1, h, w, 2), dtype=np.float32)
    return frames, flows


def _hand_count_g(t: int, b: int) -> int:
    cin = 3 * t + 2 * (t - 1)
    convs = [(cin, b, 7), (b, 2 * b, 5), (2 * b, 4 * b, 5), (4 * b, 4 * b, 3), (4 * b, 8 * b, 3), (8 * b, 8 * b, 3),
             (8 * b, 8 * b, 3), (8 * b, 8 * b, 3), (8 * b, 16 * b, 3), (16 * b, 16 * b, 3), (16 * b, 8 * b, 3),
             (16 * b, 4 * b, 3), (12 * b, 2 * b, 3), (6 * b, b, 3), (3 * b, b // 2, 3), (3 * b // 2, b // 4, 3),
             (cin + b // 4, 2, 3)]  # fmt: skip
    return sum(k * k * i * o + o for i, o, k in convs)


def test_flow_predictor_paper_width_matches_sdcnet_torch():
    torch = _torch()
    torch.manual_seed(3)
    net = _torch_sdcnet(3, 32, SDC_FLOW_MEAN, SDC_FLOW_STD)
    model = MotionFlowPredictor()
    frames, flows = _g_inputs(np.random.default_rng(4))
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), frames, flows)["params"]
    n = _count(template)
    assert n == sum(p.numel() for p in net.parameters()) == _hand_count_g(3, 32)
    assert template["conv1"]["kernel"].shape == (7, 7, 13, 32)
    params = _torch_convs_to_params(net)
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(frames), jnp.asarray(flows))
    with torch.no_grad():
        ref = net([_nchw(frames[:, i]) for i in range(3)], [_nchw(flows[:, i]) for i in range(2)])
    assert got.shape == (1, 64, 64, 2) and got.dtype == jnp.float32
    _assert_close(got, _nhwc(ref))


def test_flow_predictor_per_example_statistics_and_grads():
    rng = np.random.default_rng(5)
    frames, flows = _g_inputs(rng, b=2, t=2)
    flows[1] = 3.0 * flows[1] + np.array([5.0, -2.0], np.float32)
    per_example = MotionFlowPredictor(num_frames=2, base_features=4, flow_mean=None, flow_std=None)
    variables = {"params": _random_params(per_example, frames, flows, gain=2.0)}
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 8, 4)
    fixed = []
    for i in range(2):  # the same as dataset constants equal to that example's statistics
        f = flows[i].reshape(-1, 2).astype(np.float64)
        fixed.append(
            MotionFlowPredictor(num_frames=2, base_features=4, flow_mean=tuple(f.mean(0)), flow_std=tuple(f.std(0)))
        )
    run = lambda v: (per_example.apply(v, frames, flows),) + tuple(
        m.apply(v, frames[i : i + 1], flows[i : i + 1])[0] for i, m in enumerate(fixed)
    )
    got, *refs = jax.jit(run)(variables)
    for i in range(2):
        _assert_close(got[i], refs[i], rel=1e-5)
    assert float(jnp.abs(got[0] - refs[1]).max()) > 1e-3  # the statistics do differ between examples

    def loss(p, fl):
        return jnp.mean(jnp.abs(per_example.apply({"params": p}, frames, fl)))

    gp, gf = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], jnp.asarray(flows))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(gp))
    assert np.isfinite(np.asarray(gf)).all() and float(jnp.abs(gf).max()) > 0


def test_strided_conv_matches_torch_and_uses_sdcnet_init():
    torch = _torch()
    conv = torch.nn.Conv2d(3, 4, 5, stride=2, padding=2)
    x = np.random.default_rng(11).standard_normal((1, 6, 8, 3), dtype=np.float32)
    layer = _sdc_conv(4, 5, 2, jnp.float32, "conv")
    params = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": conv.bias.detach().numpy()}
    with torch.no_grad():
        ref = _nhwc(conv(_nchw(x)))
    got = layer.apply({"params": params}, jnp.asarray(x))
    assert got.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    init = layer.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    bias, kernel = np.asarray(init["bias"]), np.asarray(init["kernel"])
    assert (bias >= 0).all() and (bias < 1).all()  # SDC-Net: uniform_(bias) = U[0, 1)
    bound = np.sqrt(6.0 / (25 * 3 + 25 * 4))  # Xavier-uniform with PyTorch's fans
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.5 * bound


def test_flow_predictor_zero_output_init_starts_at_the_flow_mean_and_trains():
    frames, flows = _g_inputs(np.random.default_rng(7), b=2)
    sdc = MotionFlowPredictor(base_features=4)
    zero = MotionFlowPredictor(base_features=4, output_init="zero")
    p_sdc = sdc.init(jax.random.PRNGKey(0), frames, flows)["params"]
    p_zero = zero.init(jax.random.PRNGKey(0), frames, flows)["params"]
    assert jax.tree.structure(p_sdc) == jax.tree.structure(p_zero)  # the same parameters, loadable both ways
    np.testing.assert_array_equal(p_zero["conv1"]["kernel"], p_sdc["conv1"]["kernel"])  # only final_flow differs
    assert not np.any(p_zero["final_flow"]["kernel"]) and not np.any(p_zero["final_flow"]["bias"])
    start = zero.apply({"params": p_zero}, frames, flows)
    np.testing.assert_allclose(start, np.broadcast_to(SDC_FLOW_MEAN, start.shape), rtol=1e-6)
    assert float(jnp.abs(sdc.apply({"params": p_sdc}, frames, flows)).mean()) > 5.0  # SDC-Net's init: far from still
    # Zeroed only at the output: the gradient still reaches every layer through final_flow.
    g = jax.grad(lambda p: jnp.mean((zero.apply({"params": p}, frames, flows) - 1.0) ** 2))(p_zero)
    assert float(jnp.abs(g["final_flow"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="output_init must be one of"):
        MotionFlowPredictor(base_features=4, output_init="ones").init(jax.random.PRNGKey(0), frames, flows)


def test_flow_predictor_shape_errors():
    model = MotionFlowPredictor(base_features=4)
    frames, flows = _g_inputs(np.random.default_rng(6), h=96, w=64)
    with pytest.raises(ValueError, match="multiples of 64"):
        model.init(jax.random.PRNGKey(0), frames, flows)
    frames, flows = _g_inputs(np.random.default_rng(6))
    with pytest.raises(ValueError, match=r"flows must be \(B, T-1, H, W, 2\)"):
        model.init(jax.random.PRNGKey(0), frames, flows[:, :1])
    with pytest.raises(ValueError, match=r"frames must be \(B, 3, H, W, 3\)"):
        model.init(jax.random.PRNGKey(0), frames[:, :2], flows)


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
