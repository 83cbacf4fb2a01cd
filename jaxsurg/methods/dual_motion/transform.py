"""T(·, F), the warp of Dual Motion Flow's Eqs. (1), (2) and (5) (Sec. 2.1–2.2), as the
stages use it: ``warp_image`` and ``warp_labels`` by forward splatting (the paper) or by
backward sampling (the authors' code), chosen by ``config.warp``; ``resize_flow`` rescales
a flow with its frame.
"""

from __future__ import annotations

import cv2
import jax
import numpy as np

from jaxsurg.ops.warp import (
    backward_warp,
    backward_warp_labels,
    forward_warp,
    forward_warp_labels,
)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float (H, W, 2) flow in pixels → (h, w, 2) at ``size`` = (h, w), bilinear, with
    (dx, dy) scaled by (w/W, h/H) so it stays in pixels of the new frame."""
    h, w = size
    if flow.shape[:2] == (h, w):
        return flow.astype(np.float32)
    out = cv2.resize(flow.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return out * np.array([w / flow.shape[1], h / flow.shape[0]], np.float32)


def warp_image(image: jax.Array, flow: jax.Array, warp: str) -> jax.Array:
    """T(image, flow): ``forward_warp`` (paper) or ``backward_warp`` with border clamp (code)."""
    return forward_warp(image, flow) if warp == "forward" else backward_warp(image, flow)


def warp_labels(labels: jax.Array, flow: jax.Array, num_classes: int, warp: str) -> jax.Array:
    """T(L, flow) for int (B, H, W) class maps (255 = ignore): per-class splatting + argmax
    (forward) or nearest sampling (backward)."""
    if warp == "forward":
        return forward_warp_labels(labels, flow, num_classes)
    return backward_warp_labels(labels, flow, num_classes)
