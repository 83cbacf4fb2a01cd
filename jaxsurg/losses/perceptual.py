"""Perceptual (feature reconstruction) and style (Gram) losses on VGG16 feature maps.

Source: Johnson, Alahi & Fei-Fei, "Perceptual losses for real-time style transfer and
super-resolution" (ECCV 2016) — reference [11] of Dual Motion Flow (Zhao et al., MICCAI 2020),
which uses a perceptual term in the flow predictor's loss (Eq. 3, λp = 0.2) and in the cycle
loss (λp = 0.01). The authors' code uses instead 1000 × a Gram-style loss on VGG16
relu1_2/2_2/3_3/4_3 for the flow predictor and 0.02 × the MSE of relu4_3 for the compensator
(``/work/shared/REFERENCE.md``, "Dual Motion Flow").

Feature maps are dicts ``{tap: (B, H, W, C)}`` as returned by
``jaxsurg.models.vgg16.VGG16Features``. All functions are pure jnp, jit-able, and return
scalars (means over the batch) computed in float32 — float64 when given float64 features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Weights = Sequence[float] | Mapping[str, float] | None

DISTANCES = ("l1", "mse")
REDUCTIONS = ("mean", "sum")


def _as_layers(layers: Sequence[str] | str, argname: str = "layers") -> tuple[str, ...]:
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers:
        raise ValueError(f"`{argname}` is empty; give at least one feature-map name")
    return layers


def _layer_weights(layers: tuple[str, ...], weights: Weights) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * len(layers)
    if isinstance(weights, Mapping):
        missing = [name for name in layers if name not in weights]
        if missing:
            raise ValueError(f"`weights` has no entry for layers {missing}")
        return tuple(float(weights[name]) for name in layers)
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(layers):
        raise ValueError(f"`weights` has {len(weights)} entries, expected one per layer ({len(layers)}: {layers})")
    return weights


def _pair(features_a: Mapping[str, Array], features_b: Mapping[str, Array], name: str) -> tuple[Array, Array]:
    for arg, feats in (("features_a", features_a), ("features_b", features_b)):
        if name not in feats:
            raise ValueError(f"`{arg}` has no feature map {name!r}; it holds {sorted(feats)}")
    a, b = features_a[name], features_b[name]
    if a.shape != b.shape:
        raise ValueError(f"feature map {name!r}: features_a has shape {a.shape}, features_b {b.shape}")
    if a.ndim != 4:
        raise ValueError(f"feature map {name!r} must be (B, H, W, C), got shape {a.shape}")
    dtype = _compute_dtype(a)
    return a.astype(dtype), b.astype(dtype)


def _compute_dtype(x: Array):
    """float32, or float64 when given float64 (x64 mode): never below float32."""
    return jnp.promote_types(x.dtype, jnp.float32)


def perceptual_loss(
    features_a: Mapping[str, Array],
    features_b: Mapping[str, Array],
    *,
    layers: Sequence[str] | str,
    distance: str = "l1",
    weights: Weights = None,
) -> Array:
    """Feature reconstruction loss Σ_l w_l · mean |φ_l(a) − φ_l(b)|^p (Johnson et al. 2016, Eq. 2).

    ``distance='mse'`` is Johnson's ‖φ(a) − φ(b)‖²₂ / (C·H·W) averaged over the batch (the
    Dual MF code's 0.02·MSE on relu4_3); ``'l1'`` the mean absolute difference.

    Args:
      features_a, features_b: dicts ``{tap: (B, H, W, C) float}`` with the same shapes per tap.
      layers: taps to compare (e.g. ``('relu4_3',)``).
      distance: ``'l1'`` or ``'mse'``.
      weights: per-layer weights w_l (a sequence aligned with ``layers`` or a mapping by tap);
        None = 1 each.

    Returns:
      Scalar ≥ 0, float32 (float64 for float64 features); 0 iff the features agree on every requested tap.

    Raises:
      ValueError: unknown ``distance``, empty ``layers``, a tap missing from either dict,
        mismatched shapes, or ``weights`` not matching ``layers``.
    """
    if distance not in DISTANCES:
        raise ValueError(f"`distance` must be one of {DISTANCES}, got {distance!r}")
    layers = _as_layers(layers)
    total = 0.0
    for name, w in zip(layers, _layer_weights(layers, weights)):
        a, b = _pair(features_a, features_b, name)
        diff = a - b
        total = total + w * jnp.mean(jnp.abs(diff) if distance == "l1" else jnp.square(diff))
    return total


def gram_matrix(f: Array) -> Array:
    """Gram matrix of a feature map normalised by its size (Johnson et al. 2016, Eq. 3).

    G[b, c, d] = Σ_{h, w} f[b, h, w, c] · f[b, h, w, d] / (H·W·C) — the normalisation of
    Johnson et al. (1 / (C_j H_j W_j)) and of the PyTorch style-loss code the Dual MF authors'
    Gram-style loss follows. Computed in float32 at full matmul precision.

    Args:
      f: (B, H, W, C) float.

    Returns:
      (B, C, C) float32 (float64 for float64 input), symmetric positive semi-definite.

    Raises:
      ValueError: ``f`` is not rank 4.
    """
    if f.ndim != 4:
        raise ValueError(f"gram_matrix expects `f` of shape (B, H, W, C), got {f.shape}")
    _, h, w, c = f.shape
    f = f.astype(_compute_dtype(f))
    g = jnp.einsum("bhwc,bhwd->bcd", f, f, precision=jax.lax.Precision.HIGHEST)
    return g / (h * w * c)


def style_loss(
    features_a: Mapping[str, Array],
    features_b: Mapping[str, Array],
    layers: Sequence[str] | str,
    *,
    weights: Weights = None,
    reduction: str = "mean",
) -> Array:
    """Style reconstruction (Gram) loss Σ_l w_l · D(G(φ_l(a)), G(φ_l(b))) (Johnson et al. 2016,
    Eq. 4), with ``gram_matrix``.

    ``reduction='mean'`` (default): D = mean over the B·C·C entries of the squared difference,
    i.e. ``F.mse_loss(gram(a), gram(b))`` of the PyTorch style-loss code that the Dual MF
    authors' Gram-style loss (weight 1000, relu1_2/2_2/3_3/4_3) follows.
    ``reduction='sum'``: D = squared Frobenius norm per image, averaged over the batch
    (Johnson's definition); equals C² × the mean version per layer.

    Args:
      features_a, features_b: dicts ``{tap: (B, H, W, C) float}`` with the same shapes per tap.
      layers: taps to compare, e.g. ``jaxsurg.models.vgg16.PERCEPTUAL_LAYERS``.
      weights: per-layer weights (sequence aligned with ``layers`` or mapping); None = 1 each.
      reduction: ``'mean'`` or ``'sum'`` (see above).

    Returns:
      Scalar ≥ 0, float32 (float64 for float64 features).

    Raises:
      ValueError: as ``perceptual_loss``, or unknown ``reduction``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    layers = _as_layers(layers)
    total = 0.0
    for name, w in zip(layers, _layer_weights(layers, weights)):
        a, b = _pair(features_a, features_b, name)
        sq = jnp.square(gram_matrix(a) - gram_matrix(b))
        d = jnp.mean(sq) if reduction == "mean" else jnp.mean(jnp.sum(sq, axis=(1, 2)))
        total = total + w * d
    return total
