"""TFDS builder ``labelme``: a user's own video frames annotated with LabelMe polygons, from
a manual dir.

Input: image files (any of ``common.IMAGE_EXTENSIONS``), each optionally with a LabelMe JSON
file of the same stem beside it (``frame_000030.png`` + ``frame_000030.json``), at any
depth. Each folder holding images is one video: ``video_id`` = its position among the
folders in natural sort order of their relative paths, ``video_name`` = its relative path
(the manual dir's own name for frames directly in it). ``frame_index`` = the last run of
digits of the file stem; frames are in time order by it, which must agree with the natural
order of the names (``common.natural_sort_key``); a stem without digits, two frames of one
folder with one number, or names whose order disagrees with their numbers are refused.

LabelMe JSON (https://github.com/wkentaro/labelme): ``imageHeight``, ``imageWidth`` (checked
against the image when present), ``shapes``: a list of ``{"label", "points": [[x, y], ...],
"shape_type"}``; ``imagePath``, ``imageData``, ``flags``, ``group_id`` are not read. An empty
``shapes`` list = labelled, no instrument (all background). An image without a JSON is
stored unlabelled (``has_label`` False, mask all 255). A JSON without an image of its stem
is refused (any ``.json`` file counts). Hidden files and folders (``.*``) are not read.

Shapes: ``polygon`` (≥ 3 points; a missing ``shape_type`` counts as polygon) and
``rectangle`` (two opposite corners); any other type (circle, line, point, mask, ...) is
refused with the file and label named. A point (x, y) is in pixels, (0, 0) the CENTRE of
the top-left pixel (row y, column x), as OpenCV and PIL draw; coordinates are rounded to
the nearest integer (halves up) and each shape is filled with ``cv2.fillPoly``, boundary
pixels included (as LabelMe's own ``shape_to_mask``, which draws with an outline). Shapes
are drawn in file order, later ones on top. Points more than 1 px outside the image are
refused (a sign of a JSON for another image size). On the real sample below, 0.36 % of
the instrument pixels differ from LabelMe's own conversion (self-intersecting outlines).

Label map (builder config ``label_map``): space-separated ``label:class`` pairs, class one
of the task's classes (``background``, ``instrument``) or ``ignore`` (255). Labels are
compared case-insensitively with spaces and hyphens read as underscores ("Specimen Bag"
matches ``specimen_bag``). A shape whose label the map does not name is refused (never
silently background), the message naming the file, the label and how to extend the map.
Default: the Cholec80 tools grasper, bipolar, hook, scissors, clipper, irrigator →
instrument; specimen_bag → background (as in ``m2caiseg``'s binary task and CholecSeg8k,
whose instrument classes are hand-held tools only). Set it in a config string as
``"default:label_map=grasper:instrument hook:instrument"`` (the ``default:`` prefix is
needed since the value holds ``:``; no commas: they separate config fields).

Flow: DIS (preset medium) to the next frame of the same folder with its forward-backward
valid mask, like ``cholecseg8k``; the last frame of a folder has none. Frames of one folder
must then share one size. Annotated frames are often far apart in time (the real example
is one frame a second), where flow is of little use; it is stored anyway, so that densely
extracted folders get useful flow.

Output: one split, ``train`` (the pipeline splits it in time); the common schema
(``jaxsurg.data.builders.common``) with ``mask_binary`` (0 background, 1 instrument, 255
ignore / unlabelled).

Real example: ``shared/data/cholect50_vid03`` (10 frames of CholecT50 VID03, 854×480, one
a second, labels grasper / hook; from the CholecInstanceSeg sample files,
labdeeman7/cholec_instance_seg): 12.5 % instrument pixels on average.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxsurg.data.builders import common, integrity

IGNORE = common.IGNORE
BINARY_CLASSES = ("background", "instrument")
TASK_CLASSES = {"binary": BINARY_CLASSES}
SHAPE_TYPES = ("polygon", "rectangle")
DEFAULT_LABEL_MAP = (
    "grasper:instrument bipolar:instrument hook:instrument scissors:instrument clipper:instrument "
    "irrigator:instrument specimen_bag:background"
)
OUTSIDE_TOLERANCE = 1.0  # px a point may lie outside the image

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put your frames in the manual dir (the folder given as manual_dir / --config.data_dir),
one folder per video, each annotated frame with the LabelMe JSON file of the same name:

  <manual_dir>/case01/frame_000000.png
  <manual_dir>/case01/frame_000000.json
  <manual_dir>/case01/frame_000030.png   (no JSON: an unlabelled frame)
  ...

Frame numbers are the last digits of the file names. LabelMe: https://github.com/wkentaro/labelme
"""

_DIGITS = re.compile(r"(\d+)")


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame: image, LabelMe JSON (None = unlabelled), video, number, folder."""

    path: str
    json_path: str | None
    video_id: int
    video_name: str
    frame_index: int
    folder: str


@dataclasses.dataclass(eq=False)
class LabelmeConfig(common.FlowConfig):
    """The label map, and the flow fields of ``common.FlowConfig``.

    Attributes:
      label_map: space-separated ``label:class`` pairs (module docstring).
    """

    label_map: str = DEFAULT_LABEL_MAP


def normalize_label(label: str) -> str:
    """How labels are compared: lower case, runs of spaces, hyphens and underscores → ``_``."""
    return re.sub(r"[\s\-_]+", "_", label.strip().lower())


def parse_label_map(text: str) -> dict[str, int]:
    """``"grasper:instrument hook:ignore"`` → {normalized label: class index (255 = ignore)}.

    Raises:
      ValueError: a pair without ``:``, an empty label, a class not in ``BINARY_CLASSES``
        nor ``ignore``, a label given twice, or an empty map.
    """
    classes = {name: i for i, name in enumerate(BINARY_CLASSES)} | {"ignore": IGNORE}
    out: dict[str, int] = {}
    for pair in text.split():
        label, sep, cls = pair.rpartition(":")
        label = normalize_label(label)
        if not sep or not label or cls.lower() not in classes:
            raise ValueError(f"bad label_map entry {pair!r} in {text!r}: write label:class with class one of {sorted(classes)}")
        if label in out:
            raise ValueError(f"label_map {text!r} names {label!r} twice")
        out[label] = classes[cls.lower()]
    if not out:
        raise ValueError("label_map is empty: give space-separated label:class pairs, e.g. 'grasper:instrument hook:instrument'")
    return out


def _missing(root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"{problem} (searched {os.path.abspath(root)!r}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def _folder_frames(folder: str, names: list[str]) -> list[tuple[int, str, str | None]]:
    """(frame number, image path, JSON path or None) of one folder, in time order.

    Raises:
      ValueError: a JSON without an image, two images of one stem or one number, a stem
        without digits, or names whose natural order disagrees with their numbers.
    """
    images: dict[str, str] = {}
    for name in sorted(names, key=common.natural_sort_key):
        stem, ext = os.path.splitext(name)
        if ext.lower() in common.IMAGE_EXTENSIONS:
            if stem in images:
                raise ValueError(f"{os.path.join(folder, images[stem])!r} and {os.path.join(folder, name)!r} are one frame twice")
            images[stem] = name
    jsons = {os.path.splitext(n)[0]: n for n in names if n.lower().endswith(".json")}
    for stem, name in sorted(jsons.items()):
        if stem not in images:
            raise ValueError(f"LabelMe file {os.path.join(folder, name)!r} has no image {stem}.<png|jpg|...> beside it")
    out, seen = [], {}
    for stem, name in images.items():  # natural name order
        digits = _DIGITS.findall(stem)
        path = os.path.join(folder, name)
        if not digits:
            raise ValueError(f"frame {path!r} has no number in its name (the last digits of a name are the frame number)")
        n = int(digits[-1])
        if n in seen:
            raise ValueError(f"{seen[n]!r} and {path!r} are both frame {n} of one folder")
        if out and n < out[-1][0]:
            raise ValueError(f"frame {path!r} (number {n}) sorts after {out[-1][1]!r} (number {out[-1][0]}) by name: "
                             "name the frames of a folder alike, so that names and numbers agree on the order")
        seen[n] = path
        out.append((n, path, os.path.join(folder, jsons[stem]) if stem in jsons else None))
    return out


def find_frames(root: str) -> list[Frame]:
    """Every frame under ``root``, sorted by (video, frame number).

    Raises:
      FileNotFoundError: ``root`` is missing or holds no image (the message shows the layout).
      ValueError: as ``_folder_frames`` (the message names the files).
    """
    if not os.path.isdir(root):
        raise _missing(root, "the LabelMe manual dir does not exist")
    folders = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # hidden files and folders: not data
        files = [f for f in files if not f.startswith(".")]
        if any(os.path.splitext(f)[1].lower() in common.IMAGE_EXTENSIONS + (".json",) for f in files):
            folders.append((folder, files))
    root_abs = os.path.abspath(root)
    folders.sort(key=lambda item: common.natural_sort_key(os.path.relpath(os.path.abspath(item[0]), root_abs)))
    videos = [(folder, found) for folder, files in folders if (found := _folder_frames(folder, files))]
    if not videos:
        raise _missing(root, "no image found in the LabelMe manual dir")
    frames = []
    for video_id, (folder, found) in enumerate(videos):
        rel = os.path.relpath(os.path.abspath(folder), root_abs)
        name = os.path.basename(root_abs) if rel == "." else rel
        frames.extend(Frame(path, json_path, video_id, name, n, folder) for n, path, json_path in found)
    return frames


def source_fingerprint(root: str, cache_path: str | None = None) -> str:
    """Digest of the content of the images and JSON files under ``root``
    (``integrity.content_fingerprint``), naming a build.

    Raises:
      As ``find_frames``; OSError for a file that cannot be read.
    """
    paths = [p for f in find_frames(root) for p in (f.path, f.json_path) if p]
    return integrity.content_fingerprint(root, paths, cache_path)


def read_shapes(json_path: str, size: tuple[int, int], label_map: dict[str, int], map_text: str = "") -> list[tuple[int, np.ndarray]]:
    """The shapes of a LabelMe file as (class value, int32 (N, 2) polygon in (x, y) pixels).

    Args:
      json_path: the LabelMe JSON. size: (H, W) of its image.
      label_map: ``parse_label_map``'s result. map_text: the map as written (for messages).

    Raises:
      ValueError: unreadable JSON or unexpected structure, ``imageHeight``/``imageWidth``
        not the image's, an unsupported shape type, a polygon of < 3 points or rectangle
        without 2, points outside the image, or a label not in the map (the message names
        the file, the label and how to extend the map).
    """
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read LabelMe file {json_path!r}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise ValueError(f"LabelMe file {json_path!r} has no 'shapes' list")
    height, width = size
    declared = (data.get("imageHeight"), data.get("imageWidth"))
    if any(v is not None for v in declared) and declared != (height, width):
        raise ValueError(f"LabelMe file {json_path!r} is for a {declared[1]}×{declared[0]} (W×H) image but its image is {width}×{height}")
    out = []
    for i, shape in enumerate(data["shapes"]):
        where = f"LabelMe file {json_path!r}, shape {i}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise ValueError(f"{where}: not a shape with a text 'label'")
        label, kind = shape["label"], shape.get("shape_type") or "polygon"
        if kind not in SHAPE_TYPES:
            raise ValueError(f"{where} (label {label!r}) is a {kind!r}; only {list(SHAPE_TYPES)} are read: redraw it as a polygon")
        key = normalize_label(label)
        if key not in label_map:
            raise ValueError(
                f"{where} has label {label!r}, which the label map does not name (it names {sorted(label_map)}). "
                f"Add '{key}:instrument', '{key}:background' or '{key}:ignore' to the builder config's label_map "
                f"(e.g. --config.label_map='{(map_text + ' ') if map_text else ''}{key}:instrument')"
            )
        try:
            points = np.asarray(shape.get("points"), np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise ValueError(f"{where} (label {label!r}): 'points' is not a list of [x, y] pairs") from None
        need = "at least 3" if kind == "polygon" else "2"
        if (kind == "polygon" and len(points) < 3) or (kind == "rectangle" and len(points) != 2) or not np.isfinite(points).all():
            raise ValueError(f"{where} (label {label!r}): a {kind} needs {need} finite points, got {len(points)}")
        lo, hi = -0.5 - OUTSIDE_TOLERANCE, np.array([width, height]) - 0.5 + OUTSIDE_TOLERANCE
        outside = ((points < lo) | (points > hi)).any(1)
        if outside.any():
            raise ValueError(f"{where} (label {label!r}) has points outside the {width}×{height} image, e.g. {points[outside][0].tolist()}")
        points = np.floor(points + 0.5).astype(np.int32)
        if kind == "rectangle":
            (x0, y0), (x1, y1) = points.min(0), points.max(0)
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)
        out.append((label_map[key], points))
    return out


def rasterize(shapes: list[tuple[int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """uint8 (H, W) mask: 0 (background) where no shape is, each shape filled with its
    value in order (later on top), boundary pixels included."""
    mask = np.zeros((height, width), np.uint8)
    for value, points in shapes:
        cv2.fillPoly(mask, [points.reshape(-1, 1, 2)], int(value), lineType=cv2.LINE_8)
    return mask


def validate(frames: list[Frame], label_map: dict[str, int], map_text: str = "") -> None:
    """Reads every image header and every LabelMe file before the (long) flow computation.

    Raises:
      ValueError: as ``read_shapes`` and ``common.image_size``; frames of one folder of different
        sizes (both named).
    """
    first: dict[str, tuple[str, tuple[int, int]]] = {}
    for f in frames:
        size = common.image_size(f.path)
        ref_path, ref_size = first.setdefault(f.folder, (f.path, size))
        if size != ref_size:
            raise ValueError(f"frame {f.path!r} is {size[1]}×{size[0]} but {ref_path!r} of the same folder is "
                             f"{ref_size[1]}×{ref_size[0]}: frames of one folder (one video) must have one size")
        if f.json_path:
            read_shapes(f.json_path, size, label_map, map_text)


def _clips(frames: list[Frame]) -> list[list[Frame]]:
    """The frames of each folder, in storage order."""
    runs: list[list[Frame]] = []
    for f in frames:
        if runs and runs[-1][-1].folder == f.folder:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


class Labelme(common.FrameSequenceBuilder):
    """A user's frames with LabelMe polygons → binary instrument masks and DIS optical flow."""

    name = "labelme"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [LabelmeConfig(name="default", description="Cholec80 tools → instrument; DIS medium flow")]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._info_from(common.features(tuple(TASK_CLASSES)), description=__doc__)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_dir(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        label_map = parse_label_map(self.builder_config.label_map)
        frames = find_frames(root)
        validate(frames, label_map, self.builder_config.label_map)
        return {"train": self._generate_examples(frames, label_map)}

    def _generate_examples(self, frames: list[Frame], label_map: dict[str, int]):
        """Yields (key, example) for ``frames`` (sorted), flow within each folder."""
        cfg = self.builder_config
        rank = 0
        for clip in _clips(frames):
            loaded = ((f, common.read_rgb(f.path)) for f in clip)
            for f, image, flow, valid in common.with_flow(
                loaded, method=cfg.flow_method, preset=cfg.flow_preset, steps_per_pixel=cfg.flow_steps_per_pixel,
                desc=f"flow {clip[0].video_name}", total=len(clip),
            ):
                h, w = image.shape[:2]
                if f.json_path:
                    mask = rasterize(read_shapes(f.json_path, (h, w), label_map), h, w)
                else:
                    mask = common.blank_mask(h, w)
                yield common.example_key(rank, len(frames)), common.example(
                    image, {"binary": mask}, has_label=f.json_path is not None, flow=flow, flow_valid=valid,
                    video_id=f.video_id, video_name=f.video_name, frame_index=f.frame_index,
                )
                rank += 1
