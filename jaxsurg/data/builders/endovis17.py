"""TFDS builder ``endovis17``: EndoVis 2017 Robotic Instrument Segmentation (Allan et al.,
arXiv:1902.06426), from a manual dir; every folder named ``instrument_dataset_K`` (any depth) is a video.

Training layout (videos 1-8, 225 frames each, 1920×1080, 2 Hz): ``left_frames/frameNNN.png`` and
``ground_truth/<Instrument>/frameNNN.png``, one folder per instrument. Every sub-folder of
``ground_truth`` is an instrument: mostly ``<Name>_labels`` (``Maryland_Bipolar_Forceps_labels``,
``Large_Needle_Driver_Left_labels``, ``Other_labels``), but the release's video 6 has ``Prograsp_Forceps``
and video 7 ``Left_Bipolar_Forceps``, ``Right_Vessel_Sealer`` (folder lists in public loaders).
Test layout (videos 1-8: frames 225-299 of the same surgeries; 9, 10: 300 frames): ``left_frames/``,
with the separately released ``{Binary,Parts,Type}Segmentation/frameNNN.png`` in the frames' video
folder (or its ``ground_truth/``) or in a label-only ``instrument_dataset_K`` elsewhere (the label
archive's ``instrument_2017_test/``). A video with instrument folders is training; one with
``*Segmentation`` folders or a label-only twin is test; one with neither is test if a folder between
the manual dir and it is named with "test" (``testing``, ``instrument_2017_test``), else training
(unlabelled). Splits: ``train`` (required; only test data is an error) and ``test`` (only when test
videos exist), each in (video_id, frame_index) order: ``video_id`` K in both (test video K ≤ 8
continues training video K), ``video_name`` ``instrument_dataset_K`` / ``test/instrument_dataset_K``,
``frame_index`` NNN. Training video ids must be 1-8 (``FOLDS``: fold → held-out videos, TernausNet's).

Crop: the standard ``img[28:1052, 320:1600]`` → 1024×1280 (challenge page, TernausNet, MF-TAPNet,
ISINet) of frames AND masks; config ``crop_top, crop_left, crop_height, crop_width``, ``crop=False``
for none. A frame smaller than the box is refused.

Training codes, the release's ``parts_mapping.json`` (as quoted by public loaders): 0 background,
10 shaft, 20 wrist, 30 claspers, 40 probe; any other value is refused naming the file (some
loaders just threshold > 0); a 3-channel file must have equal channels. Tasks, built as TernausNet's
and MF-TAPNet's ``prepare_data.py`` do, over the instrument folders in SORTED order (natural sort;
for the released names plain alphabetical, as ISINet sorts; TernausNet's unsorted ``glob`` made the
winner of an overlap file-system dependent):

- ``mask_binary`` (2): 1 where any non-"Other" folder is non-zero (an order-free union);
- ``mask_parts`` (4): background, shaft, wrist, claspers from codes 10/20/30 of the non-"Other"
  folders, a later folder overwriting; probe (40) sets no part;
- ``mask_type`` (8): background + ``TYPE_CLASSES`` 1-7, the type by substring of the folder name
  (case-insensitive; none or several is an error); every non-zero pixel gets its folder's type, a
  later folder overwriting.

"Other" (folders named with "Other": laparoscopic tools, ultrasound probe) is background for binary
and parts (not 255) and class 7 for type. A frame without any label file is unlabelled
(``has_label`` False, masks 255); one labelled in some folders of its video but missing from
another is refused (the release has a file per instrument per frame).

Test codes (no official mapping found; public preparation code, verify on the files):
``BinarySegmentation`` 0/255 (code writing training labels "in test format" uses ×255);
``PartsSegmentation`` 30 shaft, 100 wrist, 255 claspers (mmsegmentation
``projects/medical/2d_image/endoscopy/EndoVis2017RIS/tools/process.py``, a ``cropped_test`` script)
and 200 probe (a project printing the values of ``instrument_dataset_1/PartsSegmentation/frame225.png``),
stored as background like the training probe; ``TypeSegmentation`` 0-7, the type index itself.
Other codes are refused naming the file; a frame needs all three files or none.
"""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxsurg.data.builders import common, integrity

BINARY_CLASSES = ("background", "instrument")
PARTS_CLASSES = ("background", "shaft", "wrist", "claspers")
TYPE_CLASSES = ("background", "Bipolar Forceps", "Prograsp Forceps", "Large Needle Driver", "Vessel Sealer",
                "Grasping Retractor", "Monopolar Curved Scissors", "Other")
TASK_CLASSES = {"binary": BINARY_CLASSES, "parts": PARTS_CLASSES, "type": TYPE_CLASSES}
OTHER_TYPE = TYPE_CLASSES.index("Other")
FOLDS = {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}  # fold → held-out training videos
TRAINING_VIDEOS = tuple(sorted(v for held_out in FOLDS.values() for v in held_out))

TRAIN_CODES = {0: "background", 10: "shaft", 20: "wrist", 30: "claspers", 40: "probe"}
TRAIN_PART = {10: 1, 20: 2, 30: 3}  # training code → parts class
TEST_FOLDERS = {"binary": "BinarySegmentation", "parts": "PartsSegmentation", "type": "TypeSegmentation"}
TEST_CODES = {  # task → {file code: class}
    "binary": {0: 0, 255: 1},
    "parts": {0: 0, 30: 1, 100: 2, 255: 3, 200: 0},
    "type": {i: i for i in range(len(TYPE_CLASSES))},
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download EndoVis 2017 Robotic Instrument Segmentation from
https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/ (registration
needed) and unpack the archives into the manual dir (the folder given as manual_dir /
--config.data_dir), at any depth, e.g.:

  <manual_dir>/training/instrument_dataset_1/left_frames/frame000.png
  <manual_dir>/training/instrument_dataset_1/ground_truth/Left_Prograsp_Forceps_labels/frame000.png
  ...                                    (videos 1-8, required)
  <manual_dir>/testing/instrument_dataset_1/left_frames/frame225.png
  <manual_dir>/instrument_2017_test/instrument_dataset_1/BinarySegmentation/frame225.png
  ...   (optional test set: videos 1-10, labels in Binary/Parts/TypeSegmentation)

right_frames/ and the mapping .json files may stay. A video folder without ground truth is
read as test data when a folder above it has "test" in its name, else as training data.
"""

_VIDEO_RE = re.compile(r"^instrument_dataset_(\d+)$")
_FRAME_RE = re.compile(r"^frame(\d+)\.png$")
_TEST_HINT_RE = re.compile(r"(^|[^a-z])test")  # "test", "testing", "instrument_2017_test"; not "latest"


@dataclasses.dataclass(frozen=True)
class Frame:
    """One left frame found in the manual dir.

    Attributes:
      path: the frame PNG. split: ``"train"`` or ``"test"``.
      video_id, video_name, frame_index: see the module docstring.
      labels: training: ``(instrument folder, label file)`` pairs in overlap order; test:
        ``(task, label file)`` pairs; empty for an unlabelled frame.
    """

    path: str
    split: str
    video_id: int
    video_name: str
    frame_index: int
    labels: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(eq=False)
class Endovis17Config(common.FlowConfig):
    """Crop and flow (the flow fields of ``common.FlowConfig``).

    Attributes:
      crop: whether frames and masks are cropped to the box below (rows
        ``crop_top:crop_top+crop_height``, columns ``crop_left:crop_left+crop_width``).
    """

    crop: bool = True
    crop_top: int = 28
    crop_left: int = 320
    crop_height: int = 1024
    crop_width: int = 1280


def instrument_type(folder_name: str) -> int:
    """Type class (1-7, ``TYPE_CLASSES``) of a training instrument folder, by substring.

    Raises:
      ValueError: no known type, or more than one, in the name (message lists the known types).
    """
    key = folder_name.lower().replace(" ", "_").replace("-", "_")
    found = [i for i, name in enumerate(TYPE_CLASSES) if i and name.lower().replace(" ", "_") in key]
    if len(found) != 1:
        known = [name.replace(" ", "_") for name in TYPE_CLASSES[1:]]
        problem = "names no known instrument type" if not found else f"names several types {[TYPE_CLASSES[i] for i in found]}"
        raise ValueError(f"instrument folder {folder_name!r} {problem}; its name must contain exactly one of {known}")
    return found[0]


def _frame_files(folder: str) -> dict[int, str]:
    """frame number → path of the ``frameNNN.png`` files in ``folder``.

    Raises:
      ValueError: two files with the same number (``frame7.png``, ``frame007.png``).
    """
    out: dict[int, str] = {}
    for name in sorted(os.listdir(folder)):
        match = _FRAME_RE.match(name)
        if match:
            index, path = int(match.group(1)), os.path.join(folder, name)
            if index in out:
                raise ValueError(f"{out[index]!r} and {path!r} are both frame {index}")
            out[index] = path
    return out


def _scan(root: str) -> list[dict]:
    """Every ``instrument_dataset_K`` folder under ``root``: its K, path, left_frames (or
    None), training instrument folders and test label folders (task → folder)."""
    found = []
    for folder, dirs, _ in os.walk(root, followlinks=True):
        dirs.sort()
        match = _VIDEO_RE.match(os.path.basename(folder))
        if not match:
            continue
        dirs[:] = []
        gt = os.path.join(folder, "ground_truth")
        tests = {}
        for task, name in TEST_FOLDERS.items():
            for where in (os.path.join(folder, name), os.path.join(gt, name)):
                if os.path.isdir(where):
                    tests[task] = where
        names = sorted(os.listdir(gt), key=common.natural_sort_key) if os.path.isdir(gt) else []  # the overlap order
        instruments = [os.path.join(gt, d) for d in names if d not in TEST_FOLDERS.values() and os.path.isdir(os.path.join(gt, d))]
        if tests and len(tests) < len(TEST_FOLDERS):
            missing = [name for task, name in TEST_FOLDERS.items() if task not in tests]
            raise ValueError(f"{folder!r} holds test labels {sorted(os.path.basename(t) for t in tests.values())} but not {missing}; "
                             "the test ground truth has all three folders")
        if instruments and tests:
            raise ValueError(f"{folder!r} holds both training ground truth ({instruments[0]!r}) and test ground truth "
                             f"({next(iter(tests.values()))!r}); keep the training and test sets in separate folders")
        frames = os.path.join(folder, "left_frames")
        above = os.path.relpath(os.path.dirname(os.path.abspath(folder)), os.path.abspath(root))
        hint = any(_TEST_HINT_RE.search(part.lower()) for part in above.split(os.sep) if part not in (".", ".."))
        found.append(dict(id=int(match.group(1)), path=folder, frames=frames if os.path.isdir(frames) else None,
                          instruments=instruments, tests=tests, test_hint=hint))
    return found


def _one_per_video(videos: list[dict], what: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for v in videos:
        if v["id"] in out:
            raise ValueError(f"{out[v['id']]['path']!r} and {v['path']!r} are both {what} instrument_dataset_{v['id']}")
        out[v["id"]] = v
    return out


def _labelled(frames: dict[int, str], sources: list[tuple[str, str]], split: str, video_id: int, name: str) -> list[Frame]:
    """Frames of one video with their label files from ``sources`` ((key, folder) pairs).

    Raises:
      ValueError: a frame with label files in some sources but not in another (names the
        missing file).
    """
    listed = [(key, folder, set(os.listdir(folder))) for key, folder in sources]
    out = []
    for index, path in sorted(frames.items()):
        base = os.path.basename(path)
        have = [(key, os.path.join(folder, base)) for key, folder, names in listed if base in names]
        if have and len(have) < len(listed):
            missing = next(os.path.join(folder, base) for _, folder, names in listed if base not in names)
            raise ValueError(f"label file {missing!r} is missing, but {have[0][1]!r} labels the same frame {path!r}: "
                             "every label folder of a video needs a file for each labelled frame")
        out.append(Frame(path, split, video_id, name, index, tuple(have)))
    return out


def find_frames(root: str) -> dict[str, list[Frame]]:
    """The frames of each split (``"train"``; ``"test"`` if present) in (video, frame) order.

    Raises:
      FileNotFoundError: ``root`` is missing or holds no frame (the message gives the path
        and the expected layout).
      ValueError: only test data; a training video outside 1-8; a video twice in one split;
        training ground truth without frames; test labels without test frames; a frame
        missing from one label folder; an unknown instrument folder name (all name the path).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"the EndoVis 2017 manual dir {os.path.abspath(root)!r} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    scanned = _scan(root)
    label_only = _one_per_video([v for v in scanned if not v["frames"] and v["tests"]], "test labels of")
    for v in scanned:
        if not v["frames"] and v["instruments"]:
            raise ValueError(f"{v['path']!r} holds training ground truth but no left_frames/ folder")
        for folder in v["instruments"]:
            try:
                instrument_type(os.path.basename(folder))
            except ValueError as e:
                raise ValueError(f"{folder!r}: {e}") from None
    with_frames = [v for v in scanned if v["frames"]]
    is_test = [bool(v["tests"] or (not v["instruments"] and (v["id"] in label_only or v["test_hint"]))) for v in with_frames]
    train = _one_per_video([v for v, t in zip(with_frames, is_test) if not t], "training video")
    test = _one_per_video([v for v, t in zip(with_frames, is_test) if t], "test video")
    for k, v in label_only.items():
        if k not in test:
            raise ValueError(f"test labels {v['path']!r} have no test frames: no test-layout instrument_dataset_{k}/left_frames")
        if test[k]["tests"]:
            raise ValueError(f"{v['path']!r} and {test[k]['path']!r} both hold test labels of instrument_dataset_{k}")
        test[k] = dict(test[k], tests=v["tests"])
    out: dict[str, list[Frame]] = {"train": []}
    for k, v in sorted(train.items()):
        if k not in TRAINING_VIDEOS:
            raise ValueError(f"training-layout video {v['path']!r}: the training set has videos {list(TRAINING_VIDEOS)}; "
                             "put test videos under a folder named with 'test' or beside their *Segmentation labels")
        sources = [(os.path.basename(f), f) for f in v["instruments"]]
        out["train"] += _labelled(_frame_files(v["frames"]), sources, "train", k, f"instrument_dataset_{k}")
    if test:
        out["test"] = []
        for k, v in sorted(test.items()):
            out["test"] += _labelled(_frame_files(v["frames"]), sorted(v["tests"].items()), "test", k, f"test/instrument_dataset_{k}")
    if not out["train"]:
        what = "only test-layout videos" if test else "no frame (instrument_dataset_K/left_frames/frameNNN.png)"
        raise (ValueError if test else FileNotFoundError)(
            f"{what} found in the EndoVis 2017 manual dir {os.path.abspath(root)!r}; the training set is required.\n"
            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return out


def source_fingerprint(root: str, cache_path: str | None = None) -> str:
    """Digest of the content of the frames and label files under ``root`` that a build reads
    (``integrity.content_fingerprint``), naming the build.

    Raises:
      As ``find_frames``; OSError for a file that cannot be read.
    """
    paths = [p for frames in find_frames(root).values() for f in frames for p in (f.path, *(lp for _, lp in f.labels))]
    return integrity.content_fingerprint(root, paths, cache_path)


def read_codes(path: str, frame_size: tuple[int, int], known: dict[int, object] | set[int]) -> np.ndarray:
    """The codes of a label file: uint8 (H, W) (a 3- or 4-channel file: its equal colour channels).

    Args:
      path: a label PNG. frame_size: (H, W) of its frame. known: the allowed codes.

    Raises:
      ValueError: unreadable file, not 8-bit, colour channels that differ, a size other than
        the frame's, or codes not in ``known`` (the message names the file and the codes).
    """
    codes = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if codes is None:
        raise ValueError(f"cannot read label file {path!r}: unreadable or corrupt file")
    if codes.dtype != np.uint8:
        raise ValueError(f"label file {path!r} has {codes.dtype} pixels; EndoVis 2017 labels are 8-bit")
    if codes.ndim == 3:
        if (codes[..., 1:3] != codes[..., :1]).any():
            raise ValueError(f"label file {path!r} has colour channels that differ; EndoVis 2017 labels are grey codes")
        codes = codes[..., 0]
    if codes.shape != tuple(frame_size):
        raise ValueError(f"label file {path!r} is {codes.shape[1]}×{codes.shape[0]} (W×H) but its frame is {frame_size[1]}×{frame_size[0]}")
    unknown = sorted(set(np.flatnonzero(np.bincount(codes.ravel(), minlength=256)).tolist()) - set(known))
    if unknown:
        raise ValueError(f"label file {path!r} holds unknown codes {unknown}; known codes: {sorted(known)}")
    return codes


_TRAIN_PARTS_LUT = np.array([TRAIN_PART.get(code, 0) for code in range(256)], np.uint8)  # code → parts class
_TEST_LUTS = {task: np.array([m.get(code, 0) for code in range(256)], np.uint8) for task, m in TEST_CODES.items()}


def frame_masks(frame: Frame, frame_size: tuple[int, int], box: tuple[slice, slice] | None = None) -> dict[str, np.ndarray]:
    """Masks of every task (module docstring): task → uint8 (h, w), all 255 if unlabelled.

    Args:
      frame: a frame of ``find_frames``. frame_size: its (H, W). box: the crop (None: none).

    Raises:
      ValueError: as ``read_codes`` and ``instrument_type``.
    """
    box = box or (slice(None), slice(None))
    h, w = np.empty(frame_size, np.uint8)[box].shape
    if not frame.labels:
        return {task: np.full((h, w), common.IGNORE, np.uint8) for task in TASK_CLASSES}
    if frame.split == "test":
        return {task: _TEST_LUTS[task][read_codes(path, frame_size, TEST_CODES[task])[box]] for task, path in frame.labels}
    masks = {task: np.zeros((h, w), np.uint8) for task in TASK_CLASSES}
    for folder, path in frame.labels:
        codes = read_codes(path, frame_size, TRAIN_CODES)[box]
        kind = instrument_type(folder)
        masks["type"][codes > 0] = kind
        if kind != OTHER_TYPE:
            masks["binary"][codes > 0] = 1
            parts = _TRAIN_PARTS_LUT[codes]
            masks["parts"][parts > 0] = parts[parts > 0]
    return masks


def _frame_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file from its header.

    Raises:
      ValueError: not a readable image (names it).
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path!r}: unreadable or corrupt file ({e})") from None
    return height, width


def crop_box(cfg: Endovis17Config, frame_size: tuple[int, int], path: str) -> tuple[slice, slice] | None:
    """The crop of ``cfg`` as (rows, columns) slices, None if ``cfg.crop`` is False.

    Raises:
      ValueError: a frame smaller than the box, or a box with a negative corner or no area
        (names the frame ``path``).
    """
    if not cfg.crop:
        return None
    top, left, height, width = cfg.crop_top, cfg.crop_left, cfg.crop_height, cfg.crop_width
    if min(top, left) < 0 or min(height, width) <= 0 or top + height > frame_size[0] or left + width > frame_size[1]:
        raise ValueError(
            f"frame {path!r} is {frame_size[1]}×{frame_size[0]} (W×H), too small for the crop rows {top}:{top + height}, "
            f"columns {left}:{left + width} (EndoVis 2017 frames are 1920×1080); set crop=False or another crop box")
    return slice(top, top + height), slice(left, left + width)


def _videos(frames: list[Frame]) -> list[list[Frame]]:
    """Runs of consecutive frames of one video (frames in storage order)."""
    runs: list[list[Frame]] = []
    for f in frames:
        if runs and runs[-1][-1].video_id == f.video_id:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def validate(frames: list[Frame], cfg: Endovis17Config) -> None:
    """Checks every frame header and every label file before the (long) flow computation.

    Raises:
      ValueError: as ``_frame_size``, ``crop_box`` and ``frame_masks``; frames of one video
        with different sizes (both named).
    """
    for video in _videos(frames):
        first = _frame_size(video[0].path)
        crop_box(cfg, first, video[0].path)
        for f in video:
            size = _frame_size(f.path)
            if size != first:
                raise ValueError(f"frame {f.path!r} is {size[1]}×{size[0]} but {video[0].path!r} of the same video is {first[1]}×{first[0]}")
            frame_masks(f, size)


class Endovis17(common.FrameSequenceBuilder):
    """EndoVis 2017 frames with binary, parts and type masks and DIS optical flow."""

    name = "endovis17"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [Endovis17Config(name="default", description="standard 1024×1280 crop, DIS medium flow stored to 1/16 px")]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_from(
            common.features(tuple(TASK_CLASSES)),
            description=__doc__,
            citation="Allan et al., 2017 Robotic Instrument Segmentation Challenge, arXiv:1902.06426, 2019.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_dir(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        splits = find_frames(root)
        for frames in splits.values():
            validate(frames, self.builder_config)
        return {split: self._generate_examples(frames) for split, frames in splits.items()}

    def _generate_examples(self, frames: list[Frame]):
        """Yields (key, example) for ``frames`` (one split, sorted), flow within each video."""
        cfg = self.builder_config
        rank = 0
        for video in _videos(frames):
            size = _frame_size(video[0].path)
            box = crop_box(cfg, size, video[0].path) or (slice(None), slice(None))
            loaded = ((f, np.ascontiguousarray(common.read_rgb(f.path)[box])) for f in video)
            for f, image, flow, valid in common.with_flow(
                loaded, method=cfg.flow_method, preset=cfg.flow_preset, steps_per_pixel=cfg.flow_steps_per_pixel,
                desc=f"flow {video[0].video_name}", total=len(video),
            ):
                yield common.example_key(rank, len(frames)), common.example(
                    image, frame_masks(f, size, box), has_label=bool(f.labels), flow=flow, flow_valid=valid,
                    video_id=f.video_id, video_name=f.video_name, frame_index=f.frame_index,
                )
                rank += 1
