"""Intermediate-flow approximation and the warp cycle of Dual Motion Flow's flow compensator.

Zhao et al., "Learning Motion Flows for Semi-supervised Instrument Segmentation from
Robotic Surgical Video", MICCAI 2020, Sec. 2.2, Eq. 4 (intermediate flows, after Super
SloMo) and Eq. 5 (the cycle of warps that the cycle loss, Eq. 6, compares).

Flows follow DESIGN.md: (B, H, W, 2) arrays of ``(dx, dy)`` in pixels; ``F_ab`` is the flow
from frame a to frame b, defined on frame a's pixel grid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from jaxsurg.ops.warp import backward_warp, forward_warp

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
