"""Segmentation losses: cross-entropy and the TernausNet soft-Jaccard combination.

All functions are pure ``jnp`` and jit-friendly. Labels use the project convention:
integer class maps with ``IGNORE_INDEX`` (255) marking pixels that contribute nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255
_EPS = 1e-15  # TernausNet's epsilon in the soft-Jaccard ratio.


def _valid_and_labels(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (valid float mask, labels with ignored pixels set to 0)."""
    valid = labels != IGNORE_INDEX
    return valid.astype(jnp.float32), jnp.where(valid, labels, 0).astype(jnp.int32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean pixel cross-entropy over non-ignored pixels.

    Args:
      logits: float (B, H, W, C). C == 1 is a binary problem (sigmoid, BCE with logits);
        C > 1 is multi-class (softmax, NLL of log-softmax).
      labels: int (B, H, W) with values in [0, C) (binary: {0, 1}) or 255 = ignore.

    Returns:
      float32 scalar; 0 if every pixel is ignored.
    """
    valid, target = _valid_and_labels(labels)
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        # BCE with logits, log(1 + e^z) - z·y; softplus is stable and has the right
        # derivative (σ(z) - y) at z = 0, where max(z, 0) + log1p(e^-|z|) has a kink.
        per_pixel = jax.nn.softplus(z) - z * target
    else:
        log_p = jax.nn.log_softmax(logits, axis=-1)
        per_pixel = -jnp.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]
    return jnp.sum(per_pixel * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def soft_jaccard(probs: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """Soft Jaccard index (IoU) over the whole batch, TernausNet style.

    ``(Σ p·t + ε) / (Σ p + Σ t − Σ p·t + ε)`` with ε = 1e-15, sums over valid pixels.

    Args:
      probs: float (B, H, W) predicted probabilities in [0, 1].
      target: float (B, H, W) in {0, 1}.
      valid: float (B, H, W) in {0, 1}; pixels with 0 are left out.

    Returns:
      float32 scalar in [0, 1].
    """
    probs = probs * valid
    target = target * valid
    intersection = jnp.sum(probs * target)
    union = jnp.sum(probs) + jnp.sum(target) - intersection
    return (intersection + _EPS) / (union + _EPS)


def ternaus_loss(logits: jax.Array, labels: jax.Array, *, jaccard_weight: float = 0.3) -> jax.Array:
    """TernausNet / Dual MF segmentation loss: ``(1 − w)·CE − w·log(soft IoU)``.

    Source: Iglovikov & Shvets, "TernausNet" (2018) and Shvets et al., "Automatic instrument
    segmentation in robot-assisted surgery using deep learning" (2018), loss (1); used by
    Dual Motion Flow (Zhao et al. 2020) with w = 0.3.

    Binary (C == 1): BCE with logits and one soft Jaccard of sigmoid(logits) against
    ``labels == 1`` over the batch. Multi-class (C > 1): NLL of the log-softmax and, as in
    the reference code, the SUM over classes of ``−w·log(soft IoU_c)`` with softmax
    probabilities against ``labels == c``. Pixels labelled 255 are ignored in both terms.

    Args:
      logits: float (B, H, W, C).
      labels: int (B, H, W), class indices or 255.
      jaccard_weight: w in [0, 1].

    Returns:
      float32 scalar loss.
    """
    ce = cross_entropy(logits, labels)
    loss = (1.0 - jaccard_weight) * ce
    if jaccard_weight == 0:
        return loss
    valid, target = _valid_and_labels(labels)
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        iou = soft_jaccard(jax.nn.sigmoid(logits[..., 0]), (target == 1).astype(jnp.float32), valid)
        return loss - jaccard_weight * jnp.log(iou)
    probs = jax.nn.softmax(logits, axis=-1)
    for c in range(logits.shape[-1]):
        iou = soft_jaccard(probs[..., c], (target == c).astype(jnp.float32), valid)
        loss = loss - jaccard_weight * jnp.log(iou)
    return loss
