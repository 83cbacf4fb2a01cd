"""Dual Motion Flow's flow predictor G (Sec. 2.1): the SDC-Net2D layout against a PyTorch
reference written here (torch is used for testing only), its normalisation (the training
set's flow statistics, stored once), initialisation (a fresh G predicts zero motion both
ways), its two input modes (reconstruct: the target frame and the flow into it; past) and
shape checks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsurg.data.sequences import Windows
from jaxsurg.methods.dual_motion.flow_predictor import (
    FLOW_STATS,
    SDC_FLOW_MEAN,
    SDC_FLOW_STD,
    MotionFlowPredictor,
    TimeReverse,
    _sdc_conv,
    build_flow_predictor,
    estimate_flow_statistics,
    flow_statistics,
    g_inputs,
)
from jaxsurg.methods.dual_motion.transform import warp_image

from dmf_helpers import (  # tests/methods/dual_motion/dmf_helpers.py
    V, _assert_close, _count, _nchw, _nhwc, _panning_sequence, _random_params, _torch, _torch_convs_to_params,
)


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
    p_sdc, p_zero = jax.jit(lambda: (sdc.init(jax.random.PRNGKey(0), frames, flows)["params"],
                                     zero.init(jax.random.PRNGKey(0), frames, flows)["params"]))()
    assert jax.tree.structure(p_sdc) == jax.tree.structure(p_zero)  # the same parameters, loadable both ways
    np.testing.assert_array_equal(p_zero["conv1"]["kernel"], p_sdc["conv1"]["kernel"])  # only final_flow differs
    assert not np.any(p_zero["final_flow"]["kernel"]) and not np.any(p_zero["final_flow"]["bias"])

    def run(p_sdc, p_zero):
        start = zero.apply({"params": p_zero}, frames, flows)
        fresh_sdc = sdc.apply({"params": p_sdc}, frames, flows)
        g = jax.grad(lambda p: jnp.mean((zero.apply({"params": p}, frames, flows) - 1.0) ** 2))(p_zero)
        return start, fresh_sdc, g

    start, fresh_sdc, g = jax.jit(run)(p_sdc, p_zero)
    # With SDC-Net's constants a zero output layer is not zero motion: F̂ = their mean.
    np.testing.assert_allclose(start, np.broadcast_to(SDC_FLOW_MEAN, start.shape), rtol=1e-6)
    assert float(jnp.abs(fresh_sdc).mean()) > 5.0  # SDC-Net's init: far from still
    # Zeroed only at the output: the gradient still reaches every layer through final_flow.
    assert float(jnp.abs(g["final_flow"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="output_init must be one of"):
        MotionFlowPredictor(base_features=4, output_init="ones").init(jax.random.PRNGKey(0), frames, flows)


def _stats_config(flow_stats="training", inputs="reconstruct"):
    return ml_collections.ConfigDict({"flow_predictor": {"flow_stats": flow_stats, "inputs": inputs, "base_features": 4, "output_init": "zero"}})


def test_flow_statistics_zero_mean_training_scale_stored_once_and_reused(tmp_path):
    seq, _ = _panning_sequence(num_frames=6, h=64, w=64)  # every flow is ∓V = ∓(2, 1) px
    stats = estimate_flow_statistics(seq)
    assert stats["mean"] == [0.0, 0.0] and stats["flow_fields"] == 10  # 5 forward + 5 backward
    np.testing.assert_allclose(stats["std"], np.abs(V), rtol=1e-6)  # RMS of ±V per component
    np.testing.assert_allclose(stats["forward_mean"], -V, rtol=1e-6)
    workdir = str(tmp_path / "w")
    mean, std = flow_statistics(_stats_config(), seq, workdir)
    assert mean == (0.0, 0.0) and std == pytest.approx(tuple(np.abs(V)))
    path = tmp_path / "w" / "flow_predictor" / FLOW_STATS
    stored = json.loads(path.read_text())
    assert stored["flow_stats"] == "training" and stored["std"] == pytest.approx(list(np.abs(V)))
    # Estimated once: a resumed run (or a later stage) reads the file, not the frames.
    path.write_text(json.dumps({**stored, "std": [7.0, 3.0]}))
    assert flow_statistics(_stats_config(), seq, workdir) == ((0.0, 0.0), (7.0, 3.0))
    # SDC-Net's constants on request (the file then records them).
    assert flow_statistics(_stats_config("sdc"), seq, workdir) == (SDC_FLOW_MEAN, SDC_FLOW_STD)
    assert json.loads(path.read_text())["flow_stats"] == "sdc"
    with pytest.raises(ValueError, match="flow_stats='mean'"):
        flow_statistics(_stats_config("mean"), seq, workdir)


@pytest.mark.parametrize("inputs", ["reconstruct", "past"])
def test_fresh_zero_init_g_predicts_exactly_zero_motion_in_both_time_directions(tmp_path, inputs):
    seq, _ = _panning_sequence(num_frames=6, h=64, w=64)
    config = _stats_config(inputs=inputs)
    model = build_flow_predictor(config, *flow_statistics(config, seq, str(tmp_path)))
    assert (model.flow_mean, model.output_init) == ((0.0, 0.0), "zero")
    window = Windows(seq)[0]
    rng = np.random.default_rng(0)
    batches = [TimeReverse(p, back=True).random_map(window, rng) for p in (0.0, 1.0)]  # forward, reversed
    assert not np.array_equal(batches[0]["frames"], batches[1]["frames"])
    frames = np.stack([b["frames"] for b in batches]).astype(np.float32) / 255.0
    flows, back = (np.stack([b[k] for b in batches]) for k in ("flows", "back"))
    g_frames, g_flows = g_inputs(jnp.asarray(frames), jnp.asarray(flows), jnp.asarray(back), inputs, "forward")
    assert float(jnp.abs(g_flows).min()) > 0  # real motion in, both ways
    out = jax.jit(lambda f, fl: model.apply(model.init(jax.random.PRNGKey(0), f, fl), f, fl))(g_frames, g_flows)
    assert out.shape == (2, 64, 64, 2) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # F̂ = 0 exactly, forward and reversed


def test_time_reverse_gives_the_flows_of_the_reversed_window():
    seq, _ = _panning_sequence(num_frames=6, h=64, w=64)
    window = Windows(seq)[1]  # rows 1..4
    rng = np.random.default_rng(0)
    fwd, rev = TimeReverse(0.0, back=True).random_map(window, rng), TimeReverse(1.0, back=True).random_map(window, rng)
    np.testing.assert_array_equal(fwd["frames"], seq.frames[1:5])
    np.testing.assert_array_equal(fwd["flows"], seq.flow_fwd[1:4])  # F_{i→i+1}
    np.testing.assert_array_equal(fwd["back"], seq.flow_bwd[2:5])  # F_{i+1→i}
    np.testing.assert_array_equal(rev["frames"], seq.frames[4:0:-1])  # 4, 3, 2, 1
    np.testing.assert_array_equal(rev["flows"], seq.flow_bwd[4:1:-1])  # F_{4→3}, F_{3→2}, F_{2→1}
    np.testing.assert_array_equal(rev["back"], seq.flow_fwd[3:0:-1])  # F_{3→4}, F_{2→3}, F_{1→2}
    assert "back" not in TimeReverse(0.5).random_map(window, rng)


@pytest.mark.parametrize("warp", ["forward", "backward"])
def test_reconstruct_inputs_hold_the_target_frame_and_the_flow_into_it_and_gradients_flow(warp):
    rng = np.random.default_rng(12)
    frames = jnp.asarray(rng.random((1, 4, 64, 64, 3), dtype=np.float32))
    flows = jnp.asarray(3 * rng.standard_normal((1, 3, 64, 64, 2), dtype=np.float32))  # F_{i→i+1}
    back = jnp.asarray(3 * rng.standard_normal((1, 3, 64, 64, 2), dtype=np.float32))  # F_{i+1→i}
    g_frames, g_flows = g_inputs(frames, flows, back, "reconstruct", warp)
    assert g_frames.shape == (1, 3, 64, 64, 3) and g_flows.shape == (1, 2, 64, 64, 2)
    np.testing.assert_array_equal(g_frames[:, -1], frames[:, 3])  # I_{t+1}, the frame the step moves into
    np.testing.assert_array_equal(g_frames[:, :2], frames[:, 1:3])  # I_{t−1}, I_t
    # the optical flow into I_{t+1}, on the grid the warp uses it: F_{t→t+1} (splatting) or F_{t+1→t} (sampling)
    np.testing.assert_array_equal(g_flows[:, -1], (flows if warp == "forward" else back)[:, 2])
    np.testing.assert_array_equal(g_flows[:, 0], (flows if warp == "forward" else back)[:, 1])
    p_frames, p_flows = g_inputs(frames, flows, None, "past", warp)  # prediction: the target unseen
    np.testing.assert_array_equal(p_frames, frames[:, :3])
    np.testing.assert_array_equal(p_flows, flows[:, :2])
    with pytest.raises(ValueError, match="inputs='future'"):
        g_inputs(frames, flows, back, "future", warp)
    if warp == "backward":
        with pytest.raises(ValueError, match="pointing back"):
            g_inputs(frames, flows, None, "reconstruct", warp)

    # Gradients: through G's parameters (nonzero, finite) and, in reconstruct mode only, from
    # the loss back to the target frame through G's input — G sees I_{t+1}.
    model = MotionFlowPredictor(base_features=4, flow_mean=(0.0, 0.0), flow_std=(3.0, 3.0))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), g_frames, g_flows)["params"]

    def loss(p, frames, mode):
        f, fl = g_inputs(frames, flows, back, mode, warp)
        return jnp.mean(jnp.abs(warp_image(frames[:, 2], model.apply({"params": p}, f, fl), warp) - frames[:, 3]))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    gp, gf = grads(params, frames, "reconstruct")
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(gp))
    assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(gp))
    # d loss / d I_{t+1} has a part through G (beyond the L1 target term): compare with past mode
    _, gf_past = grads(params, frames, "past")
    assert float(jnp.abs(gf[:, 3] - gf_past[:, 3]).max()) > 0


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
