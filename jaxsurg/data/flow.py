"""Dense optical flow between video frames, with OpenCV, on the host (numpy in, numpy out).

Conventions (those of the whole project, see DESIGN.md):

- Frames are uint8 RGB arrays of shape (H, W, 3) (a grey (H, W) uint8 frame is accepted
  too). Flow methods work on grey images: RGB is converted with ITU-R BT.601 luma weights
  (``cv2.COLOR_RGB2GRAY``: 0.299 R + 0.587 G + 0.114 B).
- A flow field is float32 of shape (H, W, 2): ``flow[y, x] = (dx, dy)`` in pixels, the
  displacement of pixel (x, y) of ``frame0`` to its position in ``frame1``. x grows to the
  right, y grows downwards.
- ``warp_backward(frame1, flow)`` samples ``frame1`` at ``p + flow[p]`` and so
  reconstructs ``frame0`` wherever the flow is right and the point is not occluded.

Methods:

- ``"dis"`` (default): Dense Inverse Search (Kroeger et al., ECCV 2016),
  ``cv2.DISOpticalFlow``, presets ``"ultrafast"``, ``"fast"`` and ``"medium"`` (default).
  About 30–45 ms for a 854×480 pair on two CPU cores with the medium preset.
- ``"tvl1"``: TV-L1 (Zach et al. 2007; Wedel et al. 2009),
  ``cv2.optflow.DualTVL1OpticalFlow``: more accurate, about 100× slower. From OpenCV's
  contrib modules, which jaxsurg's dependency ``opencv-contrib-python-headless`` has.
- ``"farneback"``: Farnebäck's polynomial expansion (SCIA 2003), ``cv2.calcOpticalFlowFarneback``.

Occlusions and failures are detected with the forward–backward consistency check of
Sundaram, Brox and Keutzer, "Dense point trajectories by GPU-accelerated large displacement
optical flow", ECCV 2010 (their eq. 5): see ``forward_backward_valid``.
"""

from __future__ import annotations

import numpy as np

import cv2

METHODS = ("dis", "tvl1", "farneback")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# Sundaram et al. (2010): |w + ŵ|² < ALPHA (|w|² + |ŵ|²) + BETA.
FB_ALPHA = 0.01
FB_BETA = 0.5

_TVL1_MISSING = (
    "optical flow method 'tvl1' needs OpenCV's contrib modules (cv2.optflow), which this "
    "OpenCV build lacks: another OpenCV package shadows jaxsurg's opencv-contrib-python-headless. "
    "Uninstall opencv-python / opencv-python-headless and reinstall opencv-contrib-python-headless, or use method='dis'."
)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """A frame as a grey uint8 image.

    Args:
      frame: uint8 (H, W, 3) RGB, or uint8 (H, W) already grey.

    Returns:
      uint8 (H, W), BT.601 luma of an RGB frame (a grey frame is returned as is).

    Raises:
      ValueError: if the frame is not uint8 (H, W) or (H, W, 3).
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[-1] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"frames must have shape (H, W, 3) or (H, W), got {frame.shape}")


def _flow_fn(method: str, preset: str):
    """A function (grey0, grey1) -> float32 (H, W, 2) for ``method`` (and DIS ``preset``)."""
    if method == "dis":
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; known presets: {sorted(DIS_PRESETS)}")
        code = DIS_PRESETS[preset]
        # A fresh instance per call: DIS keeps state between calls, and creating one is cheap.
        return lambda g0, g1: cv2.DISOpticalFlow_create(code).calc(g0, g1, None)
    if method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise ImportError(_TVL1_MISSING)
        return lambda g0, g1: cv2.optflow.DualTVL1OpticalFlow_create().calc(g0, g1, None)
    if method == "farneback":
        return lambda g0, g1: cv2.calcOpticalFlowFarneback(
            g0, g1, None, pyr_scale=0.5, levels=5, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
        )
    raise ValueError(f"unknown optical flow method {method!r}; known methods: {list(METHODS)}")


def optical_flow(frame0: np.ndarray, frame1: np.ndarray, method: str = "dis", preset: str = "medium") -> np.ndarray:
    """Dense optical flow from ``frame0`` to ``frame1``.

    Args:
      frame0, frame1: uint8 (H, W, 3) RGB (or (H, W) grey) frames of the same size.
      method: ``"dis"``, ``"tvl1"`` or ``"farneback"`` (see the module docstring).
      preset: DIS preset, ``"ultrafast"``, ``"fast"`` or ``"medium"``; ignored by the other
        methods.

    Returns:
      float32 (H, W, 2): ``flow[y, x] = (dx, dy)`` in pixels, from frame0 to frame1.

    Raises:
      ValueError: unknown method or preset; frames of different sizes or not uint8.
      ImportError: ``method="tvl1"`` without opencv-contrib (the message says what to install).
    """
    fn = _flow_fn(method, preset)
    g0, g1 = to_gray(frame0), to_gray(frame1)
    if g0.shape != g1.shape:
        raise ValueError(f"frames differ in size: {g0.shape} vs {g1.shape}")
    return np.asarray(fn(g0, g1), np.float32)


def _sample_coordinates(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x + flow_x, y + flow_y: float32 (H, W) maps of where each pixel lands."""
    h, w = flow.shape[:2]
    xs = np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]
    ys = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
    return xs, ys


def warp_backward(src: np.ndarray, flow: np.ndarray, border: str = "replicate") -> np.ndarray:
    """Backward warp: ``out[p] = src(p + flow[p])`` with bilinear interpolation.

    With ``src`` = frame1 and ``flow`` the flow from frame0 to frame1, the result
    approximates frame0 (except at occlusions).

    Args:
      src: (H, W) or (H, W, C) array, C ≤ 4, uint8 or float32.
      flow: float32 (H, W, 2) in pixels.
      border: what is sampled outside ``src``: ``"replicate"`` (nearest edge pixel) or
        ``"zero"``.

    Returns:
      Same shape and dtype as ``src`` (uint8 values are rounded).

    Raises:
      ValueError: if the spatial sizes differ or ``border`` is unknown.
    """
    flow = np.asarray(flow, np.float32)
    if src.shape[:2] != flow.shape[:2]:
        raise ValueError(f"src {src.shape[:2]} and flow {flow.shape[:2]} differ in size")
    modes = {"replicate": cv2.BORDER_REPLICATE, "zero": cv2.BORDER_CONSTANT}
    if border not in modes:
        raise ValueError(f"unknown border {border!r}; known: {sorted(modes)}")
    xs, ys = _sample_coordinates(flow)
    out = cv2.remap(np.ascontiguousarray(src), xs, ys, cv2.INTER_LINEAR, borderMode=modes[border], borderValue=0)
    return out.reshape(src.shape)


def forward_backward_valid(
    flow_fw: np.ndarray, flow_bw: np.ndarray, alpha: float = FB_ALPHA, beta: float = FB_BETA
) -> np.ndarray:
    """Pixels whose forward flow is confirmed by the backward flow.

    Forward–backward consistency (Sundaram, Brox & Keutzer, ECCV 2010, eq. 5): with
    w = ``flow_fw[p]`` and ŵ = ``flow_bw`` sampled (bilinearly) at p + w, pixel p is valid iff

        |w + ŵ|² < alpha · (|w|² + |ŵ|²) + beta

    and p + w lies inside the image. Occluded pixels (visible in frame0, hidden in frame1)
    and flow failures break the check.

    Args:
      flow_fw: float32 (H, W, 2), flow frame0 → frame1 in pixels.
      flow_bw: float32 (H, W, 2), flow frame1 → frame0 in pixels.
      alpha: relative tolerance (dimensionless), 0.01 in the paper.
      beta: absolute tolerance in px², 0.5 in the paper.

    Returns:
      bool (H, W), True where the forward flow is trusted.

    Raises:
      ValueError: if the shapes differ or are not (H, W, 2).
    """
    flow_fw = np.asarray(flow_fw, np.float32)
    flow_bw = np.asarray(flow_bw, np.float32)
    if flow_fw.shape != flow_bw.shape or flow_fw.ndim != 3 or flow_fw.shape[-1] != 2:
        raise ValueError(f"flows must both be (H, W, 2), got {flow_fw.shape} and {flow_bw.shape}")
    h, w = flow_fw.shape[:2]
    xs, ys = _sample_coordinates(flow_fw)
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    bw = cv2.remap(flow_bw, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = _squared_norm(flow_fw + bw)
    bound = alpha * (_squared_norm(flow_fw) + _squared_norm(bw)) + beta
    return inside & (err < bound)


def _squared_norm(flow: np.ndarray) -> np.ndarray:
    """dx² + dy² of a (H, W, 2) field (faster than a sum over the short last axis)."""
    return flow[..., 0] ** 2 + flow[..., 1] ** 2


def flow_and_valid(
    frame0: np.ndarray,
    frame1: np.ndarray,
    method: str = "dis",
    preset: str = "medium",
    alpha: float = FB_ALPHA,
    beta: float = FB_BETA,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward flow frame0 → frame1 and its forward–backward valid mask.

    Computes the flow both ways (twice the cost of ``optical_flow``).

    Args:
      frame0, frame1: uint8 (H, W, 3) RGB frames of the same size.
      method, preset: as in ``optical_flow``.
      alpha, beta: as in ``forward_backward_valid``.

    Returns:
      (flow float32 (H, W, 2) in pixels, valid bool (H, W)).

    Raises:
      As ``optical_flow``.
    """
    g0, g1 = to_gray(frame0), to_gray(frame1)
    fw = optical_flow(g0, g1, method, preset)
    bw = optical_flow(g1, g0, method, preset)
    return fw, forward_backward_valid(fw, bw, alpha, beta)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Colour-wheel picture of a flow field, for overlays and debugging.

    Hue is the direction (red = +x (right), then through yellow/green towards +y (down),
    cyan = −x, blue/magenta = −y); brightness is the magnitude, full at ``max_magnitude``.

    Args:
      flow: float (H, W, 2) in pixels.
      max_magnitude: magnitude in pixels shown at full brightness; default the largest
        magnitude in ``flow`` (1 px if the flow is all zero).
      valid: optional bool (H, W); invalid pixels are painted mid-grey (128).

    Returns:
      uint8 (H, W, 3) RGB.
    """
    flow = np.asarray(flow, np.float32)
    mag, ang = cv2.cartToPolar(np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1]), angleInDegrees=True)
    if max_magnitude is None:
        max_magnitude = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    hsv = np.empty(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = np.round(ang / 2.0).astype(np.int32) % 180  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.round(np.clip(mag / max_magnitude, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if valid is not None:
        rgb[~np.asarray(valid, bool)] = 128
    return rgb
