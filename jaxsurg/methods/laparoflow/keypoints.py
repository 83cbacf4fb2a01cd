"""Instrument key points: Gaussian heatmap targets, loss, peak finding and the Du et al. metric.

The pipeline of the Laparoflow-SSL pose-estimation experiment (Moens et al. 2024, Sec. 3.1.3,
App. D.3), which follows Du et al., "Articulated Multi-Instrument 2-D Pose Estimation Using
Fully Convolutional Networks" (IEEE TMI 2018):

1. ``gaussian_heatmaps`` (host side, NumPy, used in the grain pipeline): per key-point type a
   target map, the max over instruments of 2-D Gaussians centred at the labelled points.
2. ``keypoint_loss`` (JAX): per type the average of the binary Lovász-Softmax loss and
   binary cross-entropy, then averaged over the types (paper App. D.3: "we average the
   binary Lovász-Softmax loss and cross-entropy for every key point type").
3. ``find_peaks`` / ``find_peaks_padded``: non-maximum suppression on the predicted
   probabilities (local maxima of a (2r+1)² window above a threshold).
4. ``match_keypoints`` and ``summarize_keypoints``: Du et al.'s protocol — distances measured
   after scaling to a 256×256 image; a prediction is a true positive within 20 px of an
   unmatched ground-truth point of the same type (one-to-one); recall, precision, mean
   distance of the true positives, F1.

Conventions: key points are (x, y) in pixels with integer values at pixel centres (pixel
(row i, column j) has centre (x, y) = (j, i)), in the storage order of
``jaxsurg.data.synthetic``: (slots S, types K = 4, 2) float32, types ``KEYPOINT_NAMES``;
``keypoints_visible`` (S, K) bool is False for an invisible point and for every point of an
unused slot (``instrument_type == 0``), whose coordinates are zeros and must be ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

KEYPOINT_NAMES: tuple[str, ...] = ("LeftClasper", "RightClasper", "Head", "ShaftEnd")
"""EndoVis 2015 (Du et al. 2018) key-point types, the order of ``jaxsurg.data.synthetic``."""

DU_IMAGE_SIZE = 256
"""Du et al. (2018) measure distances in a 256×256 image."""

DU_MATCH_RADIUS = 20.0
"""Du et al. (2018): a prediction within 20 px (at 256×256) of an annotation is a true positive."""


# ----------------------------------------------------------------------------- targets


def gaussian_heatmaps(keypoints: np.ndarray, visible: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian key-point target maps (Du et al. 2018; Laparoflow-SSL App. D.3). NumPy, host side.

    ``out[y, x, k] = max_s exp(−((x − px[s, k])² + (y − py[s, k])²) / (2σ²))`` over the
    instruments s whose point k is visible, 0 where no instrument has a visible point k.
    A point exactly at a pixel centre gives value 1 there. Points may lie outside the image
    (their Gaussian's tail still enters it).

    Args:
      keypoints: float (S, K, 2), (x, y) pixel coordinates (pixel centres at integers).
      visible: bool (S, K); False points (and unused slots) are ignored, whatever their
        coordinates.
      size: (H, W) of the output, positive ints.
      sigma: Gaussian standard deviation in pixels, > 0.

    Returns:
      float32 (H, W, K) in [0, 1].

    Raises:
      ValueError: wrong shapes, non-positive size or sigma, or a visible point that is not
        finite.
    """
    keypoints = np.asarray(keypoints, np.float64)
    visible = np.asarray(visible, bool)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (S, K, 2) (x, y) pixels, got shape {keypoints.shape}")
    if visible.shape != keypoints.shape[:2]:
        raise ValueError(f"visible must be (S, K) = {keypoints.shape[:2]}, got shape {visible.shape}")
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"size must be (H, W) with positive entries, got {size}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma}")
    if not np.isfinite(keypoints[visible]).all():
        raise ValueError("keypoints must be finite where visible")
    h, w = int(size[0]), int(size[1])
    points = np.where(visible[..., None], keypoints, 0.0)
    # Separable: exp(−(dx² + dy²)/2σ²) = exp(−dx²/2σ²) · exp(−dy²/2σ²).
    gx = np.exp(-((np.arange(w) - points[..., 0:1]) ** 2) / (2.0 * sigma**2))  # (S, K, W)
    gy = np.exp(-((np.arange(h) - points[..., 1:2]) ** 2) / (2.0 * sigma**2))  # (S, K, H)
    gy = gy * visible[..., None]
    maps = gy[..., :, None] * gx[..., None, :]  # (S, K, H, W)
    heat = maps.max(axis=0) if maps.shape[0] else np.zeros((keypoints.shape[1], h, w))
    return np.ascontiguousarray(heat.transpose(1, 2, 0), dtype=np.float32)


# ----------------------------------------------------------------------------- loss


def _check_heatmap_pair(logits: Array, targets: Array) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, H, W, K), got shape {logits.shape}")
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the shape of logits {logits.shape}, got {targets.shape}")


def keypoint_bce(logits: Array, targets: Array) -> Array:
    """Binary cross-entropy with soft targets, per key-point type.

    ``BCE_k = mean over (b, y, x) of −t·log σ(z) − (1 − t)·log(1 − σ(z))``, computed stably
    from logits as ``softplus(z) − z·t``; gradient ``(σ(z) − t)/(B·H·W)``.

    Args:
      logits: float (B, H, W, K) pre-sigmoid heatmap logits.
      targets: float (B, H, W, K) in [0, 1] (``gaussian_heatmaps``).

    Returns:
      float32 (K,).

    Raises:
      ValueError: shapes not (B, H, W, K) and equal.
    """
    _check_heatmap_pair(logits, targets)
    z = logits.astype(jnp.float32)
    t = targets.astype(jnp.float32)
    # softplus(z) = log(1 + e^z) via logaddexp: stable, and its derivative is σ(z) everywhere.
    # (The form max(z, 0) − z·t + log1p(e^−|z|) has the same value but autodiff gives it the
    # derivative −t at exactly z = 0, e.g. for zero-initialised logits.)
    per_pixel = jax.nn.softplus(z) - z * t
    return jnp.mean(per_pixel, axis=(0, 1, 2))


def keypoint_lovasz(logits: Array, targets: Array, *, threshold: float = 0.5) -> Array:
    """Binary Lovász-Softmax loss per key-point type (Berman et al. 2018, as used by
    Laparoflow-SSL App. D.3).

    For type k the two-class probabilities (1 − σ(z_k), σ(z_k)) and the binary labels
    ``targets_k >= threshold`` (the Gaussian targets thresholded at 0.5 by default: a disc of
    radius σ·√(2 ln 2) ≈ 1.18σ around each point) go through
    ``jaxsurg.losses.lovasz.lovasz_softmax_binary`` (= ``lovasz_softmax`` on
    stack([1 − p, p]); over all pixels of the batch, averaged over the classes present).

    Args:
      logits: float (B, H, W, K).
      targets: float (B, H, W, K) in [0, 1].
      threshold: target value at or above which a pixel is foreground.

    Returns:
      float32 (K,).

    Raises:
      ValueError: shapes not (B, H, W, K) and equal.
      ImportError: ``jaxsurg.losses.lovasz`` is not available.
    """
    from jaxsurg.losses import lovasz  # imported here: the module is optional for the BCE part.

    _check_heatmap_pair(logits, targets)
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    labels = (targets >= threshold).astype(jnp.int32)
    # K is small and static (4): one binary Lovász-Softmax per type, over the batch.
    losses = [lovasz.lovasz_softmax_binary(p[..., k], labels[..., k], classes="present") for k in range(p.shape[-1])]
    return jnp.stack(losses).astype(jnp.float32)


def keypoint_loss(logits: Array, targets: Array, *, threshold: float = 0.5, use_lovasz: bool = True) -> Array:
    """Laparoflow-SSL key-point loss (Moens et al. 2024, App. D.3: "we average the binary
    Lovász-Softmax loss and cross-entropy for every key point type"): per type the mean of
    the two terms, then the mean over the types.

    ``L = (1/K) Σ_k ½ (Lovász_k + BCE_k)`` with ``keypoint_lovasz`` (labels: targets ≥
    ``threshold``) and ``keypoint_bce`` (soft Gaussian targets); with ``use_lovasz=False``
    the average of the one term left, ``(1/K) Σ_k BCE_k``. Jit- and grad-compatible.
    (The segmentation loss of App. D.3 is instead the SUM of cross-entropy and
    Lovász-Softmax, ``finetune.segmentation_loss``, as the paper writes it.)

    Args:
      logits: float (B, H, W, K) pre-sigmoid logits (``KeypointHead`` output).
      targets: float (B, H, W, K) in [0, 1] (``gaussian_heatmaps``, batched).
      threshold: foreground threshold of the targets for the Lovász term.
      use_lovasz: False leaves the Lovász term out (BCE only).

    Returns:
      float32 scalar.

    Raises:
      ValueError: shapes not (B, H, W, K) and equal.
      ImportError: ``use_lovasz`` and ``jaxsurg.losses.lovasz`` is not available.
    """
    per_type = keypoint_bce(logits, targets)
    if use_lovasz:
        per_type = 0.5 * (per_type + keypoint_lovasz(logits, targets, threshold=threshold))
    return jnp.mean(per_type)


# ----------------------------------------------------------------------------- peaks


def _window_max(x: Array, window: tuple[int, int], pad: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Max of x (…, H, W) over a (wh, ww) window, after −inf padding ``pad`` of (H, W)."""
    lead = x.ndim - 2
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) * lead + window, (1,) * x.ndim, ((0, 0),) * lead + pad)


def _peak_mask(heat: Array, threshold: float, r: int) -> Array:
    """bool (…, H, W): heat ≥ threshold and the first maximum, in raster order, of its window.

    A pixel is kept when it is ≥ every pixel of its (2r+1)² window and > every window pixel
    that comes before it in raster order (the rows above, and the pixels to its left). Two
    kept pixels are therefore never within Chebyshev distance r of each other, even on a
    plateau of equal values (where the top-left pixel is kept).
    """
    h, w = heat.shape[-2:]
    keep = heat >= threshold
    if r == 0:
        return keep
    full = _window_max(heat, (2 * r + 1, 2 * r + 1), ((r, r), (r, r)))
    above = _window_max(heat, (r, 2 * r + 1), ((r, 0), (r, r)))[..., :h, :]  # rows y−r … y−1
    left = _window_max(heat, (1, r), ((0, 0), (r, 0)))[..., :, :w]  # row y, columns x−r … x−1
    return keep & (heat >= full) & (heat > jnp.maximum(above, left))


def find_peaks_padded(
    heatmap: Array, *, threshold: float = 0.5, nms_radius: int = 6, max_peaks: int = 10
) -> tuple[Array, Array, Array]:
    """Non-maximum suppression on key-point probabilities, fixed-size output (jit/vmap-able).

    A peak is a pixel with probability ≥ ``threshold`` that is the maximum of its
    (2r+1)×(2r+1) window, r = ``nms_radius`` (ties: the first in raster order, so no two
    peaks are within r px in x and in y). Up to ``max_peaks`` peaks per type, by decreasing
    score. Coordinates are integer pixel centres.

    Args:
      heatmap: float (..., H, W, K) probabilities (sigmoid of ``KeypointHead`` logits).
      threshold: minimum probability of a peak.
      nms_radius: r ≥ 0 in pixels (static).
      max_peaks: peaks kept per type, ≥ 1 (static).

    Returns:
      (xy float32 (..., K, max_peaks, 2) as (x, y) pixels, scores float32 (..., K, max_peaks),
      valid bool (..., K, max_peaks)); invalid slots have xy = 0 and score = 0, and valid
      slots come first.

    Raises:
      ValueError: heatmap has fewer than 3 dims, nms_radius < 0 or max_peaks < 1.
    """
    heatmap = jnp.asarray(heatmap)
    if heatmap.ndim < 3:
        raise ValueError(f"heatmap must be (..., H, W, K), got shape {heatmap.shape}")
    if int(nms_radius) < 0 or int(max_peaks) < 1:
        raise ValueError(f"need nms_radius >= 0 and max_peaks >= 1, got {nms_radius} and {max_peaks}")
    h, w = heatmap.shape[-3:-1]
    heat = jnp.moveaxis(heatmap.astype(jnp.float32), -1, -3)  # (..., K, H, W)
    mask = _peak_mask(heat, threshold, int(nms_radius))
    flat = jnp.where(mask, heat, -jnp.inf).reshape(heat.shape[:-2] + (h * w,))
    k = min(int(max_peaks), h * w)
    scores, index = lax.top_k(flat, k)
    valid = jnp.isfinite(scores)
    xy = jnp.stack([index % w, index // w], axis=-1).astype(jnp.float32)
    xy = jnp.where(valid[..., None], xy, 0.0)
    scores = jnp.where(valid, scores, 0.0)
    if k < max_peaks:  # tiny images: pad to the promised size
        extra = int(max_peaks) - k
        pad = [(0, 0)] * (scores.ndim - 1) + [(0, extra)]
        xy = jnp.pad(xy, pad + [(0, 0)])
        scores, valid = jnp.pad(scores, pad), jnp.pad(valid, pad)
    return xy, scores, valid


_find_peaks_jit = jax.jit(find_peaks_padded, static_argnames=("threshold", "nms_radius", "max_peaks"))


def find_peaks(
    heatmap: Array | np.ndarray, *, threshold: float = 0.5, nms_radius: int = 6, max_peaks: int = 10
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Key-point detections of one image: ``find_peaks_padded`` with the padding removed.

    Args:
      heatmap: float (H, W, K) probabilities, NumPy or JAX.
      threshold, nms_radius, max_peaks: as ``find_peaks_padded``.

    Returns:
      A list of K pairs (xy float32 (n_k, 2) as (x, y) pixels, scores float32 (n_k,)), by
      decreasing score, n_k ≤ max_peaks.

    Raises:
      ValueError: heatmap not (H, W, K), nms_radius < 0 or max_peaks < 1.
    """
    if np.ndim(heatmap) != 3:
        raise ValueError(f"heatmap must be (H, W, K), got shape {np.shape(heatmap)}")
    xy, scores, valid = jax.device_get(
        _find_peaks_jit(heatmap, threshold=float(threshold), nms_radius=int(nms_radius), max_peaks=int(max_peaks))
    )
    return [(xy[k][valid[k]], scores[k][valid[k]]) for k in range(xy.shape[0])]


# ----------------------------------------------------------------------------- metric


@dataclasses.dataclass(frozen=True)
class KeypointCounts:
    """Per-type matching counts (Du et al. 2018 protocol); add counts of frames with ``+``.

    Attributes:
      tp, fp, fn: int64 (K,) true positives, false positives, false negatives.
      distance_sum: float64 (K,) sum of the true positives' distances, px at the scaled size.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    distance_sum: np.ndarray

    def __add__(self, other: KeypointCounts) -> KeypointCounts:
        if not isinstance(other, KeypointCounts):
            return NotImplemented
        if self.tp.shape != other.tp.shape:
            raise ValueError(f"cannot add counts of {self.tp.shape[0]} and {other.tp.shape[0]} key-point types")
        return KeypointCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.distance_sum + other.distance_sum
        )


def _points(a: Any, name: str, k: int) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.size == 0:
        return np.zeros((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}[{k}] must be (n, 2) (x, y) points, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}[{k}] must be finite")
    return a


def match_keypoints(
    pred: Sequence[Any],
    gt: Sequence[Any],
    *,
    radius: float = DU_MATCH_RADIUS,
    scale: tuple[float, float] = (1.0, 1.0),
) -> KeypointCounts:
    """Matches predicted to ground-truth key points of one image, per type (Du et al. 2018).

    Coordinates are first multiplied by ``scale`` = (sx, sy) — (256/W, 256/H) for Du et
    al.'s 256×256 evaluation (an offset such as the pixel-centre half pixel cancels in
    distances). A prediction is a true positive when it is matched one-to-one to a
    ground-truth point of the same type at Euclidean distance ≤ ``radius``. The matching is
    optimal (Hungarian, ``scipy.optimize.linear_sum_assignment``): the largest number of
    true positives, and among those the smallest total distance. Unmatched predictions are
    false positives, unmatched ground-truth points false negatives.

    Args:
      pred: K arrays (n_k, 2) of predicted (x, y) pixels (e.g. ``find_peaks`` points,
        scaled to the ground truth's image); empty arrays or lists allowed.
      gt: K arrays (m_k, 2) of visible ground-truth (x, y) pixels.
      radius: match radius in scaled pixels (20 at 256×256).
      scale: (sx, sy) factors applied to x and y before measuring distances.

    Returns:
      ``KeypointCounts`` with (K,) arrays; distances in scaled pixels.

    Raises:
      ValueError: len(pred) != len(gt), an entry not (n, 2) finite, radius ≤ 0 or a scale
        not positive.
    """
    from scipy.optimize import linear_sum_assignment

    if len(pred) != len(gt):
        raise ValueError(f"pred and gt must have one entry per key-point type, got {len(pred)} and {len(gt)}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 pixels, got {radius}")
    s = np.asarray(scale, np.float64)
    if s.shape != (2,) or not (s > 0).all():
        raise ValueError(f"scale must be (sx, sy) with positive entries, got {scale}")
    num = len(pred)
    tp, fp, fn = np.zeros(num, np.int64), np.zeros(num, np.int64), np.zeros(num, np.int64)
    dist_sum = np.zeros(num, np.float64)
    for k in range(num):
        p, g = _points(pred[k], "pred", k) * s, _points(gt[k], "gt", k) * s
        matched, total = 0, 0.0
        if len(p) and len(g):
            d = np.linalg.norm(p[:, None, :] - g[None, :, :], axis=-1)  # (n, m)
            ok = d <= radius
            # A cost above any sum of feasible distances makes "one more match" always win.
            big = radius * (min(d.shape) + 1) + 1.0
            rows, cols = linear_sum_assignment(np.where(ok, d, big))
            hit = ok[rows, cols]
            matched, total = int(hit.sum()), float(d[rows, cols][hit].sum())
        tp[k], fp[k], fn[k], dist_sum[k] = matched, len(p) - matched, len(g) - matched, total
    return KeypointCounts(tp, fp, fn, dist_sum)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _scores(tp: int, fp: int, fn: int, dist: float) -> dict[str, Any]:
    return {
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "distance": _ratio(dist, tp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
    }


def summarize_keypoints(
    counts: KeypointCounts | Iterable[KeypointCounts], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Du et al. (2018) scores from matching counts (as Laparoflow-SSL Table 2).

    Per type and overall (counts pooled over types): recall = TP/(TP + FN), precision =
    TP/(TP + FP), distance = mean distance of the true positives (px at 256×256 when matched
    with Du et al.'s scale), F1 = 2TP/(2TP + FP + FN) (= 2PR/(P + R)), plus the raw counts.
    Fractions are in [0, 1] (the paper prints %). A ratio with a zero denominator is None
    (JSON null). ``overall["f1_mean_over_types"]`` is the mean of the per-type F1 values that
    are defined; Table 2's single F1 column agrees with this mean on the rows that can be
    checked from its printed recalls and precisions (e.g. Du et al.: .85).

    Args:
      counts: one ``KeypointCounts`` or an iterable of them (e.g. one per frame), summed.
      names: K type names; default ``KEYPOINT_NAMES`` for K = 4, else "type_k".

    Returns:
      {"per_type": {name: {"recall", "precision", "distance", "f1", "tp", "fp", "fn"}},
       "overall": {same keys, "f1_mean_over_types"}, "convention": str}.

    Raises:
      ValueError: no counts, or names of the wrong length.
    """
    if isinstance(counts, KeypointCounts):
        total = counts
    else:
        items = list(counts)
        if not items:
            raise ValueError("counts must hold at least one KeypointCounts")
        total = items[0]
        for c in items[1:]:
            total = total + c
    num = total.tp.shape[0]
    if names is None:
        names = KEYPOINT_NAMES if num == len(KEYPOINT_NAMES) else tuple(f"type_{k}" for k in range(num))
    if len(names) != num:
        raise ValueError(f"names must have {num} entries, got {len(names)}")
    per_type = {
        str(n): _scores(total.tp[k], total.fp[k], total.fn[k], total.distance_sum[k]) for k, n in enumerate(names)
    }
    overall = _scores(total.tp.sum(), total.fp.sum(), total.fn.sum(), total.distance_sum.sum())
    f1s = [v["f1"] for v in per_type.values() if v["f1"] is not None]
    overall["f1_mean_over_types"] = float(np.mean(f1s)) if f1s else None
    return {
        "per_type": per_type,
        "overall": overall,
        "convention": (
            "Du et al. 2018: one-to-one matching per key-point type, true positive within the match "
            "radius (20 px at 256x256); recall/precision/F1 as fractions, distance = mean over true "
            "positives in px at the scaled size; null where undefined"
        ),
    }
