"""Otsu's threshold in pure ``jax.numpy``, per image of a batch, with an optional valid mask.

N. Otsu, "A threshold selection method from gray-level histograms", IEEE Transactions on
Systems, Man, and Cybernetics 9(1):62–66, 1979. The threshold maximises the between-class
variance w₁(t)·w₂(t)·(μ₁(t) − μ₂(t))² of the image's histogram split at t.

The definition followed to the bin is ``skimage.filters.threshold_otsu`` (scikit-image 0.26)
on a float image: a histogram of ``bins`` equal bins over the image's own [min, max] (as
``numpy.histogram``: the last bin is closed), the candidate thresholds are the bin centres,
class 1 = the bins up to and including the candidate, and the result is the centre of the
first bin that maximises the between-class variance. A constant image returns its value.
AGSD (Liu et al. 2020, Sec. 3 and 3.2) thresholds its prediction and anchor maps this way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["otsu_threshold"]


def otsu_threshold(x: Array, valid: Array | None = None, *, bins: int = 256) -> Array:
    """Otsu's threshold (Otsu 1979) of each image, as ``skimage.filters.threshold_otsu``.

    Pure ``jax.numpy``: works under ``jit``/``vmap`` (``bins`` static) on any batch shape.

    Args:
      x: real array (..., H, W), e.g. probabilities in [0, 1]; computed in float32 (other
        dtypes are cast). Every trailing (H, W) slice is one image.
      valid: optional bool array of x's shape; pixels where it is False are ignored (they
        count neither in the histogram nor in its [min, max] range).
      bins: number of histogram bins (skimage's ``nbins``), ≥ 2.

    Returns:
      float32 array of shape ``x.shape[:-2]``: the threshold of each image, the centre of
      the chosen bin (foreground = pixels ``> threshold``, as skimage). An image whose valid
      pixels all have one value returns that value; one without any valid pixel returns NaN.
      Equal to skimage's float32 result up to float rounding of the bin edges (a bin whose
      edge falls within an ulp of a pixel value may take that pixel on the other side).

    Raises:
      ValueError: if ``x.ndim < 2``, ``valid``'s shape differs from x's, or ``bins < 2``.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"otsu_threshold expects images (..., H, W), got shape {x.shape}")
    if valid is not None:
        valid = jnp.asarray(valid)
        if valid.shape != x.shape:
            raise ValueError(f"valid must have the shape of x {x.shape}, got {valid.shape}")
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer ≥ 2, got {bins}")
    return _otsu(x.astype(jnp.float32), None if valid is None else valid.astype(bool), int(bins))


@functools.partial(jax.jit, static_argnums=2)
def _otsu(x: Array, valid: Array | None, bins: int) -> Array:
    lead = x.shape[:-2]
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1])  # (B, P)
    ok = jnp.ones(flat.shape, bool) if valid is None else valid.reshape(flat.shape)
    mn = jnp.min(jnp.where(ok, flat, jnp.inf), axis=1)
    mx = jnp.max(jnp.where(ok, flat, -jnp.inf), axis=1)
    any_valid = jnp.any(ok, axis=1)
    constant = mn == mx
    span = jnp.where(constant | ~any_valid, 1.0, mx - mn)
    lo = jnp.where(any_valid, mn, 0.0)

    # Bin edges as numpy.histogram: linspace(min, max, bins + 1), the last edge exactly max.
    steps = jnp.arange(bins + 1, dtype=jnp.float32) / bins
    edges = lo[:, None] + span[:, None] * steps[None, :]
    edges = edges.at[:, -1].set(lo + span)
    # numpy's bin index: floor((x − min)/(max − min)·bins), the max in the last bin, then
    # corrected by one where rounding put a value on the wrong side of an edge.
    idx = jnp.floor((flat - lo[:, None]) / span[:, None] * bins).astype(jnp.int32)
    idx = jnp.clip(idx, 0, bins - 1)
    idx = jnp.where(flat < jnp.take_along_axis(edges, idx, axis=1), idx - 1, idx)
    idx = jnp.clip(idx, 0, bins - 1)
    up = (flat >= jnp.take_along_axis(edges, idx + 1, axis=1)) & (idx != bins - 1)
    idx = jnp.where(up, idx + 1, idx)

    rows = jnp.broadcast_to(jnp.arange(flat.shape[0])[:, None], flat.shape)
    counts = jnp.zeros((flat.shape[0], bins), jnp.float32).at[rows, idx].add(ok.astype(jnp.float32))
    centres = (edges[:, :-1] + edges[:, 1:]) / 2.0

    # skimage: weight1/mean1 over the bins ≤ t, weight2/mean2 over the bins > t.
    w1 = jnp.cumsum(counts, axis=1)
    w2 = jnp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    s1 = jnp.cumsum(counts * centres, axis=1)
    s2 = jnp.cumsum((counts * centres)[:, ::-1], axis=1)[:, ::-1]
    m1 = s1 / jnp.where(w1 > 0, w1, 1.0)
    m2 = s2 / jnp.where(w2 > 0, w2, 1.0)
    between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    best = jnp.argmax(between, axis=1)
    t = jnp.take_along_axis(centres, best[:, None], axis=1)[:, 0]
    t = jnp.where(constant, mn, t)
    t = jnp.where(any_valid, t, jnp.nan)
    return t.reshape(lead)
