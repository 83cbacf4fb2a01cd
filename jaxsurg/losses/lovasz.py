"""Lovász-Softmax and Lovász hinge losses (Berman, Rannen Triki & Blaschko, CVPR 2018).

Source: M. Berman, A. Rannen Triki, M. B. Blaschko, "The Lovász-Softmax loss: a tractable
surrogate for the optimization of the intersection-over-union measure in neural networks",
CVPR 2018: Eq. (8)–(9) (Lovász extension of the Jaccard loss, computed by sorting the
errors), Eq. (10) (Lovász hinge, binary) and Eq. (12) (Lovász-Softmax, multi-class).
Laparoflow-SSL (Moens et al. 2024, Appendix D.3) trains its segmentation head with
cross-entropy + Lovász-Softmax and its key-point head with the mean of binary Lovász and
cross-entropy.

Fixed shapes (jit). Berman's reference removes ignored pixels with boolean indexing, which
has a data-dependent shape. Here every pixel stays, and an ignored pixel is given

  * the sort key −∞, so it is ranked after every valid pixel (valid errors are finite);
  * zero foreground and zero background increments in the cumulative sums of the Jaccard
    gradient, and zero error.

Why this changes neither the value nor the gradient of the Lovász extension: for errors
sorted as m_π1 ≥ m_π2 ≥ …, the extension is Σ_i m_πi · g_i with
g_i = J({π1..πi}) − J({π1..π(i−1)}), and J of a prefix depends only on the pixels in that
prefix. With all ignored pixels ranked after all valid ones, every prefix that ends at a
valid pixel contains only valid pixels, so g_i of each valid pixel equals the value
Berman's algorithm computes on the valid pixels alone (the order among valid pixels is the
same sort). Past the valid prefix the intersection and union counts no longer change, so
g_i = 0 there, and the error of an ignored pixel is a constant 0 besides: ignored pixels
add 0 to the loss and receive exactly zero gradient. Ties between valid errors may be
ordered arbitrarily: the Lovász extension does not depend on how ties are broken.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxsurg.losses.segmentation import IGNORE_INDEX


def _lovasz_jaccard_grad(fg_sorted: jax.Array, valid_sorted: jax.Array) -> jax.Array:
    """Jaccard increments g_i (Berman Alg. 1 ``lovasz_grad``) of pixels sorted by error.

    Args:
      fg_sorted: float (P,) in {0, 1}, 1 where the pixel belongs to the class.
      valid_sorted: float (P,) in {0, 1}; ignored pixels (0) must come last.

    Returns:
      float (P,) g_i ≥ 0, zero at ignored positions; Σ g_i = J(all valid pixels).
    """
    fg = fg_sorted * valid_sorted
    gts = jnp.sum(fg)
    intersection = gts - jnp.cumsum(fg)
    union = gts + jnp.cumsum((1.0 - fg) * valid_sorted)
    # union == 0 only when no valid pixel has been seen (then intersection == 0 too).
    jaccard = jnp.where(union > 0, 1.0 - intersection / jnp.maximum(union, 1.0), 0.0)
    return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_flat(errors: jax.Array, fg: jax.Array, valid: jax.Array, *, hinge: bool) -> jax.Array:
    """Lovász extension of the Jaccard loss for one set of pixels (fixed shape).

    Args:
      errors: float (P,) per-pixel errors (Lovász-Softmax: |fg − p| in [0, 1];
        hinge: 1 − logit·sign, any real).
      fg: float (P,) in {0, 1}, ground-truth membership.
      valid: bool (P,), False for ignored pixels.
      hinge: apply ReLU to the sorted errors (Berman's Lovász hinge).

    Returns:
      float32 scalar.
    """
    key = jnp.where(valid, jax.lax.stop_gradient(errors), -jnp.inf)
    perm = jnp.argsort(key, descending=True, stable=True)
    validf = valid.astype(errors.dtype)
    errors_sorted = jnp.where(valid, errors, 0.0)[perm]
    if hinge:
        errors_sorted = jax.nn.relu(errors_sorted)
    grad = jax.lax.stop_gradient(_lovasz_jaccard_grad(fg[perm], validf[perm]))
    return jnp.dot(errors_sorted, grad)


def _check_labels(labels: jax.Array, shape: tuple[int, ...], name: str) -> None:
    if labels.shape != shape:
        raise ValueError(f"labels must have shape {shape} (matching {name}), got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer class map, got dtype {labels.dtype}")


def _class_selection(classes, num_classes: int):
    """Returns ('present' | 'all', None) or ('list', int tuple) after validation."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a sequence of class indices, got {classes!r}")
        return classes, None
    if not isinstance(classes, Sequence) or len(classes) == 0:
        raise ValueError(f"classes must be 'present', 'all' or a non-empty sequence of class indices, got {classes!r}")
    chosen = tuple(int(c) for c in classes)
    if any(c < 0 or c >= num_classes for c in chosen):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {chosen}")
    return "list", chosen


def _lovasz_softmax_pixels(probs: jax.Array, labels: jax.Array, ignore_index: int, classes) -> jax.Array:
    """Lovász-Softmax over one flattened set of pixels: probs (P, C), labels (P,)."""
    num_classes = probs.shape[-1]
    mode, chosen = _class_selection(classes, num_classes)
    valid = labels != ignore_index
    fg = (labels[:, None] == jnp.arange(num_classes)[None, :]).astype(probs.dtype)  # (P, C)
    errors = jnp.abs(fg - probs)
    per_class = jax.vmap(lambda e, f: _lovasz_flat(e, f, valid, hinge=False), in_axes=(1, 1))(errors, fg)  # (C,)
    if mode == "all":
        weights = jnp.ones((num_classes,), probs.dtype)
    elif mode == "present":
        weights = jnp.any((fg > 0) & valid[:, None], axis=0).astype(probs.dtype)
    else:  # Berman: listed classes count whether present or not.
        weights = jnp.zeros((num_classes,), probs.dtype).at[jnp.array(chosen)].set(1.0)
    # No valid pixel / no class to average over: 0 (Berman's mean of an empty list).
    return jnp.sum(per_class * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def lovasz_softmax(
    probs: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
) -> jax.Array:
    """Multi-class Lovász-Softmax loss (Berman et al. 2018, Eq. (12), Alg. 1).

    For each class c, with errors m_i(c) = |1[y_i = c] − p_i(c)| over the non-ignored pixels,
    the loss of c is the Lovász extension of the Jaccard loss evaluated at m(c) (errors
    sorted in decreasing order, dotted with the Jaccard increments); the result is the mean
    over the selected classes. Jit-compatible: shapes are fixed, ignored pixels are handled
    with masks (see the module docstring for why they do not change value or gradient).

    Args:
      probs: float (B, H, W, C), C ≥ 2, softmax probabilities in [0, 1].
      labels: int (B, H, W), class indices in [0, C) or ``ignore_index``. Values outside
        [0, C) other than ``ignore_index`` are not checked (jit) and belong to no class.
      ignore_index: label of pixels that contribute nothing (project convention 255).
      classes: ``'present'`` averages over the classes that occur among the valid pixels
        (of the batch, or of each image when ``per_image``); ``'all'`` over all C classes
        (an absent class then costs its largest error); a sequence of class indices averages
        over exactly those classes, present or not (Berman's list option).
      per_image: compute the loss per image and average over the B images (an image with no
        valid pixel or no selected class contributes 0, as in Berman's code); otherwise over
        all pixels of the batch at once.

    Returns:
      float32 scalar ≥ 0; 0 for a perfect prediction, and 0 if no pixel is valid.

    Raises:
      ValueError: on a wrong rank, C < 2, label shape/dtype mismatch or bad ``classes``.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (B, H, W, C) softmax probabilities, got shape {probs.shape}")
    if probs.shape[-1] < 2:
        raise ValueError(f"probs must have C >= 2 classes, got {probs.shape[-1]}; use lovasz_softmax_binary or lovasz_hinge")
    _check_labels(labels, probs.shape[:-1], "probs.shape[:-1]")
    _class_selection(classes, probs.shape[-1])
    probs = probs.astype(jnp.float32)
    c = probs.shape[-1]
    if per_image:
        b = probs.shape[0]
        losses = jax.vmap(lambda p, y: _lovasz_softmax_pixels(p, y, ignore_index, classes))(
            probs.reshape(b, -1, c), labels.reshape(b, -1)
        )
        return jnp.mean(losses)
    return _lovasz_softmax_pixels(probs.reshape(-1, c), labels.reshape(-1), ignore_index, classes)


def lovasz_softmax_binary(
    probs_fg: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
) -> jax.Array:
    """Binary Lovász-Softmax on foreground probabilities (Berman et al. 2018, Eq. (12), C = 2).

    Exactly ``lovasz_softmax(stack([1 − p, p], -1), labels, ...)``: with the default
    ``classes='present'`` the mean of the background and foreground Lovász losses (those
    present); ``classes=(1,)`` gives the foreground-only Jaccard surrogate. This is the
    "binary Lovász-Softmax" of the key-point head (Laparoflow-SSL Appendix D.3); with K
    key-point types in (B, H, W, K), move K into the batch axis and use ``per_image=True``
    to average over images and types. Gaussian heat-map targets must be binarised first
    (e.g. ``target > 0.5``): the Lovász extension is defined for set-valued ground truth.

    Args:
      probs_fg: float (B, H, W) foreground probabilities in [0, 1] (e.g. a sigmoid output).
      labels: int (B, H, W) in {0, 1} or ``ignore_index``.
      ignore_index, classes, per_image: as in ``lovasz_softmax``.

    Returns:
      float32 scalar ≥ 0.

    Raises:
      ValueError: if probs_fg is not (B, H, W) or the labels do not match.
    """
    if probs_fg.ndim != 3:
        raise ValueError(f"probs_fg must be (B, H, W) foreground probabilities, got shape {probs_fg.shape}")
    p = probs_fg.astype(jnp.float32)
    return lovasz_softmax(
        jnp.stack([1.0 - p, p], axis=-1), labels, ignore_index=ignore_index, classes=classes, per_image=per_image
    )


def lovasz_hinge(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    per_image: bool = True,
) -> jax.Array:
    """Binary Lovász hinge loss (Berman et al. 2018, Eq. (10); Berman & Blaschko 2017).

    Hinge errors m_i = max(0, 1 − F_i·y*_i) with signs y*_i = 2·y_i − 1, sorted by the
    (unclipped) margin error in decreasing order and dotted with the Jaccard increments of
    the foreground class. Ignored pixels are masked as in ``lovasz_softmax``.

    Args:
      logits: float (B, H, W) or (B, H, W, 1) real-valued scores (before the sigmoid).
      labels: int (B, H, W) in {0, 1} or ``ignore_index``.
      ignore_index: label of pixels that contribute nothing.
      per_image: as Berman's default, compute per image and average over the B images (an
        image without valid pixels contributes 0); False: all pixels of the batch at once.

    Returns:
      float32 scalar ≥ 0.

    Raises:
      ValueError: on a wrong logits shape or mismatching labels.
    """
    if logits.ndim == 4 and logits.shape[-1] == 1:
        logits = logits[..., 0]
    if logits.ndim != 3:
        raise ValueError(f"logits must be (B, H, W) or (B, H, W, 1), got shape {logits.shape}")
    _check_labels(labels, logits.shape, "logits")
    logits = logits.astype(jnp.float32)

    def flat(z: jax.Array, y: jax.Array) -> jax.Array:
        valid = y != ignore_index
        fg = (y == 1).astype(jnp.float32)
        errors = 1.0 - z * (2.0 * fg - 1.0)
        return _lovasz_flat(errors, fg, valid, hinge=True)

    b = logits.shape[0]
    if per_image:
        return jnp.mean(jax.vmap(flat)(logits.reshape(b, -1), labels.reshape(b, -1)))
    return flat(logits.reshape(-1), labels.reshape(-1))
