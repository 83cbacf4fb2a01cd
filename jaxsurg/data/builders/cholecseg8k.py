"""TFDS builder ``cholecseg8k``: CholecSeg8k (Hong et al., 2020, arXiv:2012.12453), from a
manual dir.

CholecSeg8k annotates 8,080 frames (854×480, 25 fps) of 101 clips of 17 Cholec80
cholecystectomy videos (Twinanda et al., 2016) with 13 classes. Licence CC BY-NC-SA 4.0.

Input: the official layout ``videoNN/videoNN_XXXXX/frame_N_endo.png`` with
``frame_N_endo_watershed_mask.png`` beside each frame, at any folder depth (a flat folder
of such files works too). A frame's video is the nearest enclosing folder named
``videoNN`` (``video_id`` NN, ``video_name`` ``"videoNN"``); without one, ``video_id`` is 0
and ``video_name`` the frame's folder name (all such frames form video 0, so one frame
number may appear only once among them). The watershed mask's value is the class code
(its channels are equal; channel 0 is read); a frame without a mask file is stored
unlabelled (``has_label`` False, masks all 255).

Output: one split, ``train``, holding every frame in (video, frame) order; the training
pipeline splits it in time. Features: the common schema (``jaxsurg.data.builders.common``)
with three label spaces, all stored in every example (255 = ignore everywhere):

- ``mask_full13``: the 13 official classes, ``FULL13_CLASSES`` order;
- ``mask_laparoflow4``: Laparoflow-SSL's task: 0 background (everything else), 1 fat,
  2 instrument (grasper, L-hook electrocautery), 3 gallbladder;
- ``mask_binary``: 1 = instrument (codes 31, 32).

``flow`` is DIS (preset medium) to the next frame of the same clip folder, with the
forward–backward valid mask; a clip's last frame has zero flow and no valid pixel.
"""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxsurg.data.builders import common, integrity

# Watershed-mask code → (full13 index, class name), official CholecSeg8k order.
CODES: dict[int, tuple[int, str]] = {
    50: (0, "black_background"),
    11: (1, "abdominal_wall"),
    21: (2, "liver"),
    13: (3, "gastrointestinal_tract"),
    12: (4, "fat"),
    31: (5, "grasper"),
    23: (6, "connective_tissue"),
    24: (7, "blood"),
    25: (8, "cystic_duct"),
    32: (9, "l_hook_electrocautery"),
    22: (10, "gallbladder"),
    33: (11, "hepatic_vein"),
    5: (12, "liver_ligament"),
}
UNLABELLED_CODE = 255
INSTRUMENT_CODES = (31, 32)
FULL13_CLASSES = tuple(name for _, name in sorted(CODES.values()))
LAPAROFLOW4_CLASSES = ("background", "fat", "instrument", "gallbladder")
BINARY_CLASSES = ("background", "instrument")
TASK_CLASSES = {"full13": FULL13_CLASSES, "laparoflow4": LAPAROFLOW4_CLASSES, "binary": BINARY_CLASSES}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put CholecSeg8k in the manual dir (the folder given as manual_dir / --config.data_dir),
in its official layout, at any depth:

  <manual_dir>/video01/video01_00080/frame_80_endo.png
  <manual_dir>/video01/video01_00080/frame_80_endo_watershed_mask.png
  ...

Only frame_N_endo.png and frame_N_endo_watershed_mask.png are read (the *_mask.png and
*_color_mask.png files may stay). A flat folder of such files (one clip) works too.
CholecSeg8k: https://www.kaggle.com/datasets/newslab/cholecseg8k (CC BY-NC-SA 4.0).
"""

_FRAME_RE = re.compile(r"^frame_(\d+)_endo\.png$")
_VIDEO_RE = re.compile(r"^video(\d+)$")


def _lut(mapping: dict[int, int], other: int | None = None) -> np.ndarray:
    """A 256-entry uint8 table: code → index (``other`` for the remaining known codes);
    255 → 255; unknown codes → 255 (they are rejected before mapping)."""
    table = np.full(256, 255, np.uint8)
    for code in CODES:
        table[code] = mapping.get(code, other if other is not None else 255)
    table[UNLABELLED_CODE] = 255
    return table


FULL13_LUT = _lut({code: index for code, (index, _) in CODES.items()})
LAPAROFLOW4_LUT = _lut({12: 1, 31: 2, 32: 2, 22: 3}, other=0)
BINARY_LUT = _lut({31: 1, 32: 1}, other=0)
LUTS = {"full13": FULL13_LUT, "laparoflow4": LAPAROFLOW4_LUT, "binary": BINARY_LUT}


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame found in the manual dir.

    Attributes:
      path: the frame PNG. mask_path: its watershed mask, or None if there is none.
      video_id, video_name: its video (module docstring). frame_index: N of frame_N.
      folder: the folder holding it (a clip); flow links frames of one folder only.
    """

    path: str
    mask_path: str | None
    video_id: int
    video_name: str
    frame_index: int
    folder: str


@dataclasses.dataclass(eq=False)
class CholecSeg8kConfig(common.FlowConfig):
    """How flow is computed (``common.FlowConfig``)."""


def _video_of(folder: str, root: str) -> tuple[int, str]:
    """(video_id, video_name) of a frame in ``folder``: the nearest ``videoNN`` folder from
    ``folder`` up to ``root`` (included), else (0, the folder's name)."""
    root = os.path.abspath(root)
    here = os.path.abspath(folder)
    while True:
        match = _VIDEO_RE.match(os.path.basename(here))
        if match:
            return int(match.group(1)), os.path.basename(here)
        if here == root or os.path.dirname(here) == here:
            return 0, os.path.basename(os.path.abspath(folder))
        here = os.path.dirname(here)


def _missing(root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"{problem} (searched {os.path.abspath(root)!r}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def find_frames(root: str) -> list[Frame]:
    """Every ``frame_N_endo.png`` under ``root`` (recursively), sorted by (video, frame).

    Raises:
      FileNotFoundError: ``root`` is missing or holds no frame; the message gives the
        searched path and the expected layout.
      ValueError: two files are the same frame of the same video (both are named).
    """
    if not os.path.isdir(root):
        raise _missing(root, "the CholecSeg8k manual dir does not exist")
    frames = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        names = set(files)
        for name in files:
            match = _FRAME_RE.match(name)
            if not match:
                continue
            mask_name = name[: -len(".png")] + "_watershed_mask.png"
            video_id, video_name = _video_of(folder, root)
            frames.append(Frame(
                path=os.path.join(folder, name),
                mask_path=os.path.join(folder, mask_name) if mask_name in names else None,
                video_id=video_id, video_name=video_name, frame_index=int(match.group(1)), folder=folder,
            ))
    if not frames:
        raise _missing(root, "no CholecSeg8k frame (frame_N_endo.png) found in the manual dir")
    frames.sort(key=lambda f: (f.video_id, f.frame_index, f.path))
    for a, b in zip(frames, frames[1:]):
        if (a.video_id, a.frame_index) == (b.video_id, b.frame_index):
            raise ValueError(
                f"{a.path!r} and {b.path!r} are both frame {a.frame_index} of video {a.video_id}: "
                "put each video in its own folder named videoNN"
            )
    return frames


def source_fingerprint(root: str, cache_path: str | None = None) -> str:
    """Digest of the content of the frames and masks under ``root`` (their relative paths
    and bytes, ``integrity.content_fingerprint``), naming a build.

    Args:
      root: the manual dir.
      cache_path: JSON cache of content hashes (None = hash every file).

    Raises:
      As ``find_frames``; OSError for a file that cannot be read.
    """
    paths = [p for f in find_frames(root) for p in (f.path, f.mask_path) if p]
    return integrity.content_fingerprint(root, paths, cache_path)


def read_codes(mask_path: str, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """The class codes of a watershed mask file: uint8 (H, W) (channel 0).

    Args:
      mask_path: a ``frame_N_endo_watershed_mask.png``.
      frame_size: (H, W) of its frame, checked when given.

    Raises:
      ValueError: unreadable file, a size different from the frame's, or codes that are
        not CholecSeg8k codes (the message names the file and lists the values).
    """
    codes = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
    if codes is None:
        raise ValueError(f"cannot read mask {mask_path!r}: unreadable or corrupt file")
    if codes.dtype != np.uint8:
        raise ValueError(f"mask {mask_path!r} has {codes.dtype} pixels; CholecSeg8k masks are 8-bit")
    if codes.ndim == 3:
        codes = codes[..., 0]
    if frame_size is not None and codes.shape != tuple(frame_size):
        raise ValueError(f"mask {mask_path!r} is {codes.shape[1]}×{codes.shape[0]} (W×H) but its frame is {frame_size[1]}×{frame_size[0]}")
    unknown = sorted(set(np.unique(codes).tolist()) - set(CODES) - {UNLABELLED_CODE})
    if unknown:
        raise ValueError(f"mask {mask_path!r} holds unknown class codes {unknown}; known codes: {sorted(CODES) + [UNLABELLED_CODE]}")
    return codes


def map_codes(codes: np.ndarray) -> dict[str, np.ndarray]:
    """Class maps of every label space from watershed codes: task → uint8 (H, W)."""
    return {task: lut[codes] for task, lut in LUTS.items()}


def _clips(frames: list[Frame]) -> list[list[Frame]]:
    """Runs of consecutive frames (in storage order) of one video and one folder."""
    runs: list[list[Frame]] = []
    for f in frames:
        if runs and (runs[-1][-1].video_id, runs[-1][-1].folder) == (f.video_id, f.folder):
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def validate(frames: list[Frame]) -> None:
    """Checks every frame header and every mask before the (long) flow computation.

    Raises:
      ValueError: as ``read_codes`` and ``common.image_size``; frames of one clip folder with
        different sizes (both files named).
    """
    for clip in _clips(frames):
        first_size = common.image_size(clip[0].path)
        for f in clip:
            size = common.image_size(f.path)
            if size != first_size:
                raise ValueError(f"frame {f.path!r} is {size[1]}×{size[0]} but {clip[0].path!r} of the same clip is {first_size[1]}×{first_size[0]}")
            if f.mask_path:
                read_codes(f.mask_path, size)


def _clip_label(frame: Frame) -> str:
    """Short label of a frame's clip for progress bars: ``video_name/folder``."""
    return f"{frame.video_name}/{os.path.basename(frame.folder)}"


class Cholecseg8k(common.FrameSequenceBuilder):
    """CholecSeg8k frames with 13-, 4- and 2-class masks and DIS optical flow."""

    name = "cholecseg8k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [CholecSeg8kConfig(name="default", description="DIS medium flow, stored to 1/16 px")]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_from(
            common.features(tuple(TASK_CLASSES)),
            description=__doc__,
            citation="Hong et al., CholecSeg8k: a semantic segmentation dataset for laparoscopic "
            "cholecystectomy based on Cholec80, arXiv:2012.12453, 2020.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_dir(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        frames = find_frames(root)
        validate(frames)
        return {"train": self._generate_examples(frames)}

    def _generate_examples(self, frames: list[Frame]):
        """Yields (key, example) for ``frames`` (sorted), flow within each clip folder."""
        cfg = self.builder_config
        rank = 0
        for clip in _clips(frames):
            loaded = ((f, common.read_rgb(f.path)) for f in clip)
            for f, image, flow, valid in common.with_flow(
                loaded, method=cfg.flow_method, preset=cfg.flow_preset, steps_per_pixel=cfg.flow_steps_per_pixel,
                desc=f"flow {_clip_label(clip[0])}", total=len(clip),
            ):
                h, w = image.shape[:2]
                if f.mask_path:
                    masks = map_codes(read_codes(f.mask_path, (h, w)))
                else:
                    masks = {task: common.blank_mask(h, w) for task in TASK_CLASSES}
                yield common.example_key(rank, len(frames)), common.example(
                    image, masks, has_label=f.mask_path is not None, flow=flow, flow_valid=valid,
                    video_id=f.video_id, video_name=f.video_name, frame_index=f.frame_index,
                )
                rank += 1

