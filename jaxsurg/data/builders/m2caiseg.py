"""TFDS builder ``m2caiseg``: m2caiSeg (Maqbool et al., 2020, arXiv:2008.10134), from a
manual dir.

m2caiSeg annotates 307 images of M2CAI16 cholecystectomy videos (245 train, 62 test, from
2 videos; 596×334 to 774×434) with 19 colour-coded labels. Laparoflow-SSL trains its
segmentation heads on it and tests on CholecSeg8k (``cholecseg8k``).

Input: the official layout ``train/images/N.jpg`` with ``train/groundtruth/N_gt.png``
(likewise ``test/``), at any depth under the manual dir (the Kaggle archive's
``m2caiSeg dataset/`` folder works as it is). ``trainval/`` is not read (the paper's
splits are train and test). Image names must be a number (any image extension); a
label without its image, or two images with one number, is refused; hidden files (``.*``)
are not read.

Label colours (RGB → full index, class), from torch-em's m2caiSeg loader
(constantinpape/torch-em, ``torch_em/data/datasets/medical/m2caiseg.py``, ``LABEL_MAPS``):
(0,0,0) 0 out of frame; (0,85,170) 1 grasper; (0,85,255) 2 bipolar; (0,170,255) 3 hook;
(0,255,85) 4 scissors; (0,255,170) 5 clipper; (85,0,170) 6 irrigator; (85,0,255) 7
specimen bag; (170,85,85) 8 trocars; (170,170,170) 9 clip; (85,170,0) 10 liver;
(85,170,255) 11 gallbladder; (85,255,0) 12 fat; (85,255,170) 13 upper wall; (170,0,255)
14 artery; (255,0,255) 15 intestine; (255,255,0) 16 bile; (255,0,0) 17 blood;
(170,0,85) unknown → 255 (ignore) in every task. The dataset authors' own class file
(salmanmaq/segmentationNetworks, ``datasets/miccaiSegClasses.json``) gives hook as
(0,170,85); no other class uses that colour, so it is read as hook too.

Decisions:

- Off-table colours. The authors note that manual annotation changes pixel values near
  object boundaries (their ``datasets/Label Refinement.ipynb`` snaps every pixel to the
  nearest class colour), so released masks may hold a few such pixels. They become 255
  (ignore) in every task, never a guessed class; a mask with more than
  ``max_off_table_fraction`` (default 2 %) of them is refused, the message naming the
  file and its most frequent off-table colours (``max_off_table_fraction=0`` refuses any).
  The build prints how many pixels were set to ignore.
- Label size ≠ image size (a few pairs): the decoded class map is resized to the image
  with nearest neighbour, and the build prints every such file; a label whose aspect
  ratio differs from its image's by more than 5 % is refused (not the same picture).
- An image without a label is stored unlabelled (``has_label`` False, masks all 255).
- Video and flow: file names do not tell which M2CAI16 video or frame an image comes
  from, and consecutive numbers are not consecutive frames, so each split is one
  "video" (``video_id`` 0, ``video_name`` ``"train"`` / ``"test"``, ``frame_index`` N, in
  numeric order) and NO flow is stored: every frame has zero flow and no valid pixel
  (``common.no_flow``); a flow between unrelated images would be meaningless.

Output: splits ``train`` and ``test``; the common schema (``jaxsurg.data.builders.common``)
with three label spaces in every example (255 = ignore everywhere):

- ``mask_full``: the 18 classes above (``FULL_CLASSES``, index = the colour table's id);
- ``mask_laparoflow4``: Laparoflow-SSL's task, in cholecseg8k's ``LAPAROFLOW4_CLASSES``
  order: 0 background, 1 fat, 2 instrument, 3 gallbladder. Instrument = grasper, bipolar,
  hook, scissors, clipper, irrigator. Specimen bag, trocars and clip are background: the
  paper "aggregate[s] all instruments into one class" and trains on the intersection of
  the m2caiSeg and CholecSeg8k label sets, and CholecSeg8k (the test domain) labels only
  hand-held tools (grasper, L-hook) as instruments, none of those three objects; calling
  them instruments here would teach what the test labels never contain. (The m2caiSeg
  authors' class file puts all nine under an "instrument" super-category.)
- ``mask_binary``: 1 = the same six instrument classes, 0 = everything else.

Licence: see the m2caiSeg Kaggle page (https://www.kaggle.com/datasets/salmanmaq/m2caiseg).
"""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxsurg import progress
from jaxsurg.data.builders import common, integrity

IGNORE = common.IGNORE
# RGB → full-task index (IGNORE for "unknown"), torch-em's LABEL_MAPS order.
COLOURS: dict[tuple[int, int, int], int] = {
    (0, 0, 0): 0, (0, 85, 170): 1, (0, 85, 255): 2, (0, 170, 255): 3, (0, 255, 85): 4,
    (0, 255, 170): 5, (85, 0, 170): 6, (85, 0, 255): 7, (170, 85, 85): 8, (170, 170, 170): 9,
    (85, 170, 0): 10, (85, 170, 255): 11, (85, 255, 0): 12, (85, 255, 170): 13, (170, 0, 255): 14,
    (255, 0, 255): 15, (255, 255, 0): 16, (255, 0, 0): 17,
    (170, 0, 85): IGNORE,  # unknown
    (0, 170, 85): 3,  # hook in the dataset authors' class file (module docstring)
}
FULL_CLASSES = (
    "out_of_frame", "grasper", "bipolar", "hook", "scissors", "clipper", "irrigator", "specimen_bag",
    "trocars", "clip", "liver", "gallbladder", "fat", "upper_wall", "artery", "intestine", "bile", "blood",
)
INSTRUMENT_IDS = (1, 2, 3, 4, 5, 6)  # grasper, bipolar, hook, scissors, clipper, irrigator
FAT_ID, GALLBLADDER_ID = 12, 11
LAPAROFLOW4_CLASSES = ("background", "fat", "instrument", "gallbladder")  # = cholecseg8k's
BINARY_CLASSES = ("background", "instrument")
TASK_CLASSES = {"full": FULL_CLASSES, "laparoflow4": LAPAROFLOW4_CLASSES, "binary": BINARY_CLASSES}
SPLITS = ("train", "test")
MAX_ASPECT_DIFFERENCE = 0.05  # relative; beyond it a label of another size is refused


def _lut(mapping: dict[int, int]) -> np.ndarray:
    """256-entry uint8 table: full index → task index (0 unless in ``mapping``); 255 → 255."""
    table = np.zeros(256, np.uint8)
    for index, value in mapping.items():
        table[index] = value
    table[len(FULL_CLASSES):] = IGNORE
    return table


LUTS = {
    "full": _lut({i: i for i in range(len(FULL_CLASSES))}),
    "laparoflow4": _lut({FAT_ID: 1, GALLBLADDER_ID: 3, **{i: 2 for i in INSTRUMENT_IDS}}),
    "binary": _lut({i: 1 for i in INSTRUMENT_IDS}),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put m2caiSeg in the manual dir (the folder given as manual_dir / --config.data_dir), in
its official layout, at any depth (the Kaggle archive's "m2caiSeg dataset" folder as is):

  <manual_dir>/train/images/0.jpg
  <manual_dir>/train/groundtruth/0_gt.png
  ...
  <manual_dir>/test/images/0.jpg
  <manual_dir>/test/groundtruth/0_gt.png

m2caiSeg: https://www.kaggle.com/datasets/salmanmaq/m2caiseg (Maqbool et al., 2020).
"""

_IMAGE_RE = re.compile(r"^(\d+)(\.[^.]+)$")
_LABEL_RE = re.compile(r"^(\d+)_gt\.png$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One image: its split, file, label file (None = unlabelled) and number N."""

    split: str
    path: str
    label_path: str | None
    frame_index: int


@dataclasses.dataclass(eq=False)
class M2caisegConfig(tfds.core.BuilderConfig):
    """Attributes:
      max_off_table_fraction: most pixels of one mask, as a fraction, whose colour is not
        in the table (they become 255); more is refused. 0 refuses any.
    """

    max_off_table_fraction: float = 0.02


def _missing(root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"{problem} (searched {os.path.abspath(root)!r}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def _split_dirs(root: str) -> dict[str, str]:
    """split → the one folder named ``train`` / ``test`` holding ``images/`` under ``root``."""
    found: dict[str, list[str]] = {s: [] for s in SPLITS}
    for folder, dirs, _ in os.walk(root, followlinks=True):
        dirs.sort()
        name = os.path.basename(folder)
        if name in found and "images" in dirs:
            found[name].append(folder)
            dirs[:] = []  # nothing below a split folder is another split
    for split, paths in found.items():
        if not paths:
            raise _missing(root, f"no m2caiSeg {split}/images folder found in the manual dir")
        if len(paths) > 1:
            raise ValueError(f"the manual dir holds several m2caiSeg {split} folders: {paths}; keep one copy")
    return {split: paths[0] for split, paths in found.items()}


def _numbered(folder: str, pattern: re.Pattern, what: str, keep=lambda name: True) -> dict[int, str]:
    """N → path for the files of ``folder`` that ``keep`` selects, each named by ``pattern``.

    Raises:
      ValueError: a selected file not named as ``pattern``, or two files with one N.
    """
    out: dict[int, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path) or not keep(name):  # hidden files: not data
            continue
        match = pattern.match(name)
        if not match:
            raise ValueError(f"{path!r} is not named as an m2caiSeg {what} ({'N_gt.png' if what == 'label' else 'N.jpg'})")
        n = int(match.group(1))
        if n in out:
            raise ValueError(f"{out[n]!r} and {path!r} are both {what} {n}")
        out[n] = path
    return out


def find_frames(root: str) -> dict[str, list[Frame]]:
    """The images of each split under ``root``, in numeric order, with their labels.

    Raises:
      FileNotFoundError: ``root`` missing, no ``train``/``test`` folder with ``images/``,
        a split without ``groundtruth/`` or without images; the message shows the layout.
      ValueError: a misnamed image or label, two files with one number, several copies of
        a split, or a label without its image (the message names the files).
    """
    if not os.path.isdir(root):
        raise _missing(root, "the m2caiSeg manual dir does not exist")
    frames = {}
    for split, folder in _split_dirs(root).items():
        label_dir = os.path.join(folder, "groundtruth")
        if not os.path.isdir(label_dir):
            raise _missing(root, f"{os.path.join(folder, 'groundtruth')!r} is missing")
        images = _numbered(
            os.path.join(folder, "images"), _IMAGE_RE, "image",
            keep=lambda name: os.path.splitext(name)[1].lower() in common.IMAGE_EXTENSIONS,
        )
        labels = _numbered(label_dir, _LABEL_RE, "label", keep=lambda name: name.lower().endswith(".png"))
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise ValueError(f"label {labels[orphans[0]]!r} has no image {orphans[0]}.<ext> in {os.path.join(folder, 'images')!r}"
                             + (f" ({len(orphans)} such labels)" if len(orphans) > 1 else ""))
        if not images:
            raise _missing(root, f"{os.path.join(folder, 'images')!r} holds no image")
        frames[split] = [Frame(split, images[n], labels.get(n), n) for n in sorted(images)]
    return frames


def source_fingerprint(root: str, cache_path: str | None = None) -> str:
    """Digest of the content of the images and labels under ``root``
    (``integrity.content_fingerprint``), naming a build.

    Raises:
      As ``find_frames``; OSError for a file that cannot be read.
    """
    paths = [p for split in find_frames(root).values() for f in split for p in (f.path, f.label_path) if p]
    return integrity.content_fingerprint(root, paths, cache_path)


_CODES = np.array([(r << 16) | (g << 8) | b for r, g, b in COLOURS], np.int64)
_VALUES = np.array(list(COLOURS.values()), np.uint8)
_ORDER = np.argsort(_CODES)
_SORTED_CODES, _SORTED_VALUES = _CODES[_ORDER], _VALUES[_ORDER]


def decode_colours(rgb: np.ndarray, path: str = "<array>", max_off_table_fraction: float = 0.0) -> tuple[np.ndarray, int]:
    """Full-task class map of a colour-coded m2caiSeg label.

    Args:
      rgb: uint8 (H, W, 3) RGB label image.
      path: its file, for error messages.
      max_off_table_fraction: off-table pixels allowed, as a fraction of the mask.

    Returns:
      (uint8 (H, W) class map: indices into ``FULL_CLASSES``, 255 for unknown and
      off-table colours; number of off-table pixels).

    Raises:
      ValueError: more off-table pixels than allowed (the message names the file and its
        five most frequent off-table colours with their pixel counts).
    """
    rgb = np.asarray(rgb)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    pos = np.clip(np.searchsorted(_SORTED_CODES, unique), 0, len(_SORTED_CODES) - 1)
    known = _SORTED_CODES[pos] == unique
    values = np.where(known, _SORTED_VALUES[pos], IGNORE).astype(np.uint8)
    off = int(counts[~known].sum())
    if off > max_off_table_fraction * codes.size:
        worst = np.argsort(-np.where(known, 0, counts))[: min(5, int((~known).sum()))]
        rgb_of = lambda code: (code >> 16, (code >> 8) & 255, code & 255)  # noqa: E731
        listed = ", ".join(f"{rgb_of(int(unique[i]))}: {int(counts[i])} px" for i in worst)
        raise ValueError(
            f"label {path!r} has {off} pixels ({off / codes.size:.2%}) whose colour is not an m2caiSeg class colour "
            f"(allowed: {max_off_table_fraction:.2%}); most frequent: {listed}. Known colours: {sorted(COLOURS)}"
        )
    return values[inverse].reshape(codes.shape), off


def read_label(path: str, size: tuple[int, int], max_off_table_fraction: float = 0.0) -> tuple[np.ndarray, dict]:
    """A label file as a full-task class map of the image's size.

    Args:
      path: an ``N_gt.png``. size: (H, W) of its image.
      max_off_table_fraction: as in ``decode_colours``.

    Returns:
      (uint8 (H, W) class map, {"off_table": pixels set to 255, "resized_from": (h, w) of
      the file if it was resized, else None}).

    Raises:
      ValueError: unreadable file, too many off-table pixels, or an aspect ratio more than
        5 % from the image's (the message names the file and both sizes).
    """
    full, off = decode_colours(common.read_rgb(path), path, max_off_table_fraction)
    h, w = full.shape
    height, width = size
    resized_from = None
    if (h, w) != (height, width):
        if abs((w / h) / (width / height) - 1) > MAX_ASPECT_DIFFERENCE:
            raise ValueError(f"label {path!r} is {w}×{h} (W×H) but its image is {width}×{height}: not the same picture's shape")
        full = cv2.resize(full, (width, height), interpolation=cv2.INTER_NEAREST)
        resized_from = (h, w)
    return full, {"off_table": off, "resized_from": resized_from}


def map_full(full: np.ndarray) -> dict[str, np.ndarray]:
    """Class maps of every task from a full-task map: task → uint8 (H, W)."""
    return {task: lut[full] for task, lut in LUTS.items()}


def validate(frames: dict[str, list[Frame]], max_off_table_fraction: float) -> dict:
    """Reads every image header and every label before the build writes anything.

    Returns:
      {"resized": [(label path, (h, w) of file, (H, W) of image)], "off_table": pixels,
      "off_table_masks": masks with any, "unlabelled": [image paths]}.

    Raises:
      ValueError: as ``common.image_size`` and ``read_label``.
    """
    report = {"resized": [], "off_table": 0, "off_table_masks": 0, "unlabelled": []}
    for split_frames in frames.values():
        for f in split_frames:
            size = common.image_size(f.path)
            if f.label_path is None:
                report["unlabelled"].append(f.path)
                continue
            _, info = read_label(f.label_path, size, max_off_table_fraction)
            if info["resized_from"]:
                report["resized"].append((f.label_path, info["resized_from"], size))
            report["off_table"] += info["off_table"]
            report["off_table_masks"] += info["off_table"] > 0
    return report


def describe(report: dict, root: str) -> list[str]:
    """The build's lines about resized labels, off-table pixels and unlabelled images."""
    lines = []
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    if report["resized"]:
        items = ", ".join(f"{rel(p)} {hw[1]}×{hw[0]}→{s[1]}×{s[0]}" for p, hw, s in report["resized"])
        lines.append(f"m2caiseg: {len(report['resized'])} labels differ in size from their images and were resized to them "
                     f"(nearest neighbour): {items}")
    if report["off_table"]:
        lines.append(f"m2caiseg: {report['off_table']} pixels in {report['off_table_masks']} labels have no class colour "
                     "(boundary pixels of the annotation) and are set to ignore (255)")
    if report["unlabelled"]:
        lines.append(f"m2caiseg: {len(report['unlabelled'])} images have no N_gt.png and are stored unlabelled: "
                     + ", ".join(rel(p) for p in report["unlabelled"][:10]) + (" ..." if len(report["unlabelled"]) > 10 else ""))
    return lines


class M2caiseg(common.FrameSequenceBuilder):
    """m2caiSeg images with 18-, 4- and 2-class masks (no optical flow)."""

    name = "m2caiseg"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [M2caisegConfig(name="default", description="off-table label colours up to 2 % of a mask → ignore")]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_from(
            common.features(tuple(TASK_CLASSES)),
            description=__doc__,
            citation="Maqbool et al., m2caiSeg: semantic segmentation of laparoscopic images using convolutional "
            "neural networks, arXiv:2008.10134, 2020.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_dir(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        frames = find_frames(root)
        fraction = self.builder_config.max_off_table_fraction
        for line in describe(validate(frames, fraction), root):
            progress.say(line)
        return {split: self._generate_examples(frames[split], fraction) for split in SPLITS}

    def _generate_examples(self, frames: list[Frame], max_off_table_fraction: float):
        """Yields (key, example) for one split's frames, in numeric order, without flow."""
        for rank, f in enumerate(frames):
            image = common.read_rgb(f.path)
            h, w = image.shape[:2]
            if f.label_path:
                masks = map_full(read_label(f.label_path, (h, w), max_off_table_fraction)[0])
            else:
                masks = {task: common.blank_mask(h, w) for task in TASK_CLASSES}
            yield common.example_key(rank, len(frames)), common.example(
                image, masks, has_label=f.label_path is not None, flow=common.no_flow(h, w)[0],
                flow_valid=common.no_flow(h, w)[1], video_id=0, video_name=f.split, frame_index=f.frame_index,
            )
