"""AGSD's semantic diffusion loss (Liu et al. 2020, Sec. 2.2, Eq. 2–4).

Frozen feature maps of two adjacent frames are pooled inside the predicted instrument and
background regions (Eq. 2); the loss asks the instrument of frame t to be more like the
instrument of frame t+1 than like its own background, and likewise the backgrounds, by a
margin (the quadruplet hinges of Eq. 3 and 4). Gradients reach the network through the
pooling weights p only: the features are frozen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# (m_fg, m_bg, weight_fg, weight_bg).
MARGINS = {
    "paper": (0.2, 0.8, 1.0, 1.0),  # Sec. 3, "Implementation Details"
    "code": (0.05, 0.45, 0.5, 2.0),  # the authors' released training script
}
_EPS = 1e-10  # the code's: f = Σ p·F / (Σ p + 1e-10)


def l2_normalize(features: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Features (..., D) divided by their L2 norm over D (+ ``eps``, the code's 1e-6)."""
    f = features.astype(jnp.float32)
    return f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + eps)


def pool(p: jax.Array, features: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Eq. (2): f_fg = Σ_i p_i F_i and f_bg = Σ_i (1 − p_i) F_i, each divided by its weight
    sum as the code does (a positive scale, which the cosine of Eq. 3–4 ignores).

    Args:
      p: float (B, H, W) instrument probabilities in [0, 1].
      features: float (B, H, W, D) per-pixel features at the same size.
      valid: optional float (B, H, W) in [0, 1], a weight on every pixel of both sums
        (ours: the endoscope's field of view, so that the black border and the image edge
        are pooled into neither region); None = 1 everywhere, the paper's.

    Returns:
      (f_fg, f_bg), float32 (B, D) each.
    """
    p = p.astype(jnp.float32)[..., None]
    v = jnp.ones_like(p) if valid is None else valid.astype(jnp.float32)[..., None]
    f = features.astype(jnp.float32)
    fg = (v * p * f).sum(axis=(1, 2)) / ((v * p).sum(axis=(1, 2)) + _EPS)
    bg = (v * (1.0 - p) * f).sum(axis=(1, 2)) / ((v * (1.0 - p)).sum(axis=(1, 2)) + _EPS)
    return fg, bg


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
    """φ: the cosine similarity of (B, D) rows → (B,), a·b / sqrt(|a|²|b|² + eps).

    Written without ``norm`` so that its gradient stays finite (0) where a pooled feature is
    the zero vector — a prediction that is 0 (or 1) everywhere pools nothing into f_fg (or
    f_bg) — where the gradient of |a| is 0/0 and the training would turn NaN."""
    return (a * b).sum(-1) / jnp.sqrt((a * a).sum(-1) * (b * b).sum(-1) + eps)


def semantic_diffusion_loss(
    p_t: jax.Array, p_t1: jax.Array, features_t: jax.Array, features_t1: jax.Array, margins: str = "paper",
    valid_t: jax.Array | None = None, valid_t1: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """L_dif^fg (Eq. 3) and L_dif^bg (Eq. 4) of each pair, weighted.

    L_fg = max(φ(fg_t, bg_t) + φ(fg_t+1, bg_t+1) − 2φ(fg_t, fg_t+1) + m_fg, 0);
    L_bg = max(φ(fg_t, bg_t) + φ(fg_t+1, bg_t+1) − 2φ(bg_t, bg_t+1) + m_bg, 0).

    Args:
      p_t, p_t1: float (B, H, W) predictions of frames t and t+1.
      features_t, features_t1: float (B, H, W, D) frozen features at the same size
        (L2-normalised per pixel by the caller: ``l2_normalize``).
      margins: ``"paper"`` (0.2, 0.8; weights 1, 1) or ``"code"`` (0.05, 0.45; weights 0.5, 2).
      valid_t, valid_t1: optional float (B, H, W) pixel weights of each frame's pooling
        (``pool``); None pools every pixel (the paper).

    Returns:
      (w_fg·L_fg, w_bg·L_bg), float32 (B,) each.

    Raises:
      ValueError: an unknown ``margins`` name.
    """
    if margins not in MARGINS:
        raise ValueError(f"semantic diffusion margins {margins!r} are unknown; known: {sorted(MARGINS)}")
    m_fg, m_bg, w_fg, w_bg = MARGINS[margins]
    fg_t, bg_t = pool(p_t, features_t, valid_t)
    fg_t1, bg_t1 = pool(p_t1, features_t1, valid_t1)
    intra = cosine(fg_t, bg_t) + cosine(fg_t1, bg_t1)
    l_fg = jnp.maximum(intra - 2.0 * cosine(fg_t, fg_t1) + m_fg, 0.0)
    l_bg = jnp.maximum(intra - 2.0 * cosine(bg_t, bg_t1) + m_bg, 0.0)
    return w_fg * l_fg, w_bg * l_bg
