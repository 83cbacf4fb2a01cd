"""Host-side (numpy) augmentations for frames and clips of consecutive frames.

Every function takes an *example*: a dict of arrays sharing a leading time axis T (T = 1 for
single frames) with the keys it knows about, and leaves other keys alone:

- ``image``: uint8 (T, H, W, 3) RGB;
- ``mask``: uint8 (T, H, W) class map, 255 = ignore;
- ``flow``: float32 (T, H, W, 2) forward flow (dx, dy) in pixels;
- ``flow_valid``: bool (T, H, W).

Geometric transforms are shared by all frames of a clip (one crop, one flip) and keep the
flow consistent (scaled by a resize, sign-flipped by a flip); photometric jitter changes
the image only.
"""

from __future__ import annotations

import cv2
import numpy as np

_SPATIAL = ("image", "mask", "flow", "flow_valid")


def _per_frame(arr: np.ndarray, fn) -> np.ndarray:
    return np.stack([fn(a) for a in arr])


def resize(example: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resizes every spatial array to ``size`` = (height, width) in pixels.

    Images use area interpolation when shrinking and bilinear when enlarging; masks and
    validity use nearest neighbour; flow is resized bilinearly and its (dx, dy) scaled by
    the width and height ratios, so it stays in pixels of the new frame.
    """
    h, w = example["image"].shape[1:3]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return example
    out = dict(example)
    dsize = (out_w, out_h)
    shrink = out_h * out_w < h * w
    out["image"] = _per_frame(example["image"], lambda a: cv2.resize(a, dsize, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR))
    if "mask" in example:
        out["mask"] = _per_frame(example["mask"], lambda a: cv2.resize(a, dsize, interpolation=cv2.INTER_NEAREST))
    if "flow" in example:
        scale = np.array([out_w / w, out_h / h], np.float32)
        out["flow"] = _per_frame(example["flow"], lambda a: cv2.resize(a, dsize, interpolation=cv2.INTER_LINEAR)) * scale
    if "flow_valid" in example:
        out["flow_valid"] = _per_frame(
            example["flow_valid"].astype(np.uint8), lambda a: cv2.resize(a, dsize, interpolation=cv2.INTER_NEAREST)
        ).astype(bool)
    return out


def random_crop(example: dict[str, np.ndarray], size: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Crops one random (height, width) = ``size`` window, the same for all frames.

    Raises:
      ValueError: if the frame is smaller than ``size``.
    """
    h, w = example["image"].shape[1:3]
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"crop size {size} is larger than the frame ({h}, {w}); set config.resize or image_size")
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    out = dict(example)
    for k in _SPATIAL:
        if k in example:
            out[k] = example[k][:, y : y + ch, x : x + cw]
    return out


def center_crop(example: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Crops the central (height, width) = ``size`` window of every frame."""
    h, w = example["image"].shape[1:3]
    ch, cw = min(size[0], h), min(size[1], w)
    y, x = (h - ch) // 2, (w - cw) // 2
    out = dict(example)
    for k in _SPATIAL:
        if k in example:
            out[k] = example[k][:, y : y + ch, x : x + cw]
    return out


def random_flip(
    example: dict[str, np.ndarray], rng: np.random.Generator, *, horizontal: bool = True, vertical: bool = False
) -> dict[str, np.ndarray]:
    """Flips all frames left-right (and/or up-down) with probability 0.5 each.

    A horizontal flip mirrors the flow field and negates dx; a vertical one negates dy.
    """
    out = dict(example)
    for axis, enabled in ((2, horizontal), (1, vertical)):
        if not (enabled and rng.random() < 0.5):
            continue
        for k in _SPATIAL:
            if k in out:
                out[k] = np.flip(out[k], axis=axis)
        if "flow" in out:
            component = 0 if axis == 2 else 1
            out["flow"] = out["flow"].copy()
            out["flow"][..., component] *= -1
    for k in _SPATIAL:
        if k in out:
            out[k] = np.ascontiguousarray(out[k])
    return out


def photometric_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue_degrees: float = 0.0,
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes, one draw for all frames.

    Args:
      image: uint8 (T, H, W, 3) RGB.
      rng: the random generator.
      brightness: additive offset drawn from U(−b, b), in [0, 1] intensity units.
      contrast: factor drawn from U(1 − c, 1 + c) about the mean grey level.
      saturation: factor drawn from U(1 − s, 1 + s) on HSV saturation.
      hue_degrees: hue shift drawn from U(−h, h) degrees.

    Returns:
      uint8 (T, H, W, 3).
    """
    if not (brightness or contrast or saturation or hue_degrees):
        return image
    x = image.astype(np.float32) / 255.0
    if brightness:
        x = x + rng.uniform(-brightness, brightness)
    if contrast:
        x = (x - x.mean()) * rng.uniform(1 - contrast, 1 + contrast) + x.mean()
    if saturation or hue_degrees:
        s_factor = rng.uniform(1 - saturation, 1 + saturation) if saturation else 1.0
        h_shift = rng.uniform(-hue_degrees, hue_degrees) if hue_degrees else 0.0
        x = np.clip(x, 0, 1)
        hsv = _per_frame(x, lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2HSV))
        hsv[..., 0] = (hsv[..., 0] + h_shift) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * s_factor, 0, 1)
        x = _per_frame(hsv, lambda a: cv2.cvtColor(a, cv2.COLOR_HSV2RGB))
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
