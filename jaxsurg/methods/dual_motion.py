"""Dual Motion Flow (Zhao et al., MICCAI 2020): semi-supervised segmentation of sparsely
labelled surgical video by learned motion (paper ``dual_motion_flow_zhao2020``).

Stages, each resumable and each with its own outputs under ``WORKDIR/<stage>/``:

1. ``flow_predictor``: G (``MotionFlowPredictor``, SDC-Net layout) learns, on windows of 4
   consecutive training frames (labels unused), to predict F̂_{t→t+1} from
   (I_{t−2..t}, their flows) so that Î_{t+1} = T(I_t, F̂) ≈ I_{t+1} (Sec. 2.1, Eq. 1):
   loss = w_l1·L1 + w_p·perceptual (VGG16 features) + w_s·‖∇F̂‖₁ (paper 0.7 / 0.2 / 0.1;
   ``flow_predictor.weights='code'``: the authors' 2·L1 + 1000·Gram + 0.2·smooth +
   0.1·image-gradient). Time is reversed with probability ``time_reverse_p`` (0.5), so G
   also predicts backward motion. T = forward splatting (paper) or, with
   ``config.warp='backward'``, backward sampling (the authors' code). G's output layer
   starts at zero (``flow_predictor.output_init``; 'sdc' = SDC-Net's initialisation).
2. ``propagate`` (joint propagation, Eq. 2): from every labelled training frame l, G's
   motion is chained step by step in both directions for up to ``propagation_steps`` = k
   steps (the paper's k = 1, 2, 4), inside the video's training part:
   (Î_{l±j}, L̂_{l±j}) = (T(Î_{l±(j−1)}, F̂), T(L̂_{l±(j−1)}, F̂)) — the warped label is
   paired with the warped frame, never with the raw one. G's input is always the RAW
   frames before the current position (in the direction of travel) and their flows (edge
   frames repeated with zero flow at a video's start). D_R holds one pair per unlabelled
   training frame reached: the propagation from the NEAREST labelled frame; on a tie (even
   ``label_interval``) the earlier labelled frame propagated forward wins. Unlabelled
   frames farther than k from every labelled frame get no D_R pair. Written to
   ``propagate/d_r`` (``jaxsurg.data.generated``), with ``propagate/sequence.png`` (the
   rebuilt training sequence: raw frames / propagated frames / their labels, paper Fig. 3)
   and ``propagate/quality.json`` (``propagation_quality``: the propagated labels scored
   against the ground truth the run holds back, per k, next to copying the labelled
   frame's label unchanged; also in ``eval/summary.json`` as ``d_r_quality``).
   ``config.motion='optical_flow'`` chains the stored optical flow F_{p→p±1} instead of
   G's motion (label propagation by optical flow, as MFTAPNet, the paper's ref. [10], does;
   an ablation of G), and stage 1 is skipped.
3. ``compensator``: the flow compensator (``FlowCompensator``, 5-stage U-Net) trained on
   consecutive training pairs (I0, I1) with F_{0→1} (the dataset's stored flow) and
   F_{1→0} (``flow.optical_flow(I1, I0, config.flow_method)`` on the host), Eq. (4)
   approximations at t = ``compensator.t`` (0.5), the cycle of Eq. (5) and the cycle loss
   (Eq. 6, λ0 = 1.0, λi = 0.8, λ1 = 2.0, λp = 0.01). Then D_C (``compensator/d_c``): for
   every consecutive training pair (f, f + 1) whose frame f has a label pair in the rebuilt
   sequence — (I_f, L_f) for a labelled f, its D_R pair (Î_f, L̂_f) otherwise — the
   compensated pair (T(I_f, F̂_{0→t}), T(L_f, F̂_{0→t})) at position f + t (interpolation
   rate 1: N + M − 1 pairs when every frame has a pair). With a backward warp the refined
   F̂_{t→0} is sampled instead (the flow on the target grid). Single MF
   (``segment='single'``) does not use D_C and skips this stage.
4. ``segment``: U-Net11 (``methods.unet11``) with the TernausNet loss on D_L ∪ D_R ∪ D_C
   (``config.segment='dual'``), D_L ∪ D_R (``'single'``, Single MF), or Dual MF★
   (``'dual_convlstm'``: ``UNet11ConvLSTM`` on clips of ``convlstm.clip_length`` = 5
   consecutive entries of the rebuilt sequence 0, 0.5, 1, … with Adam 1e-4 on the ConvLSTM
   and 1e-5 elsewhere).
5. ``eval``: ``evaluate.evaluate_segmentation`` on the test frames → ``eval/summary.json``
   (with the optical-flow estimators, the sizes of D_L/D_R/D_C and each stage's seconds).

Every stage works on the training frames resized to ``config.resize`` (H, W multiples of
64, G's constraint); U-Net11 trains on random ``config.image_size`` crops of those.
Frame positions in D_R / D_C are indices in the video's training part (0, 1, …).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import cv2
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg import evaluate, metrics
from jaxsurg.data import flow as flow_lib
from jaxsurg.data import generated, pipeline, transforms
from jaxsurg.losses import cross_entropy, ternaus_loss
from jaxsurg.losses.cycle import cycle_loss
from jaxsurg.losses.perceptual import perceptual_loss, style_loss
from jaxsurg.methods import common
from jaxsurg.methods import unet11 as unet11_method
from jaxsurg.models.convlstm import UNet11ConvLSTM, param_labels
from jaxsurg.models.flow_predictor import MotionFlowPredictor
from jaxsurg.models.unet import FlowCompensator
from jaxsurg.models.vgg16 import VGG16Features
from jaxsurg.ops.intermediate_flow import cycle_warps, intermediate_flows
from jaxsurg.ops.warp import (
    backward_warp,
    backward_warp_labels,
    forward_warp,
    forward_warp_labels,
)
from jaxsurg.train import checkpoint, loop
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train.state import TrainState, adam_with_step_decay
from jaxsurg.train.writers import write_json
from jaxsurg.weights.vgg16 import vgg16_input_convention, vgg16_params

STAGES = ("flow_predictor", "propagate", "compensator", "segment", "eval")
SEGMENT_MODES = ("dual", "single", "dual_convlstm")
WARPS = ("forward", "backward")
MOTIONS = ("learned", "optical_flow")
G_MULTIPLE = 64  # MotionFlowPredictor needs H, W multiples of 64
# The flow predictor's loss weights: the paper's Sec. 2.1 and the authors' code (REFERENCE.md).
G_LOSS_WEIGHTS = {
    "paper": dict(l1=0.7, perceptual=0.2, style=0.0, smooth=0.1, image_gradient=0.0),
    "code": dict(l1=2.0, perceptual=0.0, style=1000.0, smooth=0.2, image_gradient=0.1),
}


# ----------------------------------------------------------------------------- config and data


def resolve(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> ml_collections.ConfigDict:
    """Checks the Dual MF keys and fills ``resize`` (the dataset default or the native frame
    size) and the step counts from ``epochs`` (of the segmentation set, of G and of the
    compensator; their epoch sizes are approximated from the number of training frames,
    because D_R and D_C do not exist yet). Returns a copy.

    Raises:
      ValueError: unknown ``segment`` / ``warp`` / ``motion`` / ``flow_predictor.weights``, ``resize`` not
        multiples of 64, ``image_size`` larger than ``resize`` or not multiples of 32,
        ``propagation_steps`` < 1.
    """
    # One segmentation epoch ≈ |D_L ∪ D_R ∪ D_C| ≈ 2 × the training frames ('dual'), or the
    # training frames ('single'); one epoch of G / the compensator ≈ the training frames.
    num_frames = len(data.train_all_rows)
    c = common.resolve_config(config, num_frames * (1 if config.segment == "single" else 2))
    for sub in (c.flow_predictor, c.compensator):
        steps_per_epoch = max(1, -(-num_frames // sub.batch_size))
        if sub.epochs > 0:
            sub.total_steps = sub.epochs * steps_per_epoch
        if sub.lr_decay_every_epochs > 0:
            sub.lr_decay_every = sub.lr_decay_every_epochs * steps_per_epoch
    if c.resize is None:
        h, w = np.asarray(data.train_source[int(data.train_all_rows[0])]["image"]).shape[:2]
        with c.ignore_type():
            c.resize = (int(h), int(w))
    if c.segment not in SEGMENT_MODES:
        raise ValueError(f"config.segment={c.segment!r}; expected one of {SEGMENT_MODES}")
    if c.warp not in WARPS:
        raise ValueError(f"config.warp={c.warp!r}; expected one of {WARPS}")
    if c.motion not in MOTIONS:
        raise ValueError(f"config.motion={c.motion!r}; expected one of {MOTIONS}")
    if c.flow_predictor.weights not in G_LOSS_WEIGHTS:
        raise ValueError(f"config.flow_predictor.weights={c.flow_predictor.weights!r}; expected one of {tuple(G_LOSS_WEIGHTS)}")
    rh, rw = c.resize
    if rh % G_MULTIPLE or rw % G_MULTIPLE:
        raise ValueError(f"config.resize={tuple(c.resize)} must be multiples of {G_MULTIPLE} (the flow predictor's input)")
    ih, iw = c.image_size
    if ih % 32 or iw % 32 or ih > rh or iw > rw:
        raise ValueError(f"config.image_size={tuple(c.image_size)} must be multiples of 32 and fit in config.resize={tuple(c.resize)}")
    if c.propagation_steps < 1:
        raise ValueError(f"config.propagation_steps={c.propagation_steps} must be >= 1")
    return c


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float (H, W, 2) flow in pixels → (h, w, 2) at ``size`` = (h, w), bilinear, with
    (dx, dy) scaled by (w/W, h/H) so it stays in pixels of the new frame."""
    h, w = size
    if flow.shape[:2] == (h, w):
        return flow.astype(np.float32)
    out = cv2.resize(flow.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return out * np.array([w / flow.shape[1], h / flow.shape[0]], np.float32)


@dataclasses.dataclass
class TrainSequence:
    """The training part of every video at the working size, in memory (host numpy).

    Attributes (N training frames, in (video, time) order):
      frames: uint8 (N, H, W, 3). masks: uint8 (N, H, W), 255 on unlabelled frames.
      labelled: bool (N,), the labelled subset for ``config.label_interval``.
      video_id: int (N,). position: int (N,) index of the frame in its video's training part.
      flow_fwd: float32 (N, H, W, 2) F_{n→n+1} (the dataset's stored flow; 0 on a video's last frame).
      flow_bwd: float32 (N, H, W, 2) F_{n→n−1} (``optical_flow`` on the host; 0 on its first frame).
      starts, ends: int (N,) the first / last row of each frame's video.
      true_masks: uint8 (N, H, W) the dataset's ground truth of every training frame (255
        where it has none), held back from training: only ``propagation_quality`` reads it,
        to score the propagated labels of frames whose labels the run pretends not to have.
        None when unknown.
    """

    frames: np.ndarray
    masks: np.ndarray
    labelled: np.ndarray
    video_id: np.ndarray
    position: np.ndarray
    flow_fwd: np.ndarray
    flow_bwd: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    true_masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


def load_train_sequence(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> TrainSequence:
    """Reads every training record (``data.train_all_rows``), resizes it to ``config.resize``
    and computes the backward flows with ``config.flow_method``."""
    rows = np.asarray(data.train_all_rows)
    size = tuple(config.resize)
    frames = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask", "flow"))
    labelled_rows = set(int(r) for r in data.train_rows)
    has_label = data.train_index.has_label[rows]
    imgs, masks, truth, fwd = [], [], [], []
    for i in range(len(frames)):
        ex = transforms.resize(frames[i], size)
        imgs.append(ex["image"][0])
        truth.append(ex["mask"][0] if has_label[i] else np.full(size, 255, np.uint8))
        masks.append(truth[-1] if int(rows[i]) in labelled_rows else np.full(size, 255, np.uint8))
        fwd.append(ex["flow"][0].astype(np.float32))
    video_id = data.train_index.video_id[rows].astype(np.int64)
    n = len(rows)
    new_video = np.ones(n, bool)
    new_video[1:] = (video_id[1:] != video_id[:-1]) | (rows[1:] != rows[:-1] + 1)
    group = np.cumsum(new_video) - 1
    first = np.flatnonzero(new_video)
    last = np.append(first[1:] - 1, n - 1)
    starts, ends = first[group], last[group]
    position = np.arange(n) - starts
    frames_arr = np.stack(imgs)
    flow_fwd = np.stack(fwd)
    flow_fwd[ends == np.arange(n)] = 0.0
    flow_bwd = np.zeros_like(flow_fwd)
    for i in range(n):
        if i > starts[i]:
            flow_bwd[i] = flow_lib.optical_flow(frames_arr[i], frames_arr[i - 1], method=config.flow_method)
    labelled = np.array([int(r) in labelled_rows for r in rows])
    return TrainSequence(frames_arr, np.stack(masks), labelled, video_id, position, flow_fwd, flow_bwd, starts, ends, np.stack(truth))


def _batches(examples, transform, config, batch_size: int, mesh, start: int):
    return pipeline.global_batches(
        examples, transform, seed=config.seed, batch_size=batch_size, mesh=mesh, start_step=start,
        num_threads=config.data_threads,
    )


@dataclasses.dataclass(frozen=True)
class Identity(grain.transforms.RandomMap):
    """No augmentation."""

    def random_map(self, element, rng):
        del rng
        return element


def _loop_config(stage: str, sub: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> loop.LoopConfig:
    return loop.LoopConfig(
        stage=stage, total_steps=sub.total_steps, log_every=sub.log_every, checkpoint_every=sub.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints, examples_per_step=sub.batch_size,
    )


def make_vgg(config: ml_collections.ConfigDict, layers: tuple[str, ...]) -> tuple[VGG16Features, Any]:
    """The frozen VGG16 feature extractor for ``layers`` and its params from
    ``config.vgg16_weights`` ('random' warns: such features are not the paper's)."""
    model = VGG16Features(layers=tuple(layers), input_convention=vgg16_input_convention(config.vgg16_weights))
    h, w = config.resize
    params = jax.jit(model.init)(jax.random.PRNGKey(config.seed + 3), jnp.zeros((1, h, w, 3)))["params"]
    return model, vgg16_params(config.vgg16_weights, params)


def gradient_l1(x: jax.Array) -> jax.Array:
    """Mean |∂x| + mean |∂y| of a (B, H, W, C) field (the smoothness ‖∇F‖₁ of Sec. 2.1)."""
    return jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1])) + jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1]))


def warp_image(image: jax.Array, flow: jax.Array, warp: str) -> jax.Array:
    """T(image, flow): ``forward_warp`` (paper) or ``backward_warp`` with border clamp (code)."""
    return forward_warp(image, flow) if warp == "forward" else backward_warp(image, flow)


def warp_labels(labels: jax.Array, flow: jax.Array, num_classes: int, warp: str) -> jax.Array:
    """T(L, flow) for int (B, H, W) class maps (255 = ignore): per-class splatting + argmax
    (forward) or nearest sampling (backward)."""
    if warp == "forward":
        return forward_warp_labels(labels, flow, num_classes)
    return backward_warp_labels(labels, flow, num_classes)


# ----------------------------------------------------------------------------- stage 1: flow predictor


class Windows:
    """Random-access windows of 4 consecutive frames of one video: ``{"frames": uint8
    (4, H, W, 3), "fwd": float32 (3, H, W, 2) F_{s+i→s+i+1}, "bwd": float32 (3, H, W, 2)
    F_{s+i+1→s+i}}`` for window start s."""

    def __init__(self, seq: TrainSequence, length: int = 4):
        self.seq, self.length = seq, length
        n = np.arange(len(seq))
        self.starts = n[n + length - 1 <= seq.ends]
        if len(self.starts) == 0:
            raise ValueError(f"no video has {length} consecutive training frames (the flow predictor needs them)")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s, n = int(self.starts[i]), self.length
        return {
            "frames": self.seq.frames[s : s + n], "fwd": self.seq.flow_fwd[s : s + n - 1],
            "bwd": self.seq.flow_bwd[s + 1 : s + n],
        }


@dataclasses.dataclass(frozen=True)
class TimeReverse(grain.transforms.RandomMap):
    """With probability ``p`` reverses a window in time (frames reversed, flows = the
    backward flows in reversed order); returns ``{"frames", "flows"}``."""

    p: float = 0.5

    def random_map(self, element, rng):
        if rng.random() < self.p:
            return {"frames": element["frames"][::-1].copy(), "flows": element["bwd"][::-1].copy()}
        return {"frames": element["frames"], "flows": element["fwd"]}


def build_flow_predictor(config: ml_collections.ConfigDict) -> MotionFlowPredictor:
    fp = config.flow_predictor
    return MotionFlowPredictor(num_frames=3, base_features=fp.base_features, output_init=fp.output_init)


def make_flow_predictor_step(model, tx, config, vgg_model, vgg_params, mesh):
    """The jitted step of G: Î_{t+1} = T(I_t, G(I_{t−2..t}, flows)), loss of Sec. 2.1."""
    fp = config.flow_predictor
    weights = G_LOSS_WEIGHTS[fp.weights]
    layers = tuple(fp.perceptual_layers)

    def step(state, batch, vgg_params):
        frames = pipeline.images_to_float(batch["frames"])
        flows = batch["flows"].astype(jnp.float32)
        src, target = frames[:, 2], frames[:, 3]

        def loss_fn(params):
            flow = model.apply({"params": params}, frames[:, :3], flows[:, :2])
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

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss, **terms}

    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    jitted = jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)
    vgg_params = jax.device_put(vgg_params, rep)
    return lambda state, batch: jitted(state, batch, vgg_params)


def train_flow_predictor(config, workdir, seq: TrainSequence, mesh) -> tuple[MotionFlowPredictor, Any]:
    """Stage 1; returns (G, its params)."""
    fp = config.flow_predictor
    model = build_flow_predictor(config)
    h, w = config.resize
    params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), jnp.zeros((1, 3, h, w, 3)), jnp.zeros((1, 2, h, w, 2)))["params"]
    tx, schedule = adam_with_step_decay(fp.learning_rate, decay_factor=fp.lr_decay_factor, decay_every=fp.lr_decay_every)
    state = jax.device_put(TrainState.create(params, tx), mesh_lib.replicated(mesh))
    layers = tuple(fp.perceptual_layers)
    vgg_model, vgg_params = make_vgg(config, layers)
    step = make_flow_predictor_step(model, tx, config, vgg_model, vgg_params, mesh)
    examples = Windows(seq)
    state = loop.train(
        _loop_config("flow_predictor", fp, config), workdir, state, step,
        lambda start: _batches(examples, TimeReverse(fp.time_reverse_p), config, fp.batch_size, mesh, start),
        schedule,
    )
    return model, jax.device_get(state.params)


# ----------------------------------------------------------------------------- stage 2: propagation


def history(seq: TrainSequence, p: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """G's input at row ``p`` moving in direction ``d`` (+1 forward, −1 backward in time):
    the raw frames at p − 2d, p − d, p (uint8 (3, H, W, 3), oldest first in the direction
    of travel) and the flows between them in that direction (float32 (2, H, W, 2)). Rows
    outside the video's training part are replaced by the nearest one, with zero flow."""
    lo, hi = int(seq.starts[p]), int(seq.ends[p])
    idx = [p - 2 * d, p - d, p]
    inside = [lo <= q <= hi for q in idx]
    clamped = [min(max(q, lo), hi) for q in idx]
    frames = seq.frames[clamped]
    flows = np.zeros((2, *seq.frames.shape[1:3], 2), np.float32)
    for i in range(2):
        if inside[i] and inside[i + 1]:
            flows[i] = seq.flow_fwd[idx[i]] if d > 0 else seq.flow_bwd[idx[i]]
    return frames, flows


def propagation_plan(seq: TrainSequence, k: int) -> dict[int, tuple[int, int, int]]:
    """For every unlabelled row u reachable within ``k`` steps of a labelled row of its
    video: (labelled row l, direction d, steps j) with u = l + d·j, the nearest labelled
    row (a tie goes to the earlier labelled row, propagated forward)."""
    plan: dict[int, tuple[int, int, int]] = {}
    for u in np.flatnonzero(~seq.labelled):
        best = None
        for j in range(1, k + 1):
            for d in (+1, -1):  # forward propagation (from u − j) first: wins ties
                l = u - d * j
                if seq.starts[u] <= l <= seq.ends[u] and seq.labelled[l]:
                    best = (int(l), d, j)
                    break
            if best:
                break
        if best:
            plan[int(u)] = best
    return plan


def optical_flow_motion(seq: TrainSequence, warp: str) -> Callable:
    """The stored optical flow as the motion model of ``joint_propagation``
    (``config.motion='optical_flow'``), float32 (B, H, W, 2) in pixels, for a step from row
    p in direction d: on the source grid for a forward warp (F_{p→p+d}: ``seq.flow_fwd[p]``
    for d = +1, ``seq.flow_bwd[p]`` for −1), on the target grid for a backward warp
    (F_{p+d→p}: ``seq.flow_bwd[p + 1]`` for +1, ``seq.flow_fwd[p − 1]`` for −1). The
    target row p + d is clamped to the video's training part: ``joint_propagation`` steps a
    chain that needs fewer steps than its batch's longest from the clamped edge row, and
    discards those results, so they must only stay inside the video. Frames and history
    flows are unused."""

    def motion(frames, flows, rows, directions):
        out = []
        for r, d in zip(rows, directions):
            if warp == "forward":
                out.append(seq.flow_fwd[r] if d > 0 else seq.flow_bwd[r])
            else:
                q = min(max(int(r) + int(d), int(seq.starts[r])), int(seq.ends[r]))
                out.append(seq.flow_bwd[q] if d > 0 else seq.flow_fwd[q])
        return np.stack(out)

    return motion


def make_motion_fn(model: MotionFlowPredictor, params) -> Callable:
    """G as the motion model of ``joint_propagation``: (frames uint8 (B, 3, H, W, 3), flows
    (B, 2, H, W, 2), rows, directions) → F̂ (B, H, W, 2); rows and directions are unused (G
    sees only the frames and flows)."""
    fn = jax.jit(lambda p, frames, flows: model.apply({"params": p}, pipeline.images_to_float(frames), flows))
    return lambda frames, flows, rows, directions: fn(params, frames, flows)


@functools.partial(jax.jit, static_argnames=("num_classes", "warp"))
def warp_pair(image: jax.Array, labels: jax.Array, flow: jax.Array, *, num_classes: int, warp: str):
    """One joint-propagation step (Eq. 1–2): (T(image, flow), T(labels, flow)) for float
    (B, H, W, 3) images in [0, 1] and int (B, H, W) labels (255 = ignore)."""
    return warp_image(image, flow, warp), warp_labels(labels, flow, num_classes, warp)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        yield chunk, chunk + [chunk[-1]] * (size - len(chunk))  # padded to a fixed batch


def joint_propagation(
    seq: TrainSequence, plan: dict[int, tuple[int, int, int]], motion_fn: Callable, *, num_classes: int, warp: str, batch_size: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Runs the chains of ``plan`` (from ``propagation_plan``) and returns
    {unlabelled row: (Î uint8 (H, W, 3), L̂ uint8 (H, W))}.

    ``motion_fn(frames, flows, rows, directions) → F̂`` (B, H, W, 2) gives the motion from
    each chain's current row p to p + d: G via ``make_motion_fn`` (which sees the
    ``history`` frames and flows), or the true flow in tests. Each step warps the chain's
    current (Î, L̂) — starting from the labelled (I_l, L_l) — with ``warp_pair``; every
    chain (l, d) runs to its farthest needed step, saving the pairs it passes. Chains are
    processed ``batch_size`` at a time (the last batch padded, so shapes stay fixed).
    """
    need: dict[tuple[int, int], int] = {}
    for l, d, j in plan.values():
        need[(l, d)] = max(need.get((l, d), 0), j)
    chains = sorted(need)
    wanted = {(l, d, j): u for u, (l, d, j) in plan.items()}
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for chunk, padded in _chunks(chains, batch_size):
        image = jnp.asarray(np.stack([seq.frames[l] for l, _ in padded]), jnp.float32) / 255.0
        labels = jnp.asarray(np.stack([seq.masks[l] for l, _ in padded]), jnp.int32)
        for j in range(1, max(need[c] for c in chunk) + 1):
            ps = np.array([min(max(l + d * (j - 1), int(seq.starts[l])), int(seq.ends[l])) for l, d in padded])
            ds = np.array([d for _, d in padded])
            hist = [history(seq, int(p), int(d)) for p, d in zip(ps, ds)]
            flow = motion_fn(np.stack([h[0] for h in hist]), np.stack([h[1] for h in hist]), ps, ds)
            image, labels = warp_pair(image, labels, jnp.asarray(flow, jnp.float32), num_classes=num_classes, warp=warp)
            host_img = np.asarray(jnp.clip(jnp.round(image * 255.0), 0, 255)).astype(np.uint8)
            host_lab = np.asarray(labels).astype(np.uint8)
            for b, (l, d) in enumerate(chunk):
                u = wanted.get((l, d, j))
                if u is not None:
                    out[u] = (host_img[b], host_lab[b])
    return out


def propagation_quality(
    seq: TrainSequence, pairs: dict[int, tuple[np.ndarray, np.ndarray]], plan: dict[int, tuple[int, int, int]], num_classes: int
) -> dict[str, dict[str, Any]]:
    """How good D_R is: the propagated pairs scored against what the run held back.

    For every pair (Î_u, L̂_u) of ``joint_propagation`` (propagated ``plan[u]`` = (l, d, k)
    from labelled row l), grouped by the number of steps k ("k=1", "k=2", ...) and over
    all ("all"):
      - ``label_iou`` / ``label_dice``: per-frame IoU/Dice of L̂_u against the true label of
        frame u (``seq.true_masks``, ``metrics.frame_scores``: binary or the mean over the
        foreground classes present), over the pixels L̂_u covers; mean over the frames with
        ground truth, None when none has any.
      - ``zero_motion_iou`` / ``zero_motion_dice``: the same for L_l copied unchanged to
        frame u, on the same pixels: the baseline a motion model has to beat.
      - ``coverage``: the share of L̂_u's pixels that received a label (not 255), in [0, 1].
      - ``psnr_db`` / ``zero_motion_psnr_db``: PSNR (dB, peak 255) of Î_u and of I_l
        against the real frame I_u over the covered pixels; needs no ground truth.
      - ``frames``: pairs in the group; ``labelled_frames``: those with ground truth.

    Not in the paper: a diagnostic of the D_R of Sec. 2.1 (Eq. 2), possible wherever the
    sparse labels are simulated on a fully labelled video (the paper's own setting).

    Raises:
      KeyError: a row of ``pairs`` missing from ``plan``.
    """
    truth = seq.true_masks if seq.true_masks is not None else np.full_like(seq.masks, metrics.IGNORE_INDEX)
    scored = []
    for u in sorted(pairs):
        l, _, k = plan[u]
        image, label = pairs[u]
        covered = label != metrics.IGNORE_INDEX
        target = np.where(covered, truth[u], metrics.IGNORE_INDEX)
        guesses = np.stack([np.where(covered, label, 0), seq.masks[l]]).astype(np.int32)  # L̂_u, L_l
        counts = jax.device_get(metrics.confusion_counts(guesses, np.stack([target, target]), num_classes))
        s = metrics.frame_scores(counts)
        real = seq.frames[u][covered].astype(np.float64)
        psnr = lambda img: float(10 * np.log10(255.0**2 / max(np.mean((img[covered].astype(np.float64) - real) ** 2), 1e-10)))
        scored.append({
            "k": k, "has_truth": bool((target != metrics.IGNORE_INDEX).any()),
            "label_iou": s["iou"][0], "label_dice": s["dice"][0], "zero_motion_iou": s["iou"][1], "zero_motion_dice": s["dice"][1],
            "coverage": float(covered.mean()),
            "psnr_db": psnr(image) if covered.any() else np.nan, "zero_motion_psnr_db": psnr(seq.frames[l]) if covered.any() else np.nan,
        })

    def aggregate(group: list[dict]) -> dict[str, Any]:
        known = [r for r in group if r["has_truth"]]
        out: dict[str, Any] = {"frames": len(group), "labelled_frames": len(known)}
        for key in ("label_iou", "label_dice", "zero_motion_iou", "zero_motion_dice"):
            out[key] = float(np.mean([r[key] for r in known])) if known else None
        for key in ("coverage", "psnr_db", "zero_motion_psnr_db"):
            values = [r[key] for r in group if not np.isnan(r[key])]
            out[key] = float(np.mean(values)) if values else None
        return out

    out = {f"k={k}": aggregate([r for r in scored if r["k"] == k]) for k in sorted({r["k"] for r in scored})}
    out["all"] = aggregate(scored)
    return out


def sequence_picture(seq: TrainSequence, d_r: dict[int, tuple[np.ndarray, np.ndarray]], rows: np.ndarray) -> np.ndarray:
    """Paper Fig. 3: the rebuilt training sequence for ``rows`` — raw frames (top),
    the frames trained on (raw where labelled, propagated Î elsewhere; black where no pair),
    and their labels (bottom) in colour; labelled columns framed in white. uint8
    (3·s·H, len(rows)·s·W, 3) RGB, s = ceil(120 / H)."""
    h, w = seq.frames.shape[1:3]
    top, mid, bottom = [], [], []
    for r in rows:
        top.append(seq.frames[r])
        if seq.labelled[r]:
            img, lab = seq.frames[r], seq.masks[r]
        elif int(r) in d_r:
            img, lab = d_r[int(r)]
        else:
            img, lab = np.zeros((h, w, 3), np.uint8), np.full((h, w), 255, np.uint8)
        mid.append(img)
        bottom.append(evaluate.colorize(np.zeros_like(img) + 40, lab.astype(np.int64), alpha=1.0))
    pic = np.concatenate([np.concatenate(x, axis=1) for x in (top, mid, bottom)], axis=0)
    for i, r in enumerate(rows):  # mark labelled columns
        if seq.labelled[r]:
            cv2.rectangle(pic, (i * w, 0), (i * w + w - 1, 3 * h - 1), (255, 255, 255), 1)
    scale = max(1, -(-120 // h))  # small frames scaled up (nearest) to stay legible
    return np.repeat(np.repeat(pic, scale, axis=0), scale, axis=1)


def d_r_info(config, num_classes: int) -> dict[str, Any]:
    """The settings a D_R (and the D_C built on it) depends on, recorded in its
    ``meta.json`` and checked by ``generated.reusable`` when a stage would skip it."""
    return {
        "dataset": config.dataset, "task": config.task, "num_classes": num_classes, "resize": list(config.resize),
        "label_interval": config.label_interval, "propagation_steps": config.propagation_steps, "warp": config.warp,
        "motion": config.motion,
    }


QUALITY = "quality.json"


def propagate(config, workdir, seq: TrainSequence, g_model, g_params, num_classes: int) -> generated.GeneratedDataset:
    """Stage 2: writes D_R (``propagate/d_r``), ``propagate/sequence.png`` and
    ``propagate/quality.json``; skipped when D_R is complete and matches the config
    (``generated.reusable``), writing only a missing ``quality.json`` from it."""
    out_dir = os.path.join(workdir, "propagate")
    path = os.path.join(out_dir, "d_r")
    pic_path = os.path.join(out_dir, "sequence.png")
    quality_path = os.path.join(out_dir, QUALITY)
    info = d_r_info(config, num_classes)
    plan = propagation_plan(seq, config.propagation_steps)
    if generated.reusable(path, info) and os.path.exists(pic_path):
        d_r = generated.GeneratedDataset(path)
        if not os.path.exists(quality_path) and jax.process_index() == 0:  # a D_R from before quality.json
            write_json(quality_path, propagation_quality(seq, d_r_by_row(seq, d_r), plan, num_classes))
        return d_r
    motion = optical_flow_motion(seq, config.warp) if config.motion == "optical_flow" else make_motion_fn(g_model, jax.device_put(g_params))
    pairs = joint_propagation(seq, plan, motion, num_classes=num_classes, warp=config.warp, batch_size=config.generate_batch)
    if jax.process_index() == 0:
        quality = propagation_quality(seq, pairs, plan, num_classes)
        logging.info("dual motion: D_R quality %s", quality["all"])
        if not generated.is_complete(path):
            with generated.GeneratedWriter(path, overwrite=True, info=info) as w:
                for u in sorted(pairs):
                    w.add(pairs[u][0], pairs[u][1], video_id=int(seq.video_id[u]), position=float(seq.position[u]), source="propagated", k=plan[u][2])
        first = np.flatnonzero(seq.starts == seq.starts[0])
        rows = first[: min(len(first), 2 * config.label_interval + 1)]
        os.makedirs(out_dir, exist_ok=True)
        cv2.imwrite(pic_path, sequence_picture(seq, pairs, rows)[..., ::-1])
        write_json(quality_path, quality)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxsurg: d_r written")
    return generated.GeneratedDataset(path)


# ----------------------------------------------------------------------------- stage 3: compensator


class Pairs:
    """Consecutive training pairs: ``{"I0", "I1": uint8 (H, W, 3), "F01", "F10": float32 (H, W, 2)}``."""

    def __init__(self, seq: TrainSequence):
        self.seq = seq
        n = np.arange(len(seq))
        self.rows = n[n < seq.ends]
        if len(self.rows) == 0:
            raise ValueError("no video has 2 consecutive training frames (the compensator needs them)")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        f = int(self.rows[i])
        s = self.seq
        return {"I0": s.frames[f], "I1": s.frames[f + 1], "F01": s.flow_fwd[f], "F10": s.flow_bwd[f + 1]}


def compensate(model: FlowCompensator, params, I0, I1, F01, F10, t: float, warp: str) -> tuple[dict, dict]:
    """Eq. (4) approximations, Eq. (5) warps and the compensator's refined flows.

    I0, I1: float (B, H, W, 3) in [0, 1]; F01, F10: (B, H, W, 2). Returns (refined flows
    with keys F_t0, F_t1, F_0t, F_1t; the cycle warps of the refined flows)."""
    approx = intermediate_flows(F01, F10, t)
    warp_fn = forward_warp if warp == "forward" else backward_warp
    w0 = cycle_warps(I0, I1, approx, warp_fn)
    refined = model.apply(
        {"params": params}, I0, I1,
        {"i_to_0": approx["F_t0"], "i_to_1": approx["F_t1"], "0_to_i": approx["F_0t"], "1_to_i": approx["F_1t"]},
        {"forward_i": w0["I_t0"], "forward_1": w0["I_1"], "backward_i": w0["I_t1"], "backward_0": w0["I_0"]},
    )
    flows = {"F_t0": refined["i_to_0"], "F_t1": refined["i_to_1"], "F_0t": refined["0_to_i"], "F_1t": refined["1_to_i"]}
    return flows, cycle_warps(I0, I1, flows, warp_fn)


def make_compensator_step(model, tx, config, vgg_model, vgg_params, mesh):
    """The jitted compensator step with the cycle loss (Eq. 6)."""
    cc = config.compensator
    layers = tuple(cc.perceptual_layers)

    def step(state, batch, vgg_params):
        I0, I1 = pipeline.images_to_float(batch["I0"]), pipeline.images_to_float(batch["I1"])

        def perceptual(a, b):
            return perceptual_loss(vgg_model.apply({"params": vgg_params}, a), vgg_model.apply({"params": vgg_params}, b), layers=layers, distance=cc.perceptual_distance)

        def loss_fn(params):
            _, warps = compensate(model, params, I0, I1, batch["F01"], batch["F10"], cc.t, config.warp)
            return cycle_loss(
                I0, I1, warps, lambda0=cc.lambda0, lambda_i=cc.lambda_i, lambda1=cc.lambda1, lambda_p=cc.lambda_p,
                perceptual=perceptual if cc.lambda_p else None, use_coverage=cc.use_coverage,
            )

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss, **terms}

    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    jitted = jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)
    vgg_params = jax.device_put(vgg_params, rep)
    return lambda state, batch: jitted(state, batch, vgg_params)


def rebuilt_pair(seq: TrainSequence, d_r: dict[int, tuple[np.ndarray, np.ndarray]], f: int):
    """(frame, label) of row f in the rebuilt sequence: raw for a labelled frame, its D_R
    pair otherwise, None without one."""
    if seq.labelled[f]:
        return seq.frames[f], seq.masks[f]
    return d_r.get(int(f))


def d_r_by_row(seq: TrainSequence, d_r: generated.GeneratedDataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """D_R as {training row: (Î, L̂)}."""
    key = {(int(v), int(p)): i for i, (v, p) in enumerate(zip(seq.video_id, seq.position))}
    out = {}
    for i in range(len(d_r)):
        r = d_r[i]
        out[key[(r["video_id"], int(round(r["position"])))]] = (r["image"], r["mask"])
    return out


def train_compensator(config, workdir, seq: TrainSequence, mesh) -> tuple[FlowCompensator, Any]:
    """Stage 3 training; returns (compensator, its params)."""
    cc = config.compensator
    model = FlowCompensator(base_features=cc.base_features)
    h, w = config.resize
    z3, z2 = jnp.zeros((1, h, w, 3)), jnp.zeros((1, h, w, 2))
    params = jax.jit(model.init)(
        jax.random.PRNGKey(config.seed + 1), z3, z3, {k: z2 for k in ("i_to_0", "i_to_1", "0_to_i", "1_to_i")},
        {k: z3 for k in ("forward_i", "forward_1", "backward_i", "backward_0")},
    )["params"]
    tx, schedule = adam_with_step_decay(cc.learning_rate, decay_factor=cc.lr_decay_factor, decay_every=cc.lr_decay_every)
    state = jax.device_put(TrainState.create(params, tx), mesh_lib.replicated(mesh))
    vgg_model, vgg_params = make_vgg(config, tuple(cc.perceptual_layers))
    step = make_compensator_step(model, tx, config, vgg_model, vgg_params, mesh)
    examples = Pairs(seq)
    state = loop.train(
        _loop_config("compensator", cc, config), workdir, state, step,
        lambda start: _batches(examples, Identity(), config, cc.batch_size, mesh, start), schedule,
    )
    return model, jax.device_get(state.params)


def generate_d_c(config, workdir, seq, d_r_pairs, model, params, num_classes: int) -> generated.GeneratedDataset:
    """D_C (``compensator/d_c``): the compensated intermediate pair of every consecutive
    training pair whose first frame has a pair in the rebuilt sequence; skipped when complete."""
    path = os.path.join(workdir, "compensator", "d_c")
    info = {**d_r_info(config, num_classes), "t": config.compensator.t}
    if generated.reusable(path, info):
        return generated.GeneratedDataset(path)
    cc = config.compensator

    @jax.jit
    def fn(params, I0, I1, F01, F10, image, labels):
        flows, _ = compensate(model, params, I0, I1, F01, F10, cc.t, config.warp)
        flow = flows["F_0t"] if config.warp == "forward" else flows["F_t0"]
        return warp_image(image, flow, config.warp), warp_labels(labels, flow, num_classes, config.warp)

    rows = [f for f in Pairs(seq).rows if rebuilt_pair(seq, d_r_pairs, f) is not None]
    records = []
    for chunk, padded in _chunks(rows, config.generate_batch):
        pairs = [rebuilt_pair(seq, d_r_pairs, f) for f in padded]
        f_ = np.asarray(padded)
        img, lab = fn(
            params, jnp.asarray(seq.frames[f_], jnp.float32) / 255.0, jnp.asarray(seq.frames[f_ + 1], jnp.float32) / 255.0,
            seq.flow_fwd[f_], seq.flow_bwd[f_ + 1], jnp.asarray(np.stack([p[0] for p in pairs]), jnp.float32) / 255.0,
            jnp.asarray(np.stack([p[1] for p in pairs]), jnp.int32),
        )
        img = np.asarray(jnp.clip(jnp.round(img * 255.0), 0, 255)).astype(np.uint8)
        lab = np.asarray(lab).astype(np.uint8)
        for b, f in enumerate(chunk):
            records.append(dict(image=img[b], mask=lab[b], video_id=int(seq.video_id[f]), position=float(seq.position[f]) + cc.t, source="compensated", k=0))
    if jax.process_index() == 0:
        generated.write_dataset(path, records, overwrite=True, info=info)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxsurg: d_c written")
    return generated.GeneratedDataset(path)


# ----------------------------------------------------------------------------- stage 4: segmentation


class LabelledFrames:
    """D_L: the labelled training frames at the working size, as dict records."""

    def __init__(self, seq: TrainSequence):
        self.seq, self.rows = seq, np.flatnonzero(seq.labelled)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        return {"image": self.seq.frames[r], "mask": self.seq.masks[r], "video_id": int(self.seq.video_id[r]), "position": float(self.seq.position[r])}


def rebuilt_sequence(d_l: LabelledFrames, sets: list[generated.GeneratedDataset]) -> list[list[tuple[Any, int]]]:
    """Per video, the (source, index) entries of the rebuilt sequence sorted by position."""
    entries: dict[int, list[tuple[float, Any, int]]] = {}
    for i in range(len(d_l)):
        r = d_l.rows[i]
        entries.setdefault(int(d_l.seq.video_id[r]), []).append((float(d_l.seq.position[r]), d_l, i))
    for ds in sets:
        for i, (v, p) in enumerate(zip(ds.video_id, ds.position)):
            entries.setdefault(int(v), []).append((float(p), ds, i))
    out = []
    for v in sorted(entries):
        out.append([(e[0], e[1], e[2]) for e in sorted(entries[v], key=lambda e: e[0])])
    return out


def convlstm_clips(videos, length: int, spacing: float = 0.5) -> list[list[tuple[Any, int]]]:
    """Clips of ``length`` consecutive entries (positions ``spacing`` apart) of the rebuilt sequence."""
    clips = []
    for entries in videos:
        for s in range(len(entries) - length + 1):
            window = entries[s : s + length]
            if all(abs(b[0] - a[0] - spacing) < 1e-6 for a, b in zip(window[:-1], window[1:])):
                clips.append([(e[1], e[2]) for e in window])
    return clips


def make_convlstm_step(model: UNet11ConvLSTM, tx, jaccard_weight: float, mesh):
    """Jitted Dual MF★ step: TernausNet loss over every frame of the clip."""

    def step(state, batch):
        x = pipeline.images_to_float(batch["image"])
        labels = batch["mask"].astype(jnp.int32)

        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            flat, lab = logits.reshape(-1, *logits.shape[2:]), labels.reshape(-1, *labels.shape[2:])
            return ternaus_loss(flat, lab, jaccard_weight=jaccard_weight), (flat, lab)

        (loss, (flat, lab)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss, "cross_entropy": cross_entropy(flat, lab)}

    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def segment_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """(tx, schedule) of the U-Net11 segment stage (Single and Dual MF): Adam with L2 weight
    decay and a staircase learning rate, from ``config`` (REFERENCE.md, "U-Net11")."""
    return adam_with_step_decay(
        config.learning_rate, weight_decay=config.weight_decay,
        decay_factor=config.lr_decay_factor, decay_every=config.lr_decay_every,
    )


def load_segment_params(config, source_workdir: str, num_classes: int, mesh) -> dict[str, Any]:
    """The U-Net11 params of another run's finished ``segment`` stage (Dual MF or Single MF).

    Dual MF★ starts from them (``config.convlstm.init_from``): its U-Net11 layers share
    U-Net11's parameter names, and the paper's learning rates (1e-4 for the new ConvLSTM,
    1e-5 for "other network components") fine-tune a trained segmentation network.

    Returns:
      U-Net11's params on the host (float32 arrays, the tree of ``UNet11.init``: ``encoder``,
      ``center``, ``dec5`` … ``dec1``, ``final``), to merge over a ``UNet11ConvLSTM`` init.

    Raises:
      ValueError: ``source_workdir`` has no segment checkpoint, or one short of
        ``config.total_steps``.
    """
    model = unet11_method.build_model(config, num_classes)
    tx, _ = segment_optimizer(config)
    manager = checkpoint.make_manager(source_workdir, "segment", every=config.checkpoint_every, keep=config.keep_checkpoints)
    state, step = checkpoint.restore_latest(manager, unet11_method.init_state(config, model, tx, mesh))
    manager.close()
    if step < config.total_steps:
        raise ValueError(
            f"config.convlstm.init_from={source_workdir!r}: its segment stage is at step {step}, "
            f"not {config.total_steps}; run Dual MF (config.segment='dual') there first"
        )
    return dict(jax.device_get(state.params))


def segment(config, workdir, seq, d_r, d_c, num_classes: int, mesh):
    """Stage 4; returns (apply_fn for single frames or clips, params, training-set sizes)."""
    d_l = LabelledFrames(seq)
    sets = [d_r] if config.segment == "single" else [d_r, d_c]
    a = config.augment
    augment = pipeline.Augment(
        resize=None, crop=tuple(config.image_size), hflip=a.hflip, vflip=a.vflip, brightness=a.brightness,
        contrast=a.contrast, saturation=a.saturation, hue_degrees=a.hue_degrees,
        squeeze_time=config.segment != "dual_convlstm",
    )
    loop_cfg = loop.LoopConfig(
        stage="segment", total_steps=config.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints, examples_per_step=config.batch_size,
    )
    h, w = config.image_size
    if config.segment == "dual_convlstm":
        cl = config.convlstm
        items = convlstm_clips(rebuilt_sequence(d_l, sets), cl.clip_length)
        if not items:
            raise ValueError(f"the rebuilt sequence has no {cl.clip_length} consecutive entries for config.segment='dual_convlstm'")
        model = UNet11ConvLSTM(num_classes=1 if num_classes == 2 else num_classes, num_filters=config.model.num_filters, convlstm_layers=cl.layers)
        params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), jnp.zeros((1, cl.clip_length, h, w, 3)))["params"]
        if cl.init_from:
            params = {**params, **load_segment_params(config, cl.init_from, num_classes, mesh)}
        tx = optax.multi_transform({"convlstm": optax.adam(cl.lr_convlstm), "base": optax.adam(cl.lr_base)}, param_labels(params))
        state = jax.device_put(TrainState.create(params, tx), mesh_lib.replicated(mesh))
        step = make_convlstm_step(model, tx, config.model.jaccard_weight, mesh)
        schedule = lambda s: cl.lr_base
    else:
        items = [[(d_l, i)] for i in range(len(d_l))] + [[(ds, i)] for ds in sets for i in range(len(ds))]
        model = unet11_method.build_model(config, num_classes)
        tx, schedule = segment_optimizer(config)
        state = unet11_method.init_state(config, model, tx, mesh)
        step = unet11_method.make_train_step(model, tx, config.model.jaccard_weight, mesh)
    examples = generated.FrameExamples(items)
    state = loop.train(loop_cfg, workdir, state, step, lambda start: _batches(examples, augment, config, config.batch_size, mesh, start), schedule)
    sizes = {"D_L": len(d_l), "D_R": len(d_r), "D_C": len(d_c) if d_c is not None else 0, "examples": len(examples)}
    return model, state.params, sizes


class ClipPredictor:
    """A host-side predictor for Dual MF★ on frames given in time order: each frame is
    predicted as the last of a clip of the ``length`` latest frames (the first frames
    repeat the earliest). The window does not know video boundaries: the first
    ``length − 1`` frames of a test video see frames of the previous one."""

    def __init__(self, model: UNet11ConvLSTM, params, length: int):
        self._fn = jax.jit(lambda x: model.apply({"params": params}, x)[:, -1])
        self._length, self._buffer = length, []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for im in images:
            h, w = im.shape[:2]
            padded = evaluate.pad_to_multiple(im[None], 32)[0]
            self._buffer = (self._buffer or [padded] * self._length)[1:] + [padded]
            logits = np.asarray(self._fn(jnp.asarray(np.stack(self._buffer)[None], jnp.float32) / 255.0))[0, :h, :w]
            out.append((logits[..., 0] > 0).astype(np.int32) if logits.shape[-1] == 1 else logits.argmax(-1).astype(np.int32))
        return np.stack(out)


# ----------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """All stages (each resumed or skipped when complete); returns the summary written to
    ``eval/summary.json``."""
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    config = resolve(config, data)
    common.write_config(config, workdir)
    num_classes = len(data.class_names)
    seconds = {}
    t = time.perf_counter()
    seq = load_train_sequence(config, data)
    seconds["load"] = time.perf_counter() - t
    logging.info("dual motion: %d training frames, %d labelled", len(seq), int(seq.labelled.sum()))

    t = time.perf_counter()
    g_model, g_params = train_flow_predictor(config, workdir, seq, mesh) if config.motion == "learned" else (None, None)
    seconds["flow_predictor"] = time.perf_counter() - t
    t = time.perf_counter()
    d_r = propagate(config, workdir, seq, g_model, g_params, num_classes)
    seconds["propagate"] = time.perf_counter() - t
    t = time.perf_counter()
    d_c = None  # Single MF trains on D_L ∪ D_R only: no compensator
    if config.segment != "single":
        c_model, c_params = train_compensator(config, workdir, seq, mesh)
        d_c = generate_d_c(config, workdir, seq, d_r_by_row(seq, d_r), c_model, c_params, num_classes)
    seconds["compensator"] = time.perf_counter() - t
    t = time.perf_counter()
    model, params, sizes = segment(config, workdir, seq, d_r, d_c, num_classes, mesh)
    seconds["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    if config.segment == "dual_convlstm":
        predict = ClipPredictor(model, jax.device_get(params), config.convlstm.clip_length)
    else:
        predict = evaluate.make_predictor(model.apply, {"params": params})
    header = {
        "method": config.method, "segment": config.segment, "dataset": config.dataset, "task": config.task,
        "split": data.split_info, "label_interval": config.label_interval, "train_sizes": sizes,
        "optical_flow": {"forward": f"stored by the {config.dataset} builder", "backward": config.flow_method},
        "warp": config.warp, "propagation_steps": config.propagation_steps, "vgg16_weights": config.vgg16_weights,
        "motion": config.motion,
    }
    quality_path = os.path.join(workdir, "propagate", QUALITY)
    if os.path.exists(quality_path):
        with open(quality_path, encoding="utf-8") as f:
            header["d_r_quality"] = json.load(f)
    summary = evaluate.evaluate_segmentation(
        predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
        class_names=data.class_names, out_dir=os.path.join(workdir, "eval"), header=header,
        batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
    )
    seconds["eval"] = time.perf_counter() - t
    summary["stage_seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "eval", "summary.json"), summary)
    return summary
