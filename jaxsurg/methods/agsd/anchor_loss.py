"""AGSD's anchor loss (Liu et al. 2020, Sec. 2.1, Eq. 1) and the authors' code's log form.

The anchors are soft pseudo labels: a_pos (confidently instrument) and a_neg (confidently
background), each in [0, 1] per pixel (``anchor_generation``). The loss pulls the
prediction up on a_pos and down on a_neg and leaves the pixels outside both unsupervised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FORMS = ("paper", "code")


def anchor_loss(logits: jax.Array, a_pos: jax.Array, a_neg: jax.Array, form: str = "paper") -> jax.Array:
    """L_anc of each frame, averaged over its pixels.

    Args:
      logits: float (B, H, W) instrument logits z; p = σ(z).
      a_pos, a_neg: float (B, H, W) positive and negative anchors in [0, 1].
      form: ``"paper"``: Eq. (1), (1/HW) Σ_i −a_pos,i·p_i − a_neg,i·(1 − p_i) (bounded in
        [−2, 0]); ``"code"`` (Finspire13/AGSD-Surgical-Instrument-Segmentation):
        1.5·mean(−a_pos·log σ(z)) + 1.0·mean(−a_neg·log σ(−z)).

    Returns:
      float32 (B,): the loss of each frame.

    Raises:
      ValueError: an unknown ``form`` or shapes that differ.
    """
    if form not in FORMS:
        raise ValueError(f"anchor loss form {form!r} is unknown; known: {FORMS}")
    if logits.shape != a_pos.shape or logits.shape != a_neg.shape:
        raise ValueError(f"logits {logits.shape}, a_pos {a_pos.shape} and a_neg {a_neg.shape} must have one shape (B, H, W)")
    z = logits.astype(jnp.float32)
    a_pos, a_neg = a_pos.astype(jnp.float32), a_neg.astype(jnp.float32)
    if form == "paper":
        p = jax.nn.sigmoid(z)
        per_pixel = -a_pos * p - a_neg * (1.0 - p)
        return per_pixel.mean(axis=(1, 2))
    pos = (-a_pos * jax.nn.log_sigmoid(z)).mean(axis=(1, 2))
    neg = (-a_neg * jax.nn.log_sigmoid(-z)).mean(axis=(1, 2))
    return 1.5 * pos + 1.0 * neg
