"""TFDS builder ``endovis15_keypoints``: the EndoVis 2015 robotic-instrument tracking frames
with Du et al.'s key points (the Laparoflow-SSL pose-estimation benchmark), from a manual dir.

Sources:

- Frames: EndoVis 2015 "Tracking and detection of robotic instruments" (MICCAI 2015
  Endoscopic Vision challenge), 720×576: training ``Tracking_Robotic_Training`` (four 45 s
  ex-vivo sequences, 4,479 frames), test ``Tracking_Robotic_Testing`` (15 s more of each,
  plus two 1 min sequences, 4,495 frames). The challenge ships one video per
  ``DatasetK`` folder; Du et al. annotate frames extracted to
  ``Tracking_Robotic_Training/Training/DatasetK/Raw/img_000001_raw.png`` and
  ``Tracking_Robotic_Testing/DatasetK/Raw/img_0001.png`` (1-based; the paths inside their files).
- Key points: Du et al., "Articulated multi-instrument 2-D pose estimation using fully
  convolutional networks", IEEE TMI 2018; github.com/surgical-vision/EndoVisPoseAnnotation
  (MIT): one JSON per video, ``train_labels/train{1..4}_labels.json``,
  ``test_labels/test{1..6}_labels.json``, a list with one entry per frame of the video
  ``{"filename": <path>, "class": "image", "annotations": [...]}``; a point is
  ``{"class", "id", "x", "y"}`` (optional ``"occluded": true``), x, y in pixels at 720×576;
  ids ``tool1``–``tool4`` = right clasper, left clasper, right scissor, left scissor (its
  README since commit 7ab3885); an empty list = a frame not annotated (every 5th frame is:
  940 training and 910 test frames). In the public files: at most 2 tools per frame, the
  202 points without "id" (test5, test6) are all EndPoints, 1 point is "occluded", and 4
  frames hold two points of one tool and type (2 at ≤ 3 px; 2 where the other tool's point,
  once an EndPoint, carries this tool's id).
- Key-point set: Laparoflow-SSL (Moens et al. 2024, Sec. 3.1.3, Table 2) scores four
  types, L Clasper, R Clasper, Head and Shaft, as Du et al.

Decisions (each tested in ``tests/test_endovis15_keypoints.py``):

- Videos: a folder ``DatasetK`` below a folder ``Tracking_Robotic_Training`` (split
  ``train``, video_id K, name ``"trainK"``) or ``Tracking_Robotic_Testing`` (``test``,
  video_id 100 + K, ``"testK"``), at any depth; its frames are ``Raw/img_<N>[_raw].<ext>``
  (frame_index N). ``trainK_labels.json`` (anywhere) labels training DatasetK,
  ``testK_labels.json`` test DatasetK, as Du et al.'s own names and paths pair them.
  Entries match frames by file BASENAME within that video only (basenames repeat across
  videos); an entry whose path names another ``DatasetJ`` is refused. Every entry must
  match a frame (this catches frames numbered from 0 instead of 1); frames without an
  entry are kept unlabelled (pretraining frames).
- Types: LeftClasperPoint, RightClasperPoint, HeadPoint, ShaftPoint → ``KEYPOINT_NAMES``
  (LeftClasper, RightClasper, Head, ShaftEnd; the 4th type is Du's ShaftPoint, a point on
  the shaft behind the wrist). EndPoint (where the shaft leaves the view) and TrackedPoint
  (the challenge's original tracked point) are dropped: neither is in the paper's set.
  Any other class is refused.
- Slots: ``SLOTS`` = 4 (Du's four tool ids: a frame can never hold more); the tools of a
  frame fill slots 0, 1, … in tool-id order, ``instrument_type`` = the tool number 1–4
  (0 = unused slot, its points zeros and not visible), as ``synthetic_surgery``.
- A point without "id", or a second point of a type its tool already has, is a double
  annotation if it lies within ``DOUBLE_CLICK_PX`` of a kept point of its type (dropped);
  otherwise it joins the frame's tool that lacks that type and whose kept points are
  nearest (mean distance); if no tool lacks it, the build is refused. (The metric pools
  instruments per type, so this only decides the slot, never a location.)
- ``occluded`` is ignored: an annotated point is ``keypoints_visible`` True (Du et al.
  give it a location; Du et al.'s metric has no notion of occlusion).
- Coordinates are stored as given, read as pixel-centre (x, y); frames of another size
  than 720×576 (the full frame resized) get points scaled as pixel centres,
  ``(x + 0.5)·W/720 − 0.5``. Crops are not supported.

Output: splits ``train`` and ``test`` in (video, frame) order; the common schema
(``jaxsurg.data.builders.common``) without masks (``TASK_CLASSES`` is empty: no
segmentation task), ``has_label`` True ⇔ Du et al. annotated the frame (a non-empty list),
plus ``keypoints`` float32 (SLOTS, 4, 2), ``keypoints_visible`` bool (SLOTS, 4) and
``instrument_type`` int32 (SLOTS,), zeros/False on frames without annotation. ``flow``:
DIS (preset medium) to the next frame of the same video.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxsurg.data.builders import common, integrity
from jaxsurg.data.synthetic_scene import KEYPOINT_NAMES

# Du et al.'s classes kept, → index in KEYPOINT_NAMES; and the ones dropped.
CLASS_TO_TYPE = {"LeftClasperPoint": 0, "RightClasperPoint": 1, "HeadPoint": 2, "ShaftPoint": 3}
DROPPED_CLASSES = ("EndPoint", "TrackedPoint")
TOOL_IDS = ("tool1", "tool2", "tool3", "tool4")  # instrument_type = position + 1
TOOL_NAMES = ("right clasper", "left clasper", "right scissor", "left scissor")
SLOTS = len(TOOL_IDS)
SOURCE_SIZE = (576, 720)  # (H, W) the annotations were made at
DOUBLE_CLICK_PX = 3.0  # a stray point this close (at 720×576) to a kept one of its type is the same point
TEST_VIDEO_OFFSET = 100  # video_id of test DatasetK = 100 + K
SPLIT_FOLDERS = {"Tracking_Robotic_Training": "train", "Tracking_Robotic_Testing": "test"}
TASK_CLASSES: dict[str, tuple[str, ...]] = {}  # no segmentation masks
HAS_KEYPOINTS = True  # records hold keypoints / keypoints_visible / instrument_type

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the EndoVis 2015 tracking frames and Du et al.'s key-point files in the manual dir
(the folder given as manual_dir / --config.data_dir), at any depth:

  <manual_dir>/Tracking_Robotic_Training/Training/Dataset1/Raw/img_000001_raw.png ...
  <manual_dir>/Tracking_Robotic_Testing/Dataset1/Raw/img_0001.png ...
  <manual_dir>/train_labels/train1_labels.json ... test_labels/test6_labels.json

The challenge ships a video per DatasetK folder; extract its frames numbered from 1, e.g.
  ffmpeg -i <DatasetK>/<video>.avi -vsync 0 -start_number 1 <DatasetK>/Raw/img_%06d_raw.png  (training)
  ffmpeg -i <DatasetK>/<video>.avi -vsync 0 -start_number 1 <DatasetK>/Raw/img_%04d.png      (test)
Key points: https://github.com/surgical-vision/EndoVisPoseAnnotation (MIT).
Frames: https://endovissub-instrument.grand-challenge.org/ (EndoVis 2015).
"""

_FRAME_RE = re.compile(r"^img_(\d+)(?:_raw)?\.(?:png|jpe?g|bmp|tiff?)$", re.IGNORECASE)
_DATASET_RE = re.compile(r"^Dataset(\d+)$")
_LABELS_RE = re.compile(r"^(train|test)(\d+)_labels\.json$")


@dataclasses.dataclass(frozen=True)
class Video:
    """One EndoVis 2015 video found in the manual dir.

    Attributes:
      split: ``"train"`` or ``"test"``. number: K of ``DatasetK``. folder: its ``Raw`` folder.
      frames: (frame_index, path) sorted by frame_index.
    """

    split: str
    number: int
    folder: str
    frames: tuple[tuple[int, str], ...]

    @property
    def name(self) -> str:
        return f"{self.split}{self.number}"

    @property
    def video_id(self) -> int:
        return self.number + (TEST_VIDEO_OFFSET if self.split == "test" else 0)


def _missing(root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"{problem} (searched {os.path.abspath(root)!r}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def _split_of(folder: str, root: str) -> str | None:
    """The split of a ``DatasetK`` folder: its nearest ancestor (``root`` included) named
    as a key of ``SPLIT_FOLDERS``, else None."""
    root, here = os.path.abspath(root), os.path.dirname(os.path.abspath(folder))
    while True:
        if os.path.basename(here) in SPLIT_FOLDERS:
            return SPLIT_FOLDERS[os.path.basename(here)]
        if here == root or os.path.dirname(here) == here:
            return None
        here = os.path.dirname(here)


def find_inputs(root: str) -> tuple[dict[tuple[str, int], Video], dict[tuple[str, int], str]]:
    """The videos and key-point files under ``root``, keyed by (split, K).

    Raises:
      FileNotFoundError: ``root`` missing; no video of a split; no key-point file (the
        message gives the searched path and the layout).
      ValueError: two folders or files for one (split, K), or two frames of one number in
        a folder (both named).
    """
    if not os.path.isdir(root):
        raise _missing(root, "the endovis15_keypoints manual dir does not exist")
    videos: dict[tuple[str, int], Video] = {}
    labels: dict[tuple[str, int], str] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            match = _LABELS_RE.match(name)
            if match:
                key, path = (match.group(1), int(match.group(2))), os.path.join(folder, name)
                if key in labels:
                    raise ValueError(f"two key-point files for {name}: {labels[key]!r} and {path!r}")
                labels[key] = path
        match = _DATASET_RE.match(os.path.basename(folder))
        split = _split_of(folder, root) if match else None
        raw = os.path.join(folder, "Raw")
        if split is None or not os.path.isdir(raw):
            continue
        frames: dict[int, str] = {}
        for name in os.listdir(raw):
            m = _FRAME_RE.match(name)
            if m:
                n, path = int(m.group(1)), os.path.join(raw, name)
                if n in frames:
                    raise ValueError(f"{frames[n]!r} and {path!r} are both frame {n} of {raw!r}")
                frames[n] = path
        key = (split, int(match.group(1)))
        if key in videos:
            raise ValueError(f"two folders for {split} Dataset{key[1]}: {videos[key].folder!r} and {raw!r}")
        if frames:
            videos[key] = Video(split, key[1], raw, tuple(sorted(frames.items())))
    for folder, split in SPLIT_FOLDERS.items():
        if not any(s == split for s, _ in videos):
            raise _missing(root, f"no {split} video found: expected frames img_<N>[_raw].png in {folder}/.../DatasetK/Raw")
    if not labels:
        raise _missing(root, "no key-point file (train<K>_labels.json / test<K>_labels.json) found")
    return dict(sorted(videos.items())), dict(sorted(labels.items()))


def source_fingerprint(root: str, cache_path: str | None = None) -> str:
    """Digest of the content of every frame and key-point file under ``root`` (relative
    paths and bytes, ``integrity.content_fingerprint``), naming a build.

    Raises:
      As ``find_inputs``; OSError for a file that cannot be read.
    """
    videos, labels = find_inputs(root)
    paths = [p for v in videos.values() for _, p in v.frames] + list(labels.values())
    return integrity.content_fingerprint(root, paths, cache_path)


def read_labels(path: str, number: int) -> dict[str, list]:
    """Du et al.'s key-point file of video ``number``: frame basename → its annotations.

    Raises:
      ValueError: not valid JSON, not a list of ``{"filename": str, "annotations": list}``,
        a basename twice, or an entry whose path names another ``DatasetJ`` (the message
        names the file and the entry).
      OSError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"key-point file {path!r} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"key-point file {path!r}: expected a list of frame entries, got {type(data).__name__}")
    out: dict[str, list] = {}
    for i, entry in enumerate(data):
        ok = isinstance(entry, dict) and isinstance(entry.get("filename"), str) and isinstance(entry.get("annotations"), list)
        if not ok:
            raise ValueError(f"key-point file {path!r}, entry {i}: expected {{'filename': str, 'annotations': list}}, got {entry!r:.200}")
        parts = re.split(r"[\\/]", entry["filename"])
        datasets = [p for p in parts[:-1] if _DATASET_RE.match(p)]
        if datasets and datasets[-1] != f"Dataset{number}":
            raise ValueError(f"key-point file {path!r}, entry {i}: {entry['filename']!r} is a frame of {datasets[-1]}, not Dataset{number}")
        if parts[-1] in out:
            raise ValueError(f"key-point file {path!r}: frame {parts[-1]!r} has two entries")
        out[parts[-1]] = entry["annotations"]
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def frame_keypoints(annotations: list, size: tuple[int, int] = SOURCE_SIZE, where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's annotations in the project's key-point format (module docstring).

    Args:
      annotations: Du et al.'s point dicts of the frame (x, y at 720×576).
      size: (H, W) of the stored frame; points are scaled to it.
      where: names the frame in error messages.

    Returns:
      keypoints float32 (SLOTS, 4, 2) (x, y) px in ``KEYPOINT_NAMES`` order,
      keypoints_visible bool (SLOTS, 4), instrument_type int32 (SLOTS,).

    Raises:
      ValueError: a point that is not a dict with a known class and finite numbers x, y,
        an unknown tool id, or a stray point that no tool of the frame can take.
    """
    tools: dict[int, dict[int, np.ndarray]] = {}
    strays = []
    for i, point in enumerate(annotations):
        at = f"{where}, point {i}"
        if not isinstance(point, dict):
            raise ValueError(f"{at}: expected a dict, got {point!r:.200}")
        cls = point.get("class")
        if cls in DROPPED_CLASSES:
            continue
        if cls not in CLASS_TO_TYPE:
            raise ValueError(f"{at}: unknown key-point class {cls!r}; known: {sorted(CLASS_TO_TYPE) + list(DROPPED_CLASSES)}")
        if not (_number(point.get("x")) and _number(point.get("y"))):
            raise ValueError(f"{at}: x and y must be finite numbers, got {point!r:.200}")
        tool = point.get("id")
        if tool is not None and tool not in TOOL_IDS:
            raise ValueError(f"{at}: unknown tool id {tool!r}; known: {list(TOOL_IDS)}")
        kind, xy = CLASS_TO_TYPE[cls], np.array([point["x"], point["y"]], np.float64)
        number = TOOL_IDS.index(tool) + 1 if tool is not None else 0
        if number and kind not in tools.setdefault(number, {}):
            tools[number][kind] = xy
        else:
            strays.append((at, cls, kind, xy))
    for at, cls, kind, xy in strays:
        if any(kind in p and np.hypot(*(p[kind] - xy)) <= DOUBLE_CLICK_PX for p in tools.values()):
            continue  # the same point clicked twice
        free = [t for t, p in tools.items() if kind not in p]
        if not free:
            raise ValueError(
                f"{at}: {cls} at ({xy[0]:g}, {xy[1]:g}) has no tool id (or repeats its tool's {cls}) and no tool of the "
                f"frame lacks a {cls}; give it an \"id\" (one of {list(TOOL_IDS)})"
            )
        nearest = min(free, key=lambda t: (np.mean([np.hypot(*(q - xy)) for q in tools[t].values()]), t))
        tools[nearest][kind] = xy
    keypoints = np.zeros((SLOTS, len(KEYPOINT_NAMES), 2), np.float32)
    visible = np.zeros((SLOTS, len(KEYPOINT_NAMES)), bool)
    instrument_type = np.zeros(SLOTS, np.int32)
    scale = np.array([size[1] / SOURCE_SIZE[1], size[0] / SOURCE_SIZE[0]])
    for slot, tool in enumerate(sorted(tools)):  # every tool in ``tools`` has a point
        instrument_type[slot] = tool
        for kind, xy in tools[tool].items():
            keypoints[slot, kind] = (xy + 0.5) * scale - 0.5
            visible[slot, kind] = True
    return keypoints, visible, instrument_type


Labelled = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # frame_index → key points of a frame


def plan(root: str) -> dict[str, list[tuple[Video, Labelled]]]:
    """Finds and checks every input before the (long) flow computation: each video's frame
    headers (one size per video), each key-point file and its frames' key points.

    Returns:
      split → [(video, frame_index → (keypoints, keypoints_visible, instrument_type) of
      its annotated frames)] in video order.

    Raises:
      As ``find_inputs``, ``read_labels`` and ``frame_keypoints``; ValueError for an entry
      naming a frame missing from its video's folder, a key-point file without its video
      folder, or frames of one video of different sizes (files named).
    """
    videos, label_files = find_inputs(root)
    for (split, number), path in label_files.items():
        if (split, number) not in videos:
            where = next(f for f, s in SPLIT_FOLDERS.items() if s == split)
            raise ValueError(f"key-point file {path!r} needs the frames of {where}/.../Dataset{number}/Raw, which were not found under {os.path.abspath(root)!r}")
    out: dict[str, list[tuple[Video, Labelled]]] = {"train": [], "test": []}
    for key, video in videos.items():
        size = common.image_size(video.frames[0][1])
        for _, path in video.frames:
            if (other := common.image_size(path)) != size:
                raise ValueError(f"frame {path!r} is {other[::-1]} (W, H) but {video.frames[0][1]!r} of the same video is {size[::-1]}")
        labelled: Labelled = {}
        if key in label_files:
            index = {os.path.basename(p): n for n, p in video.frames}
            for name, annotations in read_labels(label_files[key], video.number).items():
                if name not in index:
                    raise ValueError(f"key-point file {label_files[key]!r} has an entry for frame {name!r}, which is not in {video.folder!r}")
                if annotations:
                    labelled[index[name]] = frame_keypoints(annotations, size, f"{label_files[key]!r}, frame {name!r}")
        out[video.split].append((video, labelled))
    return out


@dataclasses.dataclass(eq=False)
class Endovis15KeypointsConfig(common.FlowConfig):
    """How flow is computed (``common.FlowConfig``)."""


class Endovis15Keypoints(common.FrameSequenceBuilder):
    """EndoVis 2015 tracking frames with Du et al.'s key points and DIS optical flow."""

    name = "endovis15_keypoints"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [Endovis15KeypointsConfig(name="default", description="DIS medium flow, stored to 1/16 px")]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        extra = {
            "keypoints": tfds.features.Tensor(shape=(SLOTS, len(KEYPOINT_NAMES), 2), dtype=np.float32),
            "keypoints_visible": tfds.features.Tensor(shape=(SLOTS, len(KEYPOINT_NAMES)), dtype=np.bool_),
            "instrument_type": tfds.features.Tensor(shape=(SLOTS,), dtype=np.int32),
        }
        return self._info_from(
            common.features(tuple(TASK_CLASSES), extra),
            description=__doc__,
            citation="Du et al., Articulated multi-instrument 2-D pose estimation using fully convolutional "
            "networks, IEEE Transactions on Medical Imaging 37(5), 2018.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        splits = plan(common.manual_dir(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS))
        return {split: self._generate_examples(videos) for split, videos in splits.items()}

    def _generate_examples(self, videos: list[tuple[Video, Labelled]]):
        """Yields (key, example) for every frame of ``videos``, flow within each video."""
        cfg = self.builder_config
        total, rank = sum(len(v.frames) for v, _ in videos), 0
        empty = (np.zeros((SLOTS, len(KEYPOINT_NAMES), 2), np.float32), np.zeros((SLOTS, len(KEYPOINT_NAMES)), bool), np.zeros(SLOTS, np.int32))
        for video, labelled in videos:
            loaded = ((n, common.read_rgb(p)) for n, p in video.frames)
            for n, image, flow, valid in common.with_flow(
                loaded, method=cfg.flow_method, preset=cfg.flow_preset, steps_per_pixel=cfg.flow_steps_per_pixel,
                desc=f"flow {video.name}", total=len(video.frames),
            ):
                keypoints, visible, instrument_type = labelled.get(n, empty)
                yield common.example_key(rank, total), common.example(
                    image, {}, has_label=n in labelled, flow=flow, flow_valid=valid,
                    video_id=video.video_id, video_name=video.name, frame_index=n,
                    keypoints=keypoints, keypoints_visible=visible, instrument_type=instrument_type,
                )
                rank += 1
