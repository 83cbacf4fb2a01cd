"""PAT's colour rebalancing (Ross et al. 2018, sec. 2.2.1, Eq. 3): empirical a and b
histograms of the training frames and the per-pixel weights P^c of the rebalanced loss L2.

Ross et al. obtain "the empirical color distribution p̃^c for each channel c = {a, b}
separately, with a quantization of the color space by a grid size of 1", so that L2
"ensures a high penalty of wrong values in image regions with rare values" — but then define
P^c as "the relative color frequency", which weighs FREQUENT colours more. Two forms:

- ``"rarity"`` (default; the text's intent, Zhang, Isola & Efros, "Colorful image
  colorization", ECCV 2016, sec. 2.2, Eq. 4, applied per channel to 1-D histograms):
  p = counts / Σ counts; p̃ = p smoothed by a Gaussian of σ = 5 bins (``gaussian_filter1d``,
  reflecting boundaries, truncated at 4σ) and renormalised to Σ p̃ = 1;
  w = ((1 − λ)·p̃ + λ/Q)^−1 with λ = ``mix`` = 1/2 and Q = the number of bins (256), then
  scaled so that E_p̃[w] = Σ_q p̃_q·w_q = 1. Weights grow with rarity; an empty bin gets the
  largest weight, (λ/Q)^−1 before the scaling.
- ``"literal"`` (Eq. 3 as written): P = p = counts / Σ counts, the relative frequency (no
  smoothing, no mixing).

Bins (grid size 1): a value v of a* or b* (CIE L*a*b*, D65, ``jaxsurg.ops.color``) falls in
bin ``clip(round(v), −128, 127) + 128``, i.e. 256 integer bins covering [−128.5, 127.5)
(round half to even, as ``numpy.rint``); the sRGB gamut spans about a* ∈ [−86, 98] and
b* ∈ [−108, 94], so the clip never acts on Lab values computed from RGB. Histograms are
(2, 256) int64 arrays: row 0 counts a*, row 1 counts b*.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import gaussian_filter1d

from jaxsurg.ops.color import rgb_to_lab

Array = jax.Array

__all__ = [
    "AB_MIN",
    "CHANNELS",
    "FORMS",
    "NUM_BINS",
    "ab_bins",
    "ab_histograms",
    "accumulate_ab_histograms",
    "rebalancing_weights",
    "weight_map",
]

AB_MIN = -128  # the value of bin 0
NUM_BINS = 256  # bins per channel: round(v) ∈ [−128, 127]
CHANNELS = ("a", "b")
FORMS = ("rarity", "literal")


def ab_bins(ab: Array) -> Array:
    """The histogram bin of each a*, b* value: ``clip(round(v), −128, 127) + 128``.

    Args:
      ab: float (..., 2) (or any shape), a* and b* in CIE L*a*b* units (not scaled).

    Returns:
      int32 array of ``ab``'s shape with values in [0, 255] (``jax.numpy``; traceable).
    """
    return (jnp.clip(jnp.round(jnp.asarray(ab, jnp.float32)), AB_MIN, AB_MIN + NUM_BINS - 1) - AB_MIN).astype(jnp.int32)


@jax.jit
def _frame_bins(frames: Array) -> Array:
    return ab_bins(rgb_to_lab(frames.astype(jnp.float32) / 255.0)[..., 1:])


def ab_histograms(frames: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Counts of the a* and b* values of RGB frames, grid size 1 (Ross et al. 2018, sec. 2.2.1).

    Lab is ``jaxsurg.ops.color.rgb_to_lab`` (sRGB, D65) of ``frames / 255`` in float32, jitted
    (compiled once per frame shape: stream batches of one shape); each value is counted in
    its bin (``ab_bins``, see the module docstring) on the host.

    Args:
      frames: uint8 (N, H, W, 3) RGB (or (H, W, 3), one frame).
      valid: optional bool array of ``frames.shape[:-1]``: only these pixels are counted (e.g.
        the endoscope's field of view, leaving out the black border).

    Returns:
      int64 (2, 256): row 0 the a* counts, row 1 the b* counts; each row sums to the number
      of counted pixels.

    Raises:
      ValueError: frames not uint8 (..., H, W, 3) of rank 3 or 4, or ``valid`` not a bool
        array of shape ``frames.shape[:-1]``.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB of shape (N, H, W, 3) or (H, W, 3), got {frames.dtype} {frames.shape}")
    bins = np.asarray(_frame_bins(jnp.asarray(frames)))
    if valid is not None:
        valid = np.asarray(valid)
        if valid.dtype != np.bool_ or valid.shape != frames.shape[:-1]:
            raise ValueError(
                f"valid must be a bool mask of shape {frames.shape[:-1]} (the frames' pixels), got {valid.dtype} {valid.shape}"
            )
        bins = bins[valid]
    bins = bins.reshape(-1, 2)
    return np.stack([np.bincount(bins[:, c], minlength=NUM_BINS) for c in range(2)]).astype(np.int64)


def accumulate_ab_histograms(counts: np.ndarray | None, frames: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Streaming form of ``ab_histograms``: ``counts + ab_histograms(frames, valid)``.

    Args:
      counts: int64 (2, 256) running counts, or None to start.
      frames, valid: one batch, as ``ab_histograms``.

    Returns:
      a new int64 (2, 256) array (``counts`` is not modified).

    Raises:
      ValueError: ``counts`` not of shape (2, 256); the errors of ``ab_histograms``.
    """
    new = ab_histograms(frames, valid)
    if counts is None:
        return new
    counts = np.asarray(counts)
    if counts.shape != (2, NUM_BINS):
        raise ValueError(f"counts must have shape (2, {NUM_BINS}) (a* and b* bins), got {counts.shape}")
    return counts.astype(np.int64) + new


def rebalancing_weights(counts: np.ndarray, form: str = "rarity", mix: float = 0.5, sigma: float = 5.0) -> np.ndarray:
    """Per-channel, per-bin weights P^c of PAT's rebalanced loss L2 (Eq. 3).

    Args:
      counts: non-negative (C, Q) counts (``ab_histograms``: C = 2 channels a*, b*; Q = 256
        bins); any Q ≥ 1 and integer or float counts are accepted, but ``weight_map`` needs
        (2, 256).
      form: "rarity" (default) — Zhang et al. 2016's rebalancing per channel,
        w = ((1 − mix)·p̃ + mix/Q)^−1 scaled to E_p̃[w] = 1, p̃ the relative frequency
        smoothed by a Gaussian of ``sigma`` bins and renormalised (see the module docstring);
        "literal" — Eq. 3 as written, the relative frequency counts / Σ counts.
      mix: λ of Zhang et al., in (0, 1]: the weight of the uniform distribution (1/2);
        1 gives w = 1 everywhere. Rarity form only.
      sigma: the smoothing's standard deviation in bins, ≥ 0 (0: none). Rarity form only.

    Returns:
      float32 (C, Q). Rarity: positive, Σ_q p̃_q·w_q = 1 per channel, larger for rarer bins
      (the maximum is at most Q/mix·(1 − mix + mix/Q)). Literal: in [0, 1], each row sums to 1.

    Raises:
      ValueError: ``counts`` not 2-D with Q ≥ 1, negative or non-finite; a channel whose
        histogram is empty (sum 0; the message names the channel); unknown ``form``;
        ``mix`` outside (0, 1] or ``sigma`` < 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] < 1:
        raise ValueError(f"counts must be a (channels, bins) histogram, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("counts must be finite and non-negative")
    names = CHANNELS if counts.shape[0] == len(CHANNELS) else tuple(str(c) for c in range(counts.shape[0]))
    totals = counts.sum(axis=1)
    for name, total in zip(names, totals):
        if total <= 0:
            raise ValueError(f"the histogram of channel {name!r} is empty (no counted pixel): no weights can be derived")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    p = counts / totals[:, None]
    if form == "literal":
        return p.astype(np.float32)
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"mix (Zhang et al.'s λ) must be in (0, 1], got {mix}")
    if sigma < 0:
        raise ValueError(f"sigma must be ≥ 0 (bins), got {sigma}")
    smoothed = gaussian_filter1d(p, sigma, axis=1, mode="reflect", truncate=4.0) if sigma > 0 else p
    smoothed = smoothed / smoothed.sum(axis=1, keepdims=True)
    q = counts.shape[1]
    w = 1.0 / ((1.0 - mix) * smoothed + mix / q)
    w = w / np.sum(smoothed * w, axis=1, keepdims=True)
    return w.astype(np.float32)


def weight_map(ab: Array, weights: Array) -> Array:
    """Per-pixel, per-channel weights P^c_{h,w} of Eq. 3: each pixel's TRUE a*, b* looked up in
    its channel's weight table.

    Args:
      ab: float (N, H, W, 2) (any leading shape) true a*, b* in CIE L*a*b* units (not scaled:
        ``jaxsurg.methods.pat.recolorization`` targets are ab / 110, multiply back).
      weights: (2, 256) from ``rebalancing_weights``.

    Returns:
      float32 of ``ab``'s shape: ``weights[c, ab_bins(ab[..., c])]`` (``jax.numpy``; works
      under ``jit``).

    Raises:
      ValueError: ``ab``'s last axis is not 2, or ``weights`` not (2, 256).
    """
    ab = jnp.asarray(ab)
    weights = jnp.asarray(weights, jnp.float32)
    if ab.ndim < 1 or ab.shape[-1] != 2:
        raise ValueError(f"ab must have shape (..., 2) (a*, b*), got {ab.shape}")
    if weights.shape != (2, NUM_BINS):
        raise ValueError(f"weights must have shape (2, {NUM_BINS}) (rebalancing_weights), got {weights.shape}")
    bins = ab_bins(ab)
    return jnp.stack([weights[0][bins[..., 0]], weights[1][bins[..., 1]]], axis=-1)
