"""Flow compensation via unsupervised cycle learning (Dual Motion Flow, Sec. 2.2, Eqs. 4–6)
and stage 3, which trains the flow compensator and builds D_C.

Zhao et al., "Learning Motion Flows for Semi-supervised Instrument Segmentation from
Robotic Surgical Video", MICCAI 2020, Sec. 2.2:

- Eq. (4) ``intermediate_flows``: the flows between frames 0, 1 and an intermediate time t
  approximated from F_{0→1} and F_{1→0} (after Super SloMo);
- Eq. (5) ``cycle_warps``: the cycle of warps 0 → t → 1 → t → 0 (forward predicted Î_t0,
  Î_1; backward reconstructed Î_t1, Î_0);
- Eq. (6) ``cycle_loss``: L_cycle = L_c1 + λp·L_cp on the frames of that cycle;
- ``compensate``: Eqs. (4)–(5) and the compensator's refined flows (the network, a 5-stage
  U-Net, is ``compensator_network.FlowCompensator``);
- stage 3: ``make_compensator_step`` / ``train_compensator`` train it on consecutive
  training ``Pairs`` with the cycle loss; ``generate_d_c`` writes D_C (``compensator/d_c``):
  the compensated pair (T(I_f, F̂_{0→t}), T(L_f, F̂_{0→t})) of every consecutive training
  pair whose first frame has a pair in the rebuilt sequence (``rebuilt_pair``).

Flows follow DESIGN.md: (B, H, W, 2) arrays of ``(dx, dy)`` in pixels; ``F_ab`` is the flow
from frame a to frame b, defined on frame a's pixel grid.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg.data import generated, pipeline
from jaxsurg.data.sequences import Identity, Pairs, TrainSequence
from jaxsurg.losses.perceptual import perceptual_loss
from jaxsurg.methods.dual_motion.compensator_network import FlowCompensator
from jaxsurg.methods.dual_motion.propagation import d_r_info
from jaxsurg.methods.dual_motion.training import _chunks, make_vgg
from jaxsurg.methods.dual_motion.transform import warp_image, warp_labels
from jaxsurg.ops.warp import backward_warp, forward_warp
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, make_optimizer

FLOW_KEYS = ("F_t0", "F_t1", "F_0t", "F_1t")
FRAME_KEYS = ("I_t0", "I_1", "I_t1", "I_0")
COVERAGE_KEYS = ("M_t0", "M_1", "M_t1", "M_0")


def _check_flow(name: str, flow: jax.Array) -> None:
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(
            f"{name} must be a (B, H, W, 2) array of (dx, dy), got shape {tuple(flow.shape)}"
        )


def intermediate_flows(
    flow01: jax.Array, flow10: jax.Array, t: float | jax.Array
) -> dict[str, jax.Array]:
    """Approximates the flows between frames 0, 1 and an intermediate time t (Eq. 4).

    With ``F01 = flow01`` and ``F10 = flow10``:

        F_t0 = −(1−t)·t·F01 + t²·F10
        F_t1 = (1−t)²·F01 − t·(1−t)·F10
        F_1t = F10 − F_t0
        F_0t = F01 − F_t1

    For linear motion (F01 = v, F10 = −v) this gives F_t0 = −t·v, F_t1 = (1−t)·v,
    F_0t = t·v, F_1t = −(1−t)·v. Limits: t = 0 gives F_t0 = F_0t = 0, F_t1 = F01,
    F_1t = F10; t = 1 gives F_t1 = F_1t = 0, F_t0 = F10, F_0t = F01.

    Args:
      flow01: float (B, H, W, 2), optical flow from frame 0 to frame 1, in pixels.
      flow10: float (B, H, W, 2), optical flow from frame 1 to frame 0, in pixels.
      t: intermediate time in [0, 1] (not checked: it may be traced), a Python float, a
        scalar array, or a (B,) array with one time per example.

    Returns:
      dict with ``'F_t0', 'F_t1', 'F_0t', 'F_1t'``, each (B, H, W, 2) in the flows' float
      dtype (at least float32).

    Raises:
      ValueError: a flow is not (B, H, W, 2), the two shapes differ, or ``t`` is neither a
        scalar nor a (B,) array.
    """
    _check_flow("flow01", flow01)
    _check_flow("flow10", flow10)
    if flow01.shape != flow10.shape:
        raise ValueError(
            f"flow01 and flow10 must have the same shape, got {flow01.shape} and {flow10.shape}"
        )
    dtype = jnp.result_type(flow01, flow10, jnp.float32)
    t = jnp.asarray(t, dtype)
    if t.ndim == 1 and t.shape[0] == flow01.shape[0]:
        t = t[:, None, None, None]
    elif t.ndim != 0:
        raise ValueError(
            f"t must be a scalar or a (B,) = ({flow01.shape[0]},) array, got shape {t.shape}"
        )
    f01 = flow01.astype(dtype)
    f10 = flow10.astype(dtype)
    f_t0 = -(1.0 - t) * t * f01 + t * t * f10
    f_t1 = (1.0 - t) ** 2 * f01 - t * (1.0 - t) * f10
    return {"F_t0": f_t0, "F_t1": f_t1, "F_0t": f01 - f_t1, "F_1t": f10 - f_t0}


def _warp_direction(warp: Callable) -> str | None:
    fn = warp
    while isinstance(fn, functools.partial):
        fn = fn.func
    if fn is forward_warp:
        return "forward"
    if fn is backward_warp:
        return "backward"
    return None


def cycle_warps(
    I0: jax.Array,  # the paper's notation
    I1: jax.Array,
    flows: dict[str, jax.Array],
    warp: Callable[[jax.Array, jax.Array], jax.Array] = forward_warp,
    *,
    direction: Literal["forward", "backward"] | None = None,
) -> dict[str, jax.Array]:
    """The cycle of warps of Dual Motion Flow's flow compensator (Eq. 5).

    With a forward warp T (the paper; ``T(src, F)`` moves ``src`` along ``F``):

        Î_t0 = T(I0, F_0t),  Î_1 = T(Î_t0, F_t1),  Î_t1 = T(Î_1, F_1t),  Î_0 = T(Î_t1, F_t0).

    A backward warp (the authors' code; ``T(src, F)`` samples ``src`` at ``p + F(p)``) needs
    the flow defined on the *output* frame's grid, pointing back at the source frame, so the
    same cycle 0 → t → 1 → t → 0 uses the opposite flows:

        Î_t0 = T(I0, F_t0),  Î_1 = T(Î_t0, F_1t),  Î_t1 = T(Î_1, F_t1),  Î_0 = T(Î_t1, F_0t).

    For linear motion both give Î_1 = I1 and Î_0 = I0 away from the borders.

    Each step also warps a channel of ones alongside the image, giving the coverage of the
    warped frame: 1 where the whole chain of warps read real pixels, 0 in forward-warp holes
    (and, with ``backward_warp(border='zeros')``, outside the image), fractions in between.
    Coverage multiplies through the chain, so ``M_0`` is the coverage after all four warps.

    Args:
      I0: float (B, H, W, C) frame 0 (images in [0, 1]).
      I1: float (B, H, W, C) frame 1. Eq. 5 does not read it (the cycle starts from I0);
        it is checked for shape because the cycle loss compares Î_1 with it.
      flows: dict with ``'F_t0', 'F_t1', 'F_0t', 'F_1t'`` (B, H, W, 2), e.g. from
        ``intermediate_flows`` or the compensator's refined flows.
      warp: ``forward_warp`` (default), ``backward_warp``, a ``functools.partial`` of either
        (e.g. ``partial(backward_warp, border='zeros')``) or any callable ``(src, flow) →
        warped`` of the same shapes.
      direction: ``'forward'`` or ``'backward'``; which flows ``warp`` expects (see above).
        Inferred for (partials of) ``forward_warp`` and ``backward_warp``; required for other
        callables.

    Returns:
      dict with frames ``'I_t0', 'I_1', 'I_t1', 'I_0'`` (B, H, W, C) and their coverages
      ``'M_t0', 'M_1', 'M_t1', 'M_0'`` (B, H, W, 1) in [0, 1].

    Raises:
      ValueError: shape mismatch, missing flow keys, unknown ``direction`` or one that
        cannot be inferred.
    """
    if I0.ndim != 4:
        raise ValueError(f"I0 must be a (B, H, W, C) array, got shape {tuple(I0.shape)}")
    if I1.shape != I0.shape:
        raise ValueError(f"I1 must have the shape of I0 {tuple(I0.shape)}, got {tuple(I1.shape)}")
    missing = [k for k in FLOW_KEYS if k not in flows]
    if missing:
        raise ValueError(
            f"flows is missing {missing}; expected keys {FLOW_KEYS} (see intermediate_flows)"
        )
    for k in FLOW_KEYS:
        _check_flow(f"flows[{k!r}]", flows[k])
        if tuple(flows[k].shape[:3]) != tuple(I0.shape[:3]):
            raise ValueError(
                f"flows[{k!r}] (B, H, W) = {tuple(flows[k].shape[:3])} must match I0's {tuple(I0.shape[:3])}"
            )
    if direction is None:
        direction = _warp_direction(warp)
        if direction is None:
            raise ValueError(
                "direction must be given ('forward' or 'backward') when warp is not forward_warp, "
                "backward_warp or a functools.partial of them"
            )
    if direction == "forward":
        steps = ("F_0t", "F_t1", "F_1t", "F_t0")
    elif direction == "backward":
        steps = ("F_t0", "F_1t", "F_t1", "F_0t")
    else:
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")

    c = I0.shape[-1]
    x = jnp.concatenate([I0, jnp.ones((*I0.shape[:3], 1), I0.dtype)], axis=-1)
    out: dict[str, jax.Array] = {}
    for frame_key, cov_key, flow_key in zip(FRAME_KEYS, COVERAGE_KEYS, steps):
        x = warp(x, flows[flow_key])
        out[frame_key] = x[..., :c]
        out[cov_key] = jnp.clip(x[..., c:], 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------- Eq. 6: the cycle loss


def _masked_l1(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean absolute error per pixel and channel over ``mask`` (B, H, W, 1); 0 if the mask is empty."""
    num = jnp.sum(jnp.abs(a - b) * mask)
    den = jnp.sum(jnp.broadcast_to(mask, a.shape))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _as_mask(valid: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    valid = jnp.asarray(valid)
    if valid.ndim == 3:
        valid = valid[..., None]
    if valid.ndim != 4 or valid.shape[-1] != 1 or tuple(valid.shape[:3]) != tuple(shape[:3]):
        raise ValueError(
            f"valid must be (B, H, W) or (B, H, W, 1) with (B, H, W) = {tuple(shape[:3])}, got {tuple(valid.shape)}"
        )
    return valid.astype(dtype)


def cycle_loss(
    I0: jax.Array,  # the paper's notation
    I1: jax.Array,
    warps: dict[str, jax.Array],
    *,
    lambda0: float = 1.0,
    lambda_i: float = 0.8,
    lambda1: float = 2.0,
    lambda_p: float = 0.01,
    perceptual: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    valid: jax.Array | None = None,
    use_coverage: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cycle loss L_cycle = L_c1 + λp·L_cp of Dual Motion Flow (Eq. 6).

    Each ‖·‖₁ is a mean absolute error per pixel and channel (over the valid pixels when
    a mask is given). The perceptual term is ``perceptual(Î_0, I_0) + perceptual(Î_t0, Î_t1)
    + perceptual(Î_1, I_1)``, unweighted (the paper applies L_cp "on the three pairs").

    Args:
      I0, I1: float (B, H, W, C) frames 0 and 1 (images in [0, 1]).
      warps: dict from ``cycle_warps`` with ``'I_t0', 'I_1', 'I_t1', 'I_0'`` (B, H, W, C)
        (and ``'M_t0', 'M_1', 'M_t1', 'M_0'`` (B, H, W, 1) when ``use_coverage``).
      lambda0, lambda_i, lambda1, lambda_p: the weights λ0, λi, λ1, λp (paper defaults).
      perceptual: ``(a, b) → scalar`` on two (B, H, W, C) images, e.g. a VGG16 feature
        distance; None leaves the term out (reported as 0).
      valid: optional (B, H, W) or (B, H, W, 1) mask/weights in [0, 1] applied to all three
        L1 terms (e.g. a field-of-view mask). Not applied to the perceptual term.
      use_coverage: also weight each L1 term by the coverage of the warped frames in it
        (M_0; M_t0·M_t1; M_1), so forward-warp holes are left out.

    Returns:
      ``(loss, terms)``: the float scalar L_cycle and a dict of scalars ``'l1_0'``
      (‖Î_0 − I_0‖₁), ``'l1_t'`` (‖Î_t0 − Î_t1‖₁), ``'l1_1'`` (‖Î_1 − I_1‖₁), ``'l_c1'``,
      ``'perceptual'`` and ``'loss'``.

    Raises:
      ValueError: shape mismatch, missing keys in ``warps`` or a badly shaped ``valid``.
    """
    if I0.ndim != 4 or I1.shape != I0.shape:
        raise ValueError(
            f"I0 and I1 must be (B, H, W, C) arrays of one shape, got {I0.shape} and {I1.shape}"
        )
    keys = ("I_t0", "I_1", "I_t1", "I_0") + (("M_t0", "M_1", "M_t1", "M_0") if use_coverage else ())
    missing = [k for k in keys if k not in warps]
    if missing:
        raise ValueError(
            f"warps is missing {missing} (use cycle_warps)"
        )
    for k in ("I_t0", "I_1", "I_t1", "I_0"):
        if warps[k].shape != I0.shape:
            raise ValueError(f"warps[{k!r}] must have I0's shape {I0.shape}, got {warps[k].shape}")
    dtype = jnp.result_type(I0, I1, jnp.float32)
    base = (
        jnp.ones((*I0.shape[:3], 1), dtype) if valid is None else _as_mask(valid, I0.shape, dtype)
    )
    m0 = m_t = m1 = base
    if use_coverage:
        m0 = base * warps["M_0"]
        m_t = base * warps["M_t0"] * warps["M_t1"]
        m1 = base * warps["M_1"]

    l1_0 = _masked_l1(warps["I_0"], I0, m0)
    l1_t = _masked_l1(warps["I_t0"], warps["I_t1"], m_t)
    l1_1 = _masked_l1(warps["I_1"], I1, m1)
    l_c1 = lambda0 * l1_0 + lambda_i * l1_t + lambda1 * l1_1
    if perceptual is None:
        l_cp = jnp.zeros((), dtype)
    else:
        l_cp = (
            perceptual(warps["I_0"], I0)
            + perceptual(warps["I_t0"], warps["I_t1"])
            + perceptual(warps["I_1"], I1)
        )
    loss = l_c1 + lambda_p * l_cp
    terms = {
        "l1_0": l1_0,
        "l1_t": l1_t,
        "l1_1": l1_1,
        "l_c1": l_c1,
        "perceptual": l_cp,
        "loss": loss,
    }
    return loss, terms


# ----------------------------------------------------------------------------- stage 3: the flow compensator and D_C


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


def make_compensator_step(model, config, vgg_model, vgg_params, mesh):
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

        state, loss, terms, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss, **terms}

    return step_lib.jit_step(step, mesh, frozen=vgg_params)


def rebuilt_pair(seq: TrainSequence, d_r: dict[int, tuple[np.ndarray, np.ndarray]], f: int):
    """(frame, label) of row f in the rebuilt sequence: raw for a labelled frame, its D_R
    pair otherwise, None without one."""
    if seq.labelled[f]:
        return seq.frames[f], seq.masks[f]
    return d_r.get(int(f))


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
    tx, schedule = make_optimizer(cc)
    state = step_lib.put_replicated(TrainState.create(params, tx, schedule=schedule), mesh)
    vgg_model, vgg_params = make_vgg(config, tuple(cc.perceptual_layers))
    step = make_compensator_step(model, config, vgg_model, vgg_params, mesh)
    state = stage.train("compensator", cc, config, workdir, state, step, Pairs(seq), Identity(), mesh)
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
    stage.on_host0(lambda: generated.write_dataset(path, records, overwrite=True, info=info), "d_c written")
    return generated.GeneratedDataset(path)
