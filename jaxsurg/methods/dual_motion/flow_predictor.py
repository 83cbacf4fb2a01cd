"""G, Dual Motion Flow's motion flow predictor (Sec. 2.1, Eqs. 1 and 3), and stage 1 that
trains it: an SDC-Net-style encoder–decoder.

Sources:
  - Zhao et al., "Learning Motion Flows for Semi-supervised Instrument Segmentation from
    Robotic Surgical Video" (Dual Motion Flow, MICCAI 2020), Sec. 2.1, Eq. (1):
    F̂_{t→t+1} = G(I_{t0:t+1}, F_{t0+1:t+1}), Î_{t+1} = T(I_t, F̂_{t→t+1}) — G sees the
    frame it moves into and the optical flow into it ("a video reconstruction task";
    joint propagation leaves "the original data I_{t+1} merely for motion flow
    generation"), as the authors' code, whose SDC-Net takes I_{t−1}, I_t, I_{t+1} and the
    flows between them: ``inputs='reconstruct'``, the default. The sentence under Eq. (1)
    says "with the input I_{t0:t}": ``inputs='past'`` (SDC-Net's own video prediction, the
    target unseen). Eq. (3): L_Pred = λ1·L1 + λp·Lp + λs·Ls with Ls = ‖∇F̂‖₁.
  - Reda et al., "SDC-Net: Video prediction using spatially-displaced convolution" (ECCV
    2018) and its public ``SDCNet2D`` (NVIDIA semantic-segmentation/sdcnet), which Dual MF's
    code adapts: 3 frames + 2 flows (13 channels), strided conv encoder, bilinear-upsampling
    decoder with skips, flows normalised as (f − mean)/(3·std) and de-normalised at the output.

The network is ``MotionFlowPredictor``; stage 1 (``train_flow_predictor``) first fixes its
flow normalisation (``flow_statistics``: zero mean and the training flows' scale, stored in
``WORKDIR/flow_predictor/flow_stats.json``), then trains it on ``Windows`` of 4
consecutive training frames, reversed in time at random (``TimeReverse``), on the input of
``g_inputs`` with the loss of ``make_flow_predictor_step`` (weights ``config.G_LOSS_WEIGHTS``).

NHWC throughout; flows are (dx, dy) in pixels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from jaxsurg.data import pipeline
from jaxsurg.data.sequences import TrainSequence, Windows
from jaxsurg.losses.perceptual import perceptual_loss, style_loss
from jaxsurg.methods.dual_motion.compensator_network import LEAKY_SLOPE
from jaxsurg.methods.dual_motion.config import FLOW_STATS_MODES, G_INPUTS, G_LOSS_WEIGHTS
from jaxsurg.methods.dual_motion.training import make_vgg
from jaxsurg.methods.dual_motion.transform import warp_image
from jaxsurg.models.layers import Conv2d
from jaxsurg.ops.resize import upsample_bilinear_2x
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, make_optimizer
from jaxsurg.train.writers import write_json

Array = jax.Array

# SDC-Net's dataset constants (its ``flow_mean`` / ``flow_std`` buffers, per component dx, dy).
SDC_FLOW_MEAN = (-0.94427323, -1.23077035)
SDC_FLOW_STD = (13.77204132, 7.47463894)
OUTPUT_INITS = ("sdc", "zero")


def _bias_uniform01(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """``torch.nn.init.uniform_(bias)``: U[0, 1), SDC-Net's bias initialisation."""
    return jax.random.uniform(key, shape, dtype, 0.0, 1.0)


def _sdc_conv(features: int, kernel_size: int, stride: int, dtype: Any, name: str) -> Conv2d:
    """A 'same'-padded conv initialised as SDC-Net: Xavier-uniform kernel (fan_in = Cin·k²,
    fan_out = features·k², as PyTorch), bias U[0, 1)."""
    return Conv2d(
        features, kernel_size, stride=stride, dtype=dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform(), bias_init=_bias_uniform01,
    )


class MotionFlowPredictor(nn.Module):
    """G of Dual Motion Flow (SDC-Net2D layout): predicts the motion flow of the next step.

    ``apply({'params': p}, frames, flows)``:

      frames: (B, T, H, W, 3) float RGB in [0, 1], oldest first (T = num_frames; for T = 3:
        I_{t−2}, I_{t−1}, I_t, or with the target frame, I_{t−1}, I_t, I_{t+1}: see
        ``g_inputs``). H and W multiples of 64.
      flows: (B, T − 1, H, W, 2) float, (dx, dy) in pixels, the optical flow of each
        consecutive pair in the same time order (for T = 3: between frames 0, 1 and
        between frames 1, 2). The network learns whichever direction convention the training
        loss fixes; pass flows of the direction the predicted flow is used in (SDC-Net's
        code feeds FlowNet2 the pair (I_{k+1}, I_k), i.e. backward flows, and samples I_t at
        x + F̂(x); the paper writes a forward warp with F̂_{t→t+1}).

    Returns the predicted flow F̂ (B, H, W, 2) float32 in pixels.

    Input normalisation (inside, as SDC-Net's ``network_output``):
      - flows: (f − mean) / (3·std) per component; the output is de-normalised as
        3·std·y + mean. ``flow_mean``/``flow_std`` are dataset constants (defaults: SDC-Net's
        buffers, ``SDC_FLOW_MEAN``/``SDC_FLOW_STD``; stage 1 passes the training set's,
        ``flow_statistics``, with a zero mean); set either to None to use per-example
        statistics instead (mean / std per component over the T − 1 flows and all pixels,
        std floored at 1e-3 px, no gradient through them).
      - frames: minus the per-example, per-channel mean over all T frames and pixels (the
        "FlowNet2-type" normalisation; SDC-Net divides by rgb_max = 255 because its images
        are in [0, 255], here they are in [0, 1]).
      - channel order (SDC-Net's, for compatibility with its weights): component-major,
        time-minor — flows (dx_1 … dx_{T−1}, dy_1 … dy_{T−1}), then frames
        (r_1 … r_T, g_1 … g_T, b_1 … b_T): 2(T − 1) + 3T channels (13 for T = 3).

    Architecture (b = base_features = 32; LeakyReLU 0.1 after every conv except the last):

        conv1  7×7/2 → b      conv2  5×5/2 → 2b     conv3 5×5/2 → 4b   conv3_1 → 4b
        conv4  3×3/2 → 8b     conv4_1 → 8b          conv5 3×3/2 → 8b   conv5_1 → 8b
        conv6  3×3/2 → 16b    conv6_1 → 16b                              (H/64)
        deconvK = bilinear ×2 + conv3×3: deconv5 (conv6_1) → 8b, cat conv5;
        deconv4 → 4b, cat conv4; deconv3 → 2b, cat conv3; deconv2 → b, cat conv2;
        deconv1 → b/2, cat conv1; deconv0 → b/4, cat the network input;
        final_flow conv3×3 → 2 (linear), then de-normalised.

    Attributes:
      num_frames: T ≥ 2 (3 in Dual MF / SDC-Net).
      base_features: b, a multiple of 4 (32 = SDC-Net's widths 32 … 512 and 256 … 8).
      flow_mean, flow_std: (dx, dy) dataset constants in pixels, or None (per-example).
      output_init: 'sdc' (SDC-Net's initialisation of ``final_flow``) or 'zero'.
      dtype: computation dtype; params float32.

    Params: ``conv1, conv2, conv3, conv3_1, conv4, conv4_1, conv5, conv5_1, conv6, conv6_1,
    deconv5 … deconv0, final_flow``, each {kernel (k, k, Cin, Cout), bias}: SDC-Net's names
    (its ``convN.0.weight`` / ``deconvN.1.0.weight`` → ``convN`` / ``deconvN``).
    Initialisation as SDC-Net: Xavier-uniform kernels, U[0, 1) biases. With the U[0, 1)
    biases and the ×3·std de-normalisation, a fresh G predicts flows of tens of pixels (about
    30 px mean magnitude at 128×192 with b = 16 and SDC-Net's constants), which a short
    training does not undo; ``output_init='zero'`` zero-initialises ``final_flow`` instead, so
    training starts from F̂ = ``flow_mean`` everywhere: exactly zero motion, in either time
    direction, with stage 1's zero-mean constants (with SDC-Net's it would be (−0.94, −1.23)
    px per step, whichever way in time; with per-example statistics the input flows' mean).

    Raises:
      ValueError: frames not (B, num_frames, H, W, 3), flows not (B, num_frames − 1, H, W, 2),
        H or W not a multiple of 64, or a bad field (``output_init`` not 'sdc' or 'zero').
    """

    num_frames: int = 3
    base_features: int = 32
    flow_mean: tuple[float, float] | None = SDC_FLOW_MEAN
    flow_std: tuple[float, float] | None = SDC_FLOW_STD
    output_init: str = "sdc"
    dtype: Any = jnp.float32

    def _check(self, frames: Array, flows: Array) -> None:
        t = self.num_frames
        if t < 2:
            raise ValueError(f"num_frames must be >= 2, got {t}")
        if self.output_init not in OUTPUT_INITS:
            raise ValueError(f"output_init must be one of {OUTPUT_INITS}, got {self.output_init!r}")
        if self.base_features < 4 or self.base_features % 4:
            raise ValueError(f"base_features must be a positive multiple of 4, got {self.base_features}")
        if frames.ndim != 5 or frames.shape[1] != t or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, {t}, H, W, 3) (num_frames={t}), got shape {frames.shape}")
        b, _, h, w, _ = frames.shape
        if flows.shape != (b, t - 1, h, w, 2):
            raise ValueError(f"flows must be (B, T-1, H, W, 2) = {(b, t - 1, h, w, 2)}, got shape {flows.shape}")
        if h % 64 or w % 64:
            raise ValueError(f"MotionFlowPredictor needs H and W that are multiples of 64, got frames of shape {frames.shape}")

    def _flow_stats(self, flows: Array) -> tuple[Array, Array]:
        """(mean, std), each broadcastable to (B, T−1, H, W, 2)."""
        if self.flow_mean is None or self.flow_std is None:
            f = lax.stop_gradient(flows)
            mean = jnp.mean(f, axis=(1, 2, 3), keepdims=True)
            std = jnp.maximum(jnp.std(f, axis=(1, 2, 3), keepdims=True), 1e-3)
            return mean, std
        return jnp.asarray(self.flow_mean, jnp.float32), jnp.asarray(self.flow_std, jnp.float32)

    @nn.compact
    def __call__(self, frames: Array, flows: Array) -> Array:
        self._check(frames, flows)
        frames = frames.astype(jnp.float32)
        flows = flows.astype(jnp.float32)
        mean, std = self._flow_stats(flows)
        norm_flows = (flows - mean) / (3.0 * std)
        frames = frames - jnp.mean(frames, axis=(1, 2, 3), keepdims=True)
        bsz, _, h, w, _ = frames.shape
        # (B, T, H, W, C) → (B, H, W, C, T) → (B, H, W, C·T): channel index c·T + t.
        interleave = lambda a: jnp.moveaxis(a, 1, -1).reshape(bsz, h, w, -1)
        x = jnp.concatenate([interleave(norm_flows), interleave(frames)], axis=-1)

        b, dt = self.base_features, self.dtype
        act = lambda y: nn.leaky_relu(y, LEAKY_SLOPE)

        def conv(features: int, k: int, s: int, name: str):
            return lambda y: act(_sdc_conv(features, k, s, dt, name)(y))

        c1 = conv(b, 7, 2, "conv1")(x)
        c2 = conv(2 * b, 5, 2, "conv2")(c1)
        c3 = conv(4 * b, 3, 1, "conv3_1")(conv(4 * b, 5, 2, "conv3")(c2))
        c4 = conv(8 * b, 3, 1, "conv4_1")(conv(8 * b, 3, 2, "conv4")(c3))
        c5 = conv(8 * b, 3, 1, "conv5_1")(conv(8 * b, 3, 2, "conv5")(c4))
        c6 = conv(16 * b, 3, 1, "conv6_1")(conv(16 * b, 3, 2, "conv6")(c5))

        def up(y: Array, features: int, name: str) -> Array:
            return conv(features, 3, 1, name)(upsample_bilinear_2x(y))

        cat = lambda a, c: jnp.concatenate([a.astype(dt), c], axis=-1)
        y = cat(c5, up(c6, 8 * b, "deconv5"))
        y = cat(c4, up(y, 4 * b, "deconv4"))
        y = cat(c3, up(y, 2 * b, "deconv3"))
        y = cat(c2, up(y, b, "deconv2"))
        y = cat(c1, up(y, b // 2, "deconv1"))
        y = cat(x, up(y, b // 4, "deconv0"))
        if self.output_init == "zero":
            final = Conv2d(2, 3, dtype=dt, name="final_flow", kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
        else:
            final = _sdc_conv(2, 3, 1, dt, "final_flow")
        out = final(y).astype(jnp.float32)
        mean_out, std_out = mean, std
        if mean_out.ndim == 5:  # per-example statistics: (B, 1, 1, 1, 2) → (B, 1, 1, 2)
            mean_out, std_out = mean_out[:, 0], std_out[:, 0]
        return 3.0 * std_out * out + mean_out


# ----------------------------------------------------------------------------- stage 1: training G


def gradient_l1(x: jax.Array) -> jax.Array:
    """Mean |∂x| + mean |∂y| of a (B, H, W, C) field (the smoothness ‖∇F‖₁ of Sec. 2.1)."""
    return jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1])) + jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1]))


@dataclasses.dataclass(frozen=True)
class TimeReverse(grain.transforms.RandomMap):
    """With probability ``p`` reverses a ``Windows`` window in time. Returns ``{"frames":
    uint8 (4, H, W, 3), "flows": float32 (3, H, W, 2)}``, the flows F_{i→i+1} between
    consecutive frames in the window's (possibly reversed) time order, and with ``back``
    also ``"back"``: F_{i+1→i}, each pair's flow pointing back in that order (reversed: the
    forward flows in reversed order, and the other way round)."""

    p: float = 0.5
    back: bool = False

    def random_map(self, element, rng):
        if rng.random() < self.p:
            out = {"frames": element["frames"][::-1].copy(), "flows": element["bwd"][::-1].copy()}
            if self.back:
                out["back"] = element["fwd"][::-1].copy()
        else:
            out = {"frames": element["frames"], "flows": element["fwd"]}
            if self.back:
                out["back"] = element["bwd"]
        return out


def needs_back_flows(inputs: str, warp: str) -> bool:
    """Whether G's input holds flows pointing back in time: ``reconstruct`` with a backward warp."""
    return inputs == "reconstruct" and warp == "backward"


def g_inputs(frames: Array, flows: Array, back: Array | None, inputs: str, warp: str) -> tuple[Array, Array]:
    """G's input for the step from a window's frame 2 to frame 3 (``flow_predictor.inputs``):

      - ``past``: frames 0, 1, 2 and the flows F_{0→1}, F_{1→2} (the target frame unseen);
      - ``reconstruct`` (Eq. 1: F̂_{t→t+1} = G(I_{t0:t+1}, F_{t0+1:t+1}); the authors' code
        feeds its SDC-Net the target frame too): frames 1, 2, 3 and the flows of pairs
        (1, 2), (2, 3) — F_{i→i+1} (``flows``) for a forward warp, F_{i+1→i} (``back``) for
        a backward one, i.e. on the grid where T uses the predicted flow — so G sees
        I_{t+1} and the optical flow into it, and refines that flow.

    Args:
      frames: (B, 4, H, W, 3) float, oldest first. flows, back: (B, 3, H, W, 2) float (dx,
        dy) px, F_{i→i+1} and F_{i+1→i}; ``back`` may be None unless ``needs_back_flows``.

    Returns:
      (frames (B, 3, H, W, 3), flows (B, 2, H, W, 2)) for ``MotionFlowPredictor``.

    Raises:
      ValueError: an unknown ``inputs``, or ``back`` missing where it is needed.
    """
    if inputs == "past":
        return frames[:, :3], flows[:, :2]
    if inputs != "reconstruct":
        raise ValueError(f"config.flow_predictor.inputs={inputs!r}; expected one of {G_INPUTS}")
    if needs_back_flows(inputs, warp):
        if back is None:
            raise ValueError("reconstruct inputs with a backward warp need the flows pointing back (TimeReverse(back=True))")
        return frames[:, 1:4], back[:, 1:3]
    return frames[:, 1:4], flows[:, 1:3]


# ----------------------------------------------------------------------------- flow statistics

FLOW_STATS = "flow_stats.json"  # in WORKDIR/flow_predictor/


def estimate_flow_statistics(seq: TrainSequence) -> dict[str, Any]:
    """G's flow normalisation constants from the training set's optical flows.

    G is trained on windows reversed in time at random and propagates labels both ways, so
    the flows it sees are F_{n→n+1} and F_{n+1→n} alike: their mean is zero by symmetry,
    and the constants are taken with a zero mean — a fresh G whose output layer is zero
    (``output_init='zero'``) then predicts F̂ = 0 exactly in both time directions (SDC-Net's
    constant mean, (−0.94, −1.23) px, is a forward-time driving-video statistic and would
    push every step one way). The scale is the root mean square of each component over every
    stored flow field of the training part: F_{n→n+1} (``seq.flow_fwd``, the dataset's)
    for every frame with a successor in its video and F_{n→n−1} (``seq.flow_bwd``) for
    every frame with a predecessor, floored at 1e-3 px.

    Returns:
      {"mean": [0.0, 0.0], "std": [σx, σy] px, "forward_mean": [mx, my] px (the mean of the
      forward flows alone, for information), "flow_fields": how many fields were read}.
    """
    n = np.arange(len(seq))
    fwd, bwd = n[n < seq.ends], n[n > seq.starts]
    squares, forward_sum, count, forward_count = np.zeros(2), np.zeros(2), 0, 0
    for rows, field, forward in ((fwd, seq.flow_fwd, True), (bwd, seq.flow_bwd, False)):
        for r in rows:
            f = np.asarray(field[r], np.float64).reshape(-1, 2)
            squares += np.sum(f * f, axis=0)
            count += f.shape[0]
            if forward:
                forward_sum += np.sum(f, axis=0)
                forward_count += f.shape[0]
    std = np.maximum(np.sqrt(squares / max(count, 1)), 1e-3)
    forward_mean = forward_sum / max(forward_count, 1)
    return {"mean": [0.0, 0.0], "std": [float(v) for v in std], "forward_mean": [float(v) for v in forward_mean],
            "flow_fields": int(len(fwd) + len(bwd))}


def flow_statistics(config: ml_collections.ConfigDict, seq: TrainSequence, workdir: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """G's (flow_mean, flow_std), each (dx, dy) px, by ``config.flow_predictor.flow_stats``:
    'training' (``estimate_flow_statistics``, zero mean) or 'sdc' (SDC-Net's buffers, the
    authors' code). Stored in ``WORKDIR/flow_predictor/flow_stats.json`` before G trains and
    read back from there afterwards (a resumed run, the propagate stage of a later run, a
    flow_predictor stage taken from another run), so G is always used with the constants
    it was trained with.

    Raises:
      ValueError: an unknown ``flow_stats``.
    """
    mode = config.flow_predictor.flow_stats
    if mode not in FLOW_STATS_MODES:
        raise ValueError(f"config.flow_predictor.flow_stats={mode!r}; expected one of {FLOW_STATS_MODES}")
    path = os.path.join(workdir, "flow_predictor", FLOW_STATS)
    stats = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
        if stats.get("flow_stats") != mode:
            stats = None
    if stats is None:
        if mode == "sdc":
            stats = {"mean": list(SDC_FLOW_MEAN), "std": list(SDC_FLOW_STD)}
        else:
            stats = estimate_flow_statistics(seq)
        stats["flow_stats"] = mode
        if jax.process_index() == 0:  # every process computes the same values from the same frames
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json(path, stats)
    return tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])


def build_flow_predictor(config: ml_collections.ConfigDict, flow_mean: tuple[float, float], flow_std: tuple[float, float]) -> MotionFlowPredictor:
    """G for ``config.flow_predictor`` with the normalisation constants of ``flow_statistics``."""
    fp = config.flow_predictor
    return MotionFlowPredictor(num_frames=3, base_features=fp.base_features, flow_mean=flow_mean, flow_std=flow_std, output_init=fp.output_init)


def make_flow_predictor_step(model, config, vgg_model, vgg_params, mesh):
    """The jitted step of G: Î_{t+1} = T(I_t, G(``g_inputs``)), loss of Sec. 2.1 (Eq. 3)."""
    fp = config.flow_predictor
    weights = G_LOSS_WEIGHTS[fp.weights]
    layers = tuple(fp.perceptual_layers)

    def step(state, batch, vgg_params):
        frames = pipeline.images_to_float(batch["frames"])
        flows = batch["flows"].astype(jnp.float32)
        back = batch["back"].astype(jnp.float32) if "back" in batch else None
        src, target = frames[:, 2], frames[:, 3]
        g_frames, g_flows = g_inputs(frames, flows, back, fp.inputs, config.warp)

        def loss_fn(params):
            flow = model.apply({"params": params}, g_frames, g_flows)
            pred = warp_image(src, flow, config.warp)
            terms = {"l1": jnp.mean(jnp.abs(pred - target)), "smooth": gradient_l1(flow)}
            if weights["perceptual"] or weights["style"]:
                fa = vgg_model.apply({"params": vgg_params}, pred)
                fb = jax.lax.stop_gradient(vgg_model.apply({"params": vgg_params}, target))
                if weights["perceptual"]:
                    terms["perceptual"] = perceptual_loss(fa, fb, layers=layers)
                if weights["style"]:
                    terms["style"] = style_loss(fa, fb, layers=layers)
            if weights["image_gradient"]:
                terms["image_gradient"] = jnp.mean(jnp.abs(
                    jnp.diff(pred, axis=1)[:, :, :-1] - jnp.diff(target, axis=1)[:, :, :-1]
                )) + jnp.mean(jnp.abs(jnp.diff(pred, axis=2)[:, :-1] - jnp.diff(target, axis=2)[:, :-1]))
            loss = sum(weights[k] * v for k, v in terms.items())
            return loss, terms

        state, loss, terms, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss, **terms}

    return step_lib.jit_step(step, mesh, frozen=vgg_params)


def train_flow_predictor(config, workdir, seq: TrainSequence, mesh) -> tuple[MotionFlowPredictor, Any]:
    """Stage 1: the flow statistics (``flow_statistics``), then G trained (or resumed, or
    restored when complete) on ``Windows`` of the training frames, reversed in time with
    probability ``flow_predictor.time_reverse_p``; returns (G, its params on the host)."""
    fp = config.flow_predictor
    model = build_flow_predictor(config, *flow_statistics(config, seq, workdir))
    h, w = config.resize
    params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), jnp.zeros((1, 3, h, w, 3)), jnp.zeros((1, 2, h, w, 2)))["params"]
    tx, schedule = make_optimizer(fp)
    state = step_lib.put_replicated(TrainState.create(params, tx, schedule=schedule), mesh)
    vgg_model, vgg_params = make_vgg(config, tuple(fp.perceptual_layers))
    step = make_flow_predictor_step(model, config, vgg_model, vgg_params, mesh)
    reverse = TimeReverse(fp.time_reverse_p, back=needs_back_flows(fp.inputs, config.warp))
    state = stage.train("flow_predictor", fp, config, workdir, state, step, Windows(seq), reverse, mesh)
    return model, jax.device_get(state.params)
