"""Unsupervised cycle loss of Dual Motion Flow's flow compensator (Zhao et al., MICCAI 2020, Eq. 6).

    L_c1    = λ0·‖Î_0 − I_0‖₁ + λi·‖Î_t0 − Î_t1‖₁ + λ1·‖Î_1 − I_1‖₁
    L_cycle = L_c1 + λp·L_cp

with the warped frames of Eq. 5 (``jaxsurg.ops.intermediate_flow.cycle_warps``) and
λ0 = 1.0, λi = 0.8, λ1 = 2.0, λp = 0.01 (paper). L_cp is the perceptual loss "on the three
pairs"; its feature network lives elsewhere and is passed in as a callable.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


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
            f"warps is missing {missing} (use jaxsurg.ops.intermediate_flow.cycle_warps)"
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
