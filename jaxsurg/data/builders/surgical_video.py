"""TFDS builder ``surgical_video``: unlabelled surgical videos from a manual dir, for
self-supervised pretraining (e.g. Laparoflow-SSL keeps frames at 5 fps).

Input: video files (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, … read with
``cv2.VideoCapture``) and folders of frame images (``.png``, ``.jpg``, …, ordered
naturally: ``f2`` before ``f10``), anywhere under the manual dir. Each file or folder is
one video; ``video_id`` counts them in natural order of their paths relative to the manual
dir, which is their ``video_name``.

Frames are resampled to ``config.fps`` (the source frame rate is the container's for a
file, ``config.source_fps`` for a folder): source frame i is kept iff
i = ⌊k · source_fps / fps + ½⌋ for some k = 0, 1, …; ``frame_index`` is i. With
``fps`` = 0 or ≥ the source rate every frame is kept. Frames larger than
``config.max_side`` (longest side, px) are shrunk (area interpolation).

Output: split ``train``; the common schema without masks (``has_label`` False), with DIS
flow and its forward–backward valid mask between consecutive kept frames.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxsurg.data.builders import common, integrity

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")
TASK_CLASSES: dict[str, tuple[str, ...]] = {}  # unlabelled

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put the videos in the manual dir (the folder given as manual_dir / --config.data_dir):
video files ({', '.join(VIDEO_EXTENSIONS)}) and/or folders of frame images
({', '.join(common.IMAGE_EXTENSIONS)}; one folder per video, frames named so that they
sort in time, e.g. frame_0001.png), at any depth:

  <manual_dir>/case01.mp4
  <manual_dir>/case02/frame_0001.png
  <manual_dir>/case02/frame_0002.png
"""


@dataclasses.dataclass(eq=False)
class SurgicalVideoConfig(common.FlowConfig):
    """Resampling, resizing, and the flow fields of ``common.FlowConfig``.

    Attributes:
      fps: target frame rate (frames/s); 0 keeps every frame.
      source_fps: frame rate of frame folders (and of files whose container has none).
      max_side: longest side in px frames are shrunk to; None keeps the size.
    """

    fps: float = 5.0
    source_fps: float = 25.0
    max_side: int | None = None


@dataclasses.dataclass(frozen=True)
class Source:
    """One input video.

    Attributes:
      path: the video file or frame folder. name: its path relative to the manual dir.
      files: the frame images of a folder, in order (empty for a video file).
      fps: its frame rate (frames/s). num_frames: its frame count (a file's from its
        header, which may be approximate).
    """

    path: str
    name: str
    files: tuple[str, ...]
    fps: float
    num_frames: int


def _missing(root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"{problem} (searched {os.path.abspath(root)!r}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def find_inputs(root: str) -> list[tuple[str, tuple[str, ...]]]:
    """Video files and frame folders under ``root``, in natural order of relative path.

    Returns:
      (path, frame files) pairs: frame files empty for a video file, naturally sorted
      image paths for a folder.

    Raises:
      FileNotFoundError: ``root`` is missing or holds no video (path and layout in the message).
    """
    if not os.path.isdir(root):
        raise _missing(root, "the surgical_video manual dir does not exist")
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        images = sorted((f for f in files if f.lower().endswith(common.IMAGE_EXTENSIONS)), key=common.natural_sort_key)
        if images:
            found.append((folder, tuple(os.path.join(folder, f) for f in images)))
        found.extend((os.path.join(folder, f), ()) for f in files if f.lower().endswith(VIDEO_EXTENSIONS))
    if not found:
        raise _missing(root, "no video file or folder of frames found in the manual dir")
    return sorted(found, key=lambda item: common.natural_sort_key(os.path.relpath(item[0], root)))


def source_fingerprint(root: str, cache_path: str | None = None) -> str:
    """Digest of the content of the inputs under ``root`` (relative paths and bytes of
    every video file and frame, ``integrity.content_fingerprint``), naming a build.

    Args:
      root: the manual dir.
      cache_path: JSON cache of content hashes (None = hash every file).

    Raises:
      As ``find_inputs``; OSError for a file that cannot be read.
    """
    paths = [p for path, files in find_inputs(root) for p in (files or (path,))]
    return integrity.content_fingerprint(root, paths, cache_path)


def probe(path: str, files: tuple[str, ...], root: str, default_fps: float) -> Source:
    """Opens one input and reads its frame rate and length.

    Raises:
      ValueError: a video that cannot be opened or has no readable frame (named).
    """
    name = os.path.relpath(path, root).replace(os.sep, "/")
    if files:
        return Source(path, name, files, default_fps, len(files))
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path!r}: unreadable or not a video")
        ok, _ = capture.read()
        if not ok:
            raise ValueError(f"video {path!r} has no readable frame (empty or corrupt)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if not fps or not math.isfinite(fps) or fps <= 0:
        logging.warning("video %s has no frame rate in its container; assuming %s fps", path, default_fps)
        fps = default_fps
    return Source(path, name, (), float(fps), max(count, 1))


def keep_frame(index: int, source_fps: float, fps: float) -> bool:
    """Whether source frame ``index`` is kept when resampling ``source_fps`` → ``fps``
    (module docstring)."""
    if fps <= 0 or fps >= source_fps:
        return True
    step = source_fps / fps
    k = math.floor(index / step)
    return any(math.floor(j * step + 0.5) == index for j in (k, k + 1))


def kept_count(num_frames: int, source_fps: float, fps: float) -> int:
    """How many of ``num_frames`` source frames ``keep_frame`` keeps."""
    return sum(keep_frame(i, source_fps, fps) for i in range(num_frames))


def resize_to(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk (area interpolation) so its longest side is ≤ ``max_side`` px."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def read_frames(source: Source, fps: float, max_side: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """The kept frames of ``source``: (source frame index, uint8 (H, W, 3) RGB).

    Raises:
      ValueError: an unreadable video or frame image (named).
    """
    if source.files:
        for i, path in enumerate(source.files):
            if keep_frame(i, source.fps, fps):
                yield i, resize_to(common.read_rgb(path), max_side)
        return
    capture = cv2.VideoCapture(source.path)
    if not capture.isOpened():
        raise ValueError(f"cannot open video {source.path!r}")
    try:
        i = 0
        while True:
            ok = capture.grab()
            if not ok:
                break
            if keep_frame(i, source.fps, fps):
                ok, bgr = capture.retrieve()
                if not ok:
                    raise ValueError(f"cannot decode frame {i} of video {source.path!r}")
                yield i, resize_to(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side)
            i += 1
    finally:
        capture.release()


class SurgicalVideo(common.FrameSequenceBuilder):
    """Unlabelled surgical videos, resampled, with DIS optical flow."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [SurgicalVideoConfig(name="default", description="5 fps, full size, DIS medium flow")]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_from(common.features(()), description=__doc__)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_dir(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        sources = [probe(path, files, root, self.builder_config.source_fps) for path, files in find_inputs(root)]
        return {"train": self._generate_examples(sources)}

    def _generate_examples(self, sources: list[Source]):
        """Yields (key, example) for the kept frames of every source, in order."""
        cfg = self.builder_config
        counts = [kept_count(s.num_frames, s.fps, cfg.fps) for s in sources]
        # Header frame counts can be a little off: leave room for twice as many frames.
        capacity = 2 * sum(counts) + 16
        rank = 0
        for video_id, (source, count) in enumerate(zip(sources, counts)):
            frames = read_frames(source, cfg.fps, cfg.max_side)
            produced = 0
            for frame_index, image, flow, valid in common.with_flow(
                frames, method=cfg.flow_method, preset=cfg.flow_preset, steps_per_pixel=cfg.flow_steps_per_pixel,
                desc=f"flow {source.name}", total=count,
            ):
                if rank >= capacity:
                    raise ValueError(f"video {source.path!r} has far more frames than its header says ({source.num_frames})")
                yield common.example_key(rank, capacity), common.example(
                    image, {}, has_label=False, flow=flow, flow_valid=valid,
                    video_id=video_id, video_name=source.name, frame_index=frame_index,
                )
                rank += 1
                produced += 1
            if not produced:
                raise ValueError(f"video {source.path!r} has no readable frame")
