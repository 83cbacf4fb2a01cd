"""AGSD's prediction: the instrument probability map turned into a mask.

- ``otsu`` (paper, Sec. 3 "Implementation Details"): each frame's own Otsu threshold of p
  (``jaxsurg.ops.otsu``), adaptive to the map's intensity level.
- ``fixed`` (the authors' code): p > 0.6, then the connected components (8-connected) under
  a minimum area removed (the code: ``remove_small_objects(..., 10000)`` at 1024×1280; here
  a fraction of the frame, ``min_area_fraction``, so it scales with the working size).

The anchors-alone rows of the paper's Table 2 threshold a_pos and 1 − a_neg the same way
(``binarize`` with ``otsu``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg import evaluate, visualize
from jaxsurg.ops.otsu import otsu_threshold

METHODS = ("otsu", "fixed")


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """bool (H, W) with the 8-connected foreground components of fewer than ``min_area``
    pixels set to False."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def binarize(prob: np.ndarray, method: str, *, fixed_threshold: float = 0.6, min_area_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Masks from probability maps.

    Args:
      prob: float (B, H, W) in [0, 1].
      method: ``"otsu"`` or ``"fixed"`` (see the module doc).

    Returns:
      (int32 (B, H, W) class maps 0/1, float32 (B,) the thresholds used).

    Raises:
      ValueError: an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"config.predict.threshold={method!r} is unknown; known: {METHODS}")
    prob = np.asarray(prob, np.float32)
    if method == "otsu":
        t = np.asarray(otsu_threshold(jnp.asarray(prob)), np.float32)
        return (prob > t[:, None, None]).astype(np.int32), t
    min_area = int(round(min_area_fraction * prob.shape[1] * prob.shape[2]))
    masks = np.stack([remove_small_components(p > fixed_threshold, min_area) for p in prob]).astype(np.int32)
    return masks, np.full(len(prob), fixed_threshold, np.float32)


def probability_fn(apply_fn: Callable[[Any, jax.Array], jax.Array]) -> Callable[[Any, jax.Array], jax.Array]:
    """The network's instrument probability: ``(variables, uint8 (B, H, W, 3)) → float32
    (B, H, W)`` in [0, 1], σ of its one logit (pure, traceable)."""
    return lambda variables, images: jax.nn.sigmoid(apply_fn(variables, evaluate.model_input(variables, images))[..., 0]).astype(jnp.float32)


def classes_fn(apply_fn: Callable[[Any, jax.Array], jax.Array], predict_config) -> tuple[Callable[[Any, jax.Array], jax.Array], Callable[[np.ndarray], np.ndarray] | None]:
    """``config.predict`` as a pure class map for ``jaxsurg.predict``, with the host step it
    leaves: ``otsu`` thresholds each frame at its own Otsu threshold inside the function
    (exportable); ``fixed`` thresholds at ``fixed_threshold`` there and returns the removal of
    components under ``min_area_fraction`` of the frame as the host step (None when 0).

    Returns:
      (``(variables, uint8 (B, H, W, 3)) → int32 (B, H, W)``, host step on int32 (H, W) or None).

    Raises:
      ValueError: an unknown ``predict_config.threshold``.
    """
    if predict_config.threshold not in METHODS:
        raise ValueError(f"config.predict.threshold={predict_config.threshold!r} is unknown; known: {METHODS}")
    prob = probability_fn(apply_fn)
    if predict_config.threshold == "otsu":
        def classes(variables, images):
            p = prob(variables, images)
            return (p > otsu_threshold(p)[:, None, None]).astype(jnp.int32)

        return classes, None

    def fixed(variables, images):
        return (prob(variables, images) > predict_config.fixed_threshold).astype(jnp.int32)

    if predict_config.min_area_fraction <= 0:
        return fixed, None

    def remove(mask: np.ndarray) -> np.ndarray:
        return remove_small_components(mask > 0, int(round(predict_config.min_area_fraction * mask.size))).astype(np.int32)

    return fixed, remove


def make_predictor(apply_fn: Callable[[Any, jax.Array], jax.Array], variables: Any, predict_config) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, list]]:
    """A host predictor for ``jaxsurg.evaluate.evaluate_segmentation``: uint8 (B, H, W, 3)
    → int32 (B, H, W), through σ(logits) and ``binarize`` with ``config.predict``.

    Also returns the record it fills as it predicts, in call order: ``"thresholds"``, the
    float threshold used per frame, and ``"probabilities"``, float16 (H, W) p per frame
    (for the threshold-free pixel AUC and ``probability_picture``; at the working size)."""
    variables = jax.device_get(variables)
    prob = jax.jit(probability_fn(apply_fn))
    record: dict[str, list] = {"thresholds": [], "probabilities": []}

    def predict(images: np.ndarray) -> np.ndarray:
        p = np.asarray(prob(variables, images))
        masks, t = binarize(p, predict_config.threshold, fixed_threshold=predict_config.fixed_threshold, min_area_fraction=predict_config.min_area_fraction)
        record["thresholds"].extend(float(v) for v in t)
        record["probabilities"].extend(p.astype(np.float16))
        return masks

    return predict, record


def probability_picture(images: np.ndarray, probabilities: np.ndarray, a_pos: np.ndarray, truth: np.ndarray, thresholds: np.ndarray, count: int = 4) -> np.ndarray:
    """``eval/probability.png``: rows of frame | p | a_pos | ground truth for ``count``
    evaluated frames evenly spaced; the picture that shows whether a poor score is a poor
    ranking (p high in the wrong place) or a poor threshold (p right but cut wrongly).

    p and a_pos are each stretched from their own minimum to their own maximum over the
    frame (bright = high), the range and the threshold written in the panel's title: a map
    that is nearly flat (p ≈ 0.02 everywhere) still shows where it ranks highest.

    Args:
      images: uint8 (N, H, W, 3); probabilities, a_pos: float (N, H, W) in [0, 1];
      truth: uint8 (N, H, W) 1 instrument / 0 rest / 255 unknown; thresholds: float (N,).

    Returns:
      uint8 RGB picture."""

    def heat(m):
        m = np.asarray(m, np.float32)
        lo, hi = float(m.min()), float(m.max())
        grey = np.clip((m - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
        return cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS)[..., ::-1], f"{lo:.3f} to {hi:.3f}"

    panels, titles = [], []
    for i in np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int):
        t = np.asarray(truth[i])
        (p_img, p_range), (a_img, a_range) = heat(probabilities[i]), heat(a_pos[i])
        panels += [images[i], p_img, a_img, np.where(t == 255, 128, t * 255).astype(np.uint8)]
        titles += [f"frame {i}", f"p {p_range}, threshold {thresholds[i]:.3f}", f"a_pos {a_range}", "instrument (grey: unknown)"]
    caption = "AGSD prediction: the network's p before thresholding beside its positive anchor and the truth (each map stretched to its own range)"
    return visualize.compose(panels, titles, columns=4, caption=caption)
