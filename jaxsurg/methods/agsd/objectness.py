"""AGSD's objectness cue (Liu et al., MICCAI 2020, Sec. 2.1): "retrieved using a
class-agnostic object detector [1]", a per-pixel map in [0, 1] that the anchors multiply with
the colour and location cues (``cues.py``).

The authors never released the cue code (their repository reads precomputed anchors), so the
detector is our choice: BING (Cheng et al., CVPR 2014; OpenCV contrib
``cv2.saliency.ObjectnessBING``, needs its nine trained model files) with its top-k boxes
accumulated into a per-pixel map, or, needing no files and the default, spectral-residual
saliency (Hou & Zhang, CVPR 2007; ``cv2.saliency.StaticSaliencySpectralResidual``). Both maps
are divided by their maximum. Measured on the 72 labelled frames of the real CholecSeg8k
clip, see :func:`objectness_cue`.

Host-side (OpenCV): every function returns ``np.ndarray``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxsurg.methods.agsd.cues import check_images

__all__ = [
    "BING_MODEL_FILES",
    "OBJECTNESS_METHODS",
    "BingObjectness",
    "bing_objectness",
    "objectness_cue",
    "spectral_residual_saliency",
]

OBJECTNESS_METHODS = ("spectral_residual", "bing")
BING_WEIGHTS = ("count", "score")
# OpenCV's ObjectnessBING runs the three colour spaces MAXBGR, HSV and I (gray) in turn and
# reads ObjNess<B2><W8><space>.{wS1, wS2, idx}.yml.gz for each (base 2, window 8).
BING_MODEL_FILES = tuple(f"ObjNessB2W8{space}.{part}.yml.gz" for space in ("MAXBGR", "HSV", "I") for part in ("idx", "wS1", "wS2"))


def _check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _saliency_module():
    """``cv2.saliency``, or an ImportError that says which package provides it."""
    try:
        import cv2

        return cv2.saliency
    except (ImportError, AttributeError) as e:
        raise ImportError(
            "AGSD's objectness cue needs OpenCV's contrib module cv2.saliency: "
            "pip install opencv-contrib-python-headless (uninstall opencv-python-headless first; "
            "both packages provide cv2)"
        ) from e


@contextlib.contextmanager
def _quiet_c_stdout() -> Iterator[None]:
    """Silences what C code prints to file descriptor 1 (OpenCV's BING prints three
    'Average time for predicting an image' lines per call). Process-wide while it lasts."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                libc.fflush(None)
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _check_bing_folder(model_dir: str | os.PathLike) -> Path:
    folder = Path(model_dir)
    expected = ", ".join(BING_MODEL_FILES)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"BING model folder {str(folder)!r} does not exist; it must hold {expected} "
            "(opencv_contrib modules/saliency/samples/ObjectnessTrainedModel/)"
        )
    missing = [f for f in BING_MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"BING model folder {str(folder)!r} lacks {', '.join(missing)}; it must hold {expected} "
            "(opencv_contrib modules/saliency/samples/ObjectnessTrainedModel/)"
        )
    return folder


class BingObjectness:
    """BING objectness (Cheng et al., "BING: Binarized Normed Gradients for Objectness
    Estimation at 300fps", CVPR 2014) as a per-pixel map: OpenCV contrib
    ``cv2.saliency.ObjectnessBING`` gives boxes, the best ``top_k`` are accumulated.

    One OpenCV detector per instance (make one per model folder and reuse it); not
    thread-safe. Run it on full-resolution frames (see :func:`objectness_cue`: on the real
    clip its pixel AUC is 0.963 at 480×854 but 0.720 at 128×232) and resize the map.

    What OpenCV does (opencv_contrib ``saliency/src/BING/objectnessBING.cpp``):
    ``computeSaliency(bgr)`` runs the MAXBGR, HSV and I models in turn (all nine files are
    read; with some missing it silently returns fewer boxes) and returns boxes
    (x1, y1, x2, y2), 1-based and inclusive, i.e. the 0-based pixels [x1 − 1, x2) × [y1 − 1, y2),
    best first. ``getobjectnessValues()`` holds, in the order the boxes were FOUND (not the
    returned order), the rank-based values (300 + rank within its colour space)·{1, 3, 5}
    (not the SVM scores), lower = more object-like; the returned order is these values
    sorted ascending. It also writes ``BBoxesB2W8I/bb.txt`` under its results folder
    (``/`` by default): each instance points it at a private temporary folder.

    Args:
      model_dir: folder with :data:`BING_MODEL_FILES`.
      top_k: number of best boxes accumulated (≥ 1; fewer when BING finds fewer).
      weight: what each box adds to its pixels: ``"count"`` 1; ``"score"`` v_best / v,
        v = OpenCV's value of the box (so in (0, 1], the best box 1).
      quiet: silence OpenCV's timing printout during each call (redirects file
        descriptor 1 briefly; set False if other threads print meanwhile).

    Raises:
      FileNotFoundError: ``model_dir`` missing or lacking any of the model files (the
        message names the folder and the files).
      ImportError: OpenCV without the contrib ``cv2.saliency`` module.
      ValueError: ``top_k`` < 1 or an unknown ``weight``.
    """

    def __init__(self, model_dir: str | os.PathLike, top_k: int = 1000, weight: str = "count", *, quiet: bool = True):
        saliency = _saliency_module()
        self.model_dir = _check_bing_folder(model_dir)
        if int(top_k) != top_k or top_k < 1:
            raise ValueError(f"top_k must be an integer ≥ 1, got {top_k}")
        if weight not in BING_WEIGHTS:
            raise ValueError(f"weight must be one of {BING_WEIGHTS}, got {weight!r}")
        self.top_k, self.weight, self.quiet = int(top_k), weight, quiet
        self._results = tempfile.TemporaryDirectory(prefix="jaxsurg_bing_")  # removed with the instance
        self._bing = saliency.ObjectnessBING_create()
        self._bing.setTrainingPath(str(self.model_dir))
        self._bing.setBBResDir(self._results.name)

    def boxes(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """All of BING's boxes of one image, best first.

        Args:
          image: uint8 RGB (H, W, 3).

        Returns:
          (boxes, values): int64 (K, 4) 0-based half-open (x0, y0, x1, y1), clipped to the
          image, and float32 (K,) OpenCV's values (ascending; lower = more object-like).
          K = 0 for images under about 8 px a side (BING's smallest window is 8×8 after its
          rescaling; 5×6 gave none, 8×9 gave 3 boxes, 64×64 444, 128×232 ~3,900,
          480×854 ~12,000).

        Raises:
          ValueError: ``image`` not uint8 (H, W, 3).
        """
        image = _check_image(image)
        bgr = np.ascontiguousarray(image[..., ::-1])
        with _quiet_c_stdout() if self.quiet else contextlib.nullcontext():
            ok, found = self._bing.computeSaliency(bgr)
            values = np.sort(np.asarray(self._bing.getobjectnessValues(), np.float32).reshape(-1))
        if not ok or found is None or np.size(found) == 0:
            return np.zeros((0, 4), np.int64), np.zeros((0,), np.float32)
        b = np.asarray(found).reshape(-1, 4).astype(np.int64)
        h, w = image.shape[:2]
        x0 = np.clip(b[:, 0] - 1, 0, w)
        y0 = np.clip(b[:, 1] - 1, 0, h)
        x1 = np.clip(b[:, 2], 0, w)
        y1 = np.clip(b[:, 3], 0, h)
        if values.shape[0] != b.shape[0]:  # never seen; keep the boxes, rank them evenly
            values = np.arange(300, 300 + b.shape[0], dtype=np.float32)
        return np.stack([x0, y0, x1, y1], axis=1), values

    def __call__(self, image: Any) -> np.ndarray:
        """The objectness map of one image.

        Args:
          image: uint8 RGB (H, W, 3).

        Returns:
          float32 (H, W) in [0, 1]: the (weighted) number of the top_k boxes covering each
          pixel, divided by its maximum; all zeros when BING returns no box (small images,
          see :meth:`boxes`).

        Raises:
          ValueError: ``image`` not uint8 (H, W, 3).
        """
        boxes, values = self.boxes(image)
        h, w = np.shape(image)[:2]
        boxes, values = boxes[: self.top_k], values[: self.top_k]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, values = boxes[keep], values[keep]
        if boxes.shape[0] == 0:
            return np.zeros((h, w), np.float32)
        if self.weight == "count":
            wt = np.ones(boxes.shape[0], np.float64)
        else:
            wt = float(values.min()) / np.maximum(values.astype(np.float64), 1e-12)
        # Summed-area accumulation: +w at the two opposite corners, −w at the others.
        acc = np.zeros((h + 1, w + 1), np.float64)
        x0, y0, x1, y1 = boxes.T
        np.add.at(acc, (y0, x0), wt)
        np.add.at(acc, (y0, x1), -wt)
        np.add.at(acc, (y1, x0), -wt)
        np.add.at(acc, (y1, x1), wt)
        m = acc.cumsum(axis=0).cumsum(axis=1)[:h, :w]
        top = m.max()
        if top <= 0:
            return np.zeros((h, w), np.float32)
        return np.clip(m / top, 0.0, 1.0).astype(np.float32)


def bing_objectness(image: Any, model_dir: str | os.PathLike, *, top_k: int = 1000, weight: str = "count") -> np.ndarray:
    """BING objectness map of one uint8 RGB (H, W, 3) image → float32 (H, W) in [0, 1].

    A convenience over :class:`BingObjectness` (see there for the method, the arguments
    and the errors); the detector of a folder is made once and reused across calls.
    """
    return _cached_bing(str(Path(model_dir).resolve()), int(top_k), weight)(image)


@functools.lru_cache(maxsize=4)
def _cached_bing(model_dir: str, top_k: int, weight: str) -> BingObjectness:
    return BingObjectness(model_dir, top_k, weight)


def spectral_residual_saliency(image: Any) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang, "Saliency Detection: A Spectral Residual
    Approach", CVPR 2007) of one image, via OpenCV contrib
    ``cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency``.

    OpenCV converts to grey, works at 64×64 (the log-amplitude spectrum minus its 3×3 mean,
    back-transformed, squared, Gaussian-blurred), divides by the maximum and resizes
    bilinearly to the image size. Here the result is divided by its maximum again (so the
    map peaks at 1, as the BING map) and clipped. Needs no model files. On a flat image the
    map is meaningless (near 1 everywhere).

    Args:
      image: uint8 RGB (H, W, 3).

    Returns:
      float32 (H, W) in [0, 1].

    Raises:
      ValueError: ``image`` not uint8 (H, W, 3).
      ImportError: OpenCV without the contrib ``cv2.saliency`` module.
    """
    image = _check_image(image)
    sr = _spectral_residual()
    ok, m = sr.computeSaliency(np.ascontiguousarray(image[..., ::-1]))
    m = np.nan_to_num(np.asarray(m, np.float32), nan=0.0, posinf=0.0, neginf=0.0) if ok else np.zeros(image.shape[:2], np.float32)
    top = float(m.max()) if m.size else 0.0
    return np.clip(m / top, 0.0, 1.0).astype(np.float32) if top > 0 else np.zeros(image.shape[:2], np.float32)


@functools.lru_cache(maxsize=1)
def _spectral_residual():
    return _saliency_module().StaticSaliencySpectralResidual_create()


def objectness_cue(
    images: Any,
    *,
    method: str = "spectral_residual",
    model_dir: str | os.PathLike | None = None,
    top_k: int = 1000,
    weight: str = "count",
) -> np.ndarray:
    """AGSD's objectness cue c_obj (Liu et al. 2020, Sec. 2.1: "a class-agnostic object
    detector"; which one is ours, see the module doc).

    Measured on the real clip (72 labelled CholecSeg8k frames, pooled pixel AUC of
    instrument vs the rest, border and unlabelled pixels excluded; 128×232 / 480×854):
    spectral residual 0.934 / 0.947; BING top-1000 count 0.720 / 0.963, score 0.821 /
    0.962. BING needs the image's full resolution (its windows are 8–512 px: at 128×232 the
    top boxes are coarse); computed at 480×854 and resized (``cv2.INTER_AREA``) to 128×232
    it scores 0.966 (spectral residual 0.949), and the anchor 1 − a_neg 0.976 (0.940) —
    so compute objectness on the full frames and resize the map. Spectral residual is the
    default because it needs no model files (and is ~90× faster: 2.8 vs 257 ms per
    480×854 frame on a shared 2-core CPU).

    Args:
      images: uint8 RGB (N, H, W, 3).
      method: ``"spectral_residual"`` (:func:`spectral_residual_saliency`; no files) or
        ``"bing"`` (:class:`BingObjectness`; needs ``model_dir``).
      model_dir: the BING model folder (:data:`BING_MODEL_FILES`), for ``"bing"``.
      top_k, weight: BING's (see :class:`BingObjectness`); ignored by spectral residual.

    Returns:
      float32 np.ndarray (N, H, W) in [0, 1], each frame's map divided by its maximum.

    Raises:
      ValueError: unknown ``method``, ``"bing"`` without ``model_dir``, or ``images`` not
        uint8 (N, H, W, 3).
      FileNotFoundError: the BING folder or its files are missing.
      ImportError: OpenCV without the contrib ``cv2.saliency`` module.
    """
    if method not in OBJECTNESS_METHODS:
        raise ValueError(f"method must be one of {OBJECTNESS_METHODS}, got {method!r}")
    if method == "bing" and model_dir is None:
        raise ValueError("method='bing' needs model_dir, the folder of BING's model files " f"({', '.join(BING_MODEL_FILES)})")
    check_images(images)
    images = np.asarray(images)
    if method == "bing":
        fn = _cached_bing(str(Path(model_dir).resolve()), int(top_k), weight)
    else:
        fn = spectral_residual_saliency
    out = np.zeros(images.shape[:3], np.float32)
    for i, image in enumerate(images):
        out[i] = fn(image)
    return out
