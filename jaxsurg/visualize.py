"""Pictures of what a model learned, for a person to look at.

``pca_rgb`` / ``pca_panel``: the three principal components of per-pixel representations as
RGB beside the frame (Laparoflow-SSL, Moens et al. 2024, Fig. 1b and 5c).
"""

from __future__ import annotations

import cv2
import numpy as np


def pca_rgb(features: np.ndarray, *, valid: np.ndarray | None = None, clip_percentile: float = 1.0) -> np.ndarray:
    """Projects per-pixel representations on their first three principal components.

    The components are fitted jointly over all given frames (so colours are comparable
    between them); each is scaled to [0, 255] between its ``clip_percentile`` and
    ``100 − clip_percentile`` percentiles. Component 1 → green, 2 → red, 3 → blue, the
    paper's "GRB" order.

    Args:
      features: float (N, h, w, D) representations, D ≥ 3.
      valid: optional bool (N, h, w): pixels used to fit the components (e.g. inside the
        endoscope's field of view); all are projected.
      clip_percentile: percent of each tail clipped before scaling.

    Returns:
      uint8 (N, h, w, 3) RGB.

    Raises:
      ValueError: if ``features`` is not 4-D with D ≥ 3 or no pixel is valid.
    """
    if features.ndim != 4 or features.shape[-1] < 3:
        raise ValueError(f"pca_rgb expects (N, h, w, D ≥ 3) features, got shape {features.shape}")
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    fit = flat if valid is None else flat[np.asarray(valid).reshape(-1)]
    if len(fit) < 3:
        raise ValueError("pca_rgb: fewer than 3 valid pixels to fit the components")
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    proj = (flat - mean) @ vt[:3].T
    lo = np.percentile(proj, clip_percentile, axis=0)
    hi = np.percentile(proj, 100 - clip_percentile, axis=0)
    scaled = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    rgb = scaled[:, [1, 0, 2]]  # green = 1st component, red = 2nd, blue = 3rd
    return (rgb * 255).round().astype(np.uint8).reshape(*features.shape[:3], 3)


def pca_panel(images: np.ndarray, features: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Rows of [frame | PCA colours of its representation, scaled up to the frame size].

    Args:
      images: uint8 (N, H, W, 3) RGB frames.
      features: float (N, h, w, D) their representations.
      valid: optional bool (N, h, w), see ``pca_rgb``.

    Returns:
      uint8 (N·H, 2·W, 3) RGB.
    """
    n, h, w = images.shape[:3]
    colours = pca_rgb(features, valid=valid)
    rows = [np.concatenate([images[i], cv2.resize(colours[i], (w, h), interpolation=cv2.INTER_NEAREST)], axis=1) for i in range(n)]
    return np.concatenate(rows, axis=0)
