"""What the jaxsurg TFDS builders share: the feature schema, PNG encoding, example keys,
optical flow along a frame sequence, config strings, and the builders' base class (built
without TensorFlow and quietly: ``tfds_glue``).

Feature schema of every builder (the grain pipeline reads exactly these keys):

- ``image``: uint8 (H, W, 3) RGB, stored as PNG;
- ``mask_<task>``: uint8 (H, W, 1) class index, 255 = ignore/unlabelled, PNG
  (labelled datasets only);
- ``has_label``: bool scalar (False → every mask is all 255);
- ``flow``: float32 (H, W, 2), ``(dx, dy)`` in pixels from this frame to the next frame
  of the same video (zeros for the last frame), zlib-compressed;
- ``flow_valid``: bool (H, W), forward–backward consistent flow (all False for the last
  frame), zlib-compressed;
- ``video_id``: int32; ``video_name``: text (reads back as ``bytes``);
  ``frame_index``: int32, the frame's number in its source video.

Records are stored in (video_id, frame_index) order: builders generate examples in that
order under integer keys increasing with it, and set ``disable_shuffling=True``.

Why integer keys spread over [0, 2**128) rather than strings like
``f"{video_id:05d}_{frame_index:08d}"``: with ``disable_shuffling`` TFDS replaces a
non-integer key by the example's position in generation order, and once more than 1 GB of
serialized examples has been generated it spills them into 1000 on-disk buckets chosen by
``key * 1000 // 2**128`` and sorted one bucket at a time in memory. Small integer keys
would all land in bucket 0 (the whole dataset in memory at once); spread keys keep every
bucket small. The spilling itself writes through ``tf.io.gfile`` — with no TensorFlow
installed it fails, so ``FrameSequenceBuilder.download_and_prepare`` lends TFDS a
plain-file stand-in for those calls (``tfds_glue.tf_free_spilling``).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import os
import queue
import re
import threading
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxsurg import progress
from jaxsurg.data import flow as flow_lib
from jaxsurg.data.builders.tfds_glue import quiet_tfds, tf_free_spilling

IGNORE = 255
# Computed flow is rounded to multiples of 1/FLOW_STEPS_PER_PIXEL px before storage:
# float32 DIS flow hardly compresses with zlib (to ~92 %, ~100 ms per 854×480 frame);
# rounded to 1/16 px (an error ≤ 1/32 px, well below DIS's own) it shrinks ~9× and
# compresses faster (~90 ms).
FLOW_STEPS_PER_PIXEL = 16
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

T = TypeVar("T")


# ----------------------------------------------------------------------------- schema


def features(tasks: Sequence[str], extra: dict[str, Any] | None = None) -> tfds.features.FeaturesDict:
    """The common feature schema (module docstring) with one ``mask_<task>`` per task.

    Args:
      tasks: label spaces, e.g. ``("binary", "parts", "type")``; empty for unlabelled data.
      extra: further features of one builder, added as they are.
    """
    spec: dict[str, Any] = {
        "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
        "has_label": np.bool_,
        "flow": tfds.features.Tensor(shape=(None, None, 2), dtype=np.float32, encoding="zlib"),
        "flow_valid": tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding="zlib"),
        "video_id": np.int32,
        "video_name": tfds.features.Text(),
        "frame_index": np.int32,
    }
    for task in tasks:
        spec[f"mask_{task}"] = tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png")
    spec.update(extra or {})
    return tfds.features.FeaturesDict(spec)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image: (H, W, 3) RGB, or (H, W) / (H, W, 1) single channel.

    TFDS is given PNG bytes, not arrays: encoding arrays would call TensorFlow.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(f"encode_png needs (H, W), (H, W, 1) or (H, W, 3), got {array.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def blank_mask(height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 1) all ``IGNORE`` (255): the mask of an unlabelled frame."""
    return np.full((height, width, 1), IGNORE, np.uint8)


def no_flow(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flow and valid mask of a video's last frame: float32 (H, W, 2) zeros, bool (H, W) False."""
    return np.zeros((height, width, 2), np.float32), np.zeros((height, width), bool)


def quantize_flow(flow: np.ndarray, steps_per_pixel: int = FLOW_STEPS_PER_PIXEL) -> np.ndarray:
    """float32 flow rounded to multiples of 1/steps_per_pixel px (0 = unchanged); this makes
    zlib compress it several times better."""
    flow = np.asarray(flow, np.float32)
    if not steps_per_pixel:
        return flow
    return (np.round(flow * steps_per_pixel) / steps_per_pixel).astype(np.float32)


def example_key(rank: int, total: int) -> int:
    """Integer key of the ``rank``-th of at most ``total`` examples in storage order.

    Keys increase with ``rank`` and spread over [0, 2**128) so that TFDS's on-disk buckets
    stay balanced (module docstring).

    Raises:
      ValueError: unless 0 <= rank < total.
    """
    if not 0 <= rank < total:
        raise ValueError(f"example rank {rank} outside [0, {total})")
    return rank * (2**128 // total)


def example(
    image: np.ndarray,
    masks: dict[str, np.ndarray],
    has_label: bool,
    flow: np.ndarray,
    flow_valid: np.ndarray,
    video_id: int,
    video_name: str,
    frame_index: int,
    **extra: Any,
) -> dict[str, Any]:
    """One example in the common schema.

    Args:
      image: uint8 (H, W, 3) RGB.
      masks: task → uint8 (H, W) or (H, W, 1) class map (255 = ignore).
      has_label: whether the masks hold ground truth.
      flow: float32 (H, W, 2) px to the next frame; flow_valid: bool (H, W).
      video_id, video_name, frame_index: where the frame comes from.
      extra: further features, stored as given.
    """
    out = {
        "image": encode_png(image),
        "has_label": bool(has_label),
        "flow": np.asarray(flow, np.float32),
        "flow_valid": np.asarray(flow_valid, bool),
        "video_id": np.int32(video_id),
        "video_name": video_name,
        "frame_index": np.int32(frame_index),
    }
    for task, mask in masks.items():
        out[f"mask_{task}"] = encode_png(np.asarray(mask, np.uint8))
    out.update(extra)
    return out


# ----------------------------------------------------------------------------- files


def natural_sort_key(text: str) -> tuple:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB (grey and RGBA files are converted).

    Raises:
      ValueError: if the file cannot be read or decoded (the message names it).
    """
    data = np.fromfile(os.fspath(path), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: unreadable or corrupt file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file, read from its header only (cheap).

    Raises:
      ValueError: if the file is not a readable image (the message names it).
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(os.fspath(path)) as image:
            width, height = image.size
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: unreadable or corrupt file ({e})") from None
    return height, width


def manual_dir(dl_manager: tfds.download.DownloadManager, instructions: str) -> str:
    """The manual dir of a build, checked to exist.

    Raises:
      FileNotFoundError: if it is missing or empty; the message gives its path and
        ``instructions``.
    """
    path = getattr(dl_manager, "_manual_dir", None)
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:
        raise FileNotFoundError(f"the manual dir {os.fspath(path)!r} does not exist or is empty.\n{instructions}") from None


def fingerprint(*parts: Any) -> str:
    """A 10-hex-digit digest of ``parts`` (their ``repr``), for config names."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- flow


def with_flow(
    frames: Iterable[tuple[T, np.ndarray]],
    *,
    method: str = "dis",
    preset: str = "medium",
    steps_per_pixel: int = FLOW_STEPS_PER_PIXEL,
    desc: str = "optical flow",
    total: int | None = None,
    ahead: int = 2,
) -> Iterator[tuple[T, np.ndarray, np.ndarray, np.ndarray]]:
    """Adds to each frame of ONE video its forward flow to the next frame.

    Reading the frames and computing the flow run in a worker thread, up to ``ahead``
    frames ahead of the consumer (OpenCV and zlib release the GIL, so flow overlaps with
    TFDS's encoding). Holds at most ``ahead`` + 2 frames. Shows a tqdm progress bar.

    Args:
      frames: ``(meta, image)`` pairs in time order, image uint8 (H, W, 3) RGB, one size.
      method, preset: as in ``jaxsurg.data.flow.optical_flow``.
      steps_per_pixel: flow quantization before storage (``quantize_flow``).
      desc, total: progress-bar label and length (frames).
      ahead: frames computed ahead (0 = no worker thread).

    Yields:
      ``(meta, image, flow, flow_valid)``: flow float32 (H, W, 2) px to the next frame
      and its forward–backward valid mask bool (H, W); zeros / all False for the last.

    Raises:
      ValueError: if two consecutive frames differ in size (the message shows ``meta``);
        whatever reading ``frames`` raises.
    """
    items = _flow_pairs(frames, method, preset, steps_per_pixel)
    with progress.bar(total=total, desc=desc, unit="frame", leave=False, mininterval=1.0) as bar:
        for item in (in_background(items, ahead) if ahead else items):
            yield item
            bar.update(1)


def _flow_pairs(
    frames: Iterable[tuple[T, np.ndarray]], method: str, preset: str, steps_per_pixel: int
) -> Iterator[tuple[T, np.ndarray, np.ndarray, np.ndarray]]:
    """``with_flow`` without the worker thread and the progress bar."""
    previous = None
    for meta, image in frames:
        if previous is not None:
            if previous[1].shape != image.shape:
                raise ValueError(
                    f"frame {meta} has size {image.shape[:2]} but the frame before it, {previous[0]}, "
                    f"has {previous[1].shape[:2]}: frames of one video must have one size"
                )
            fw, valid = flow_lib.flow_and_valid(previous[1], image, method, preset)
            yield previous[0], previous[1], quantize_flow(fw, steps_per_pixel), valid
        previous = (meta, image)
    if previous is not None:
        yield (previous[0], previous[1], *no_flow(*previous[1].shape[:2]))


def put_unless_stopped(channel: queue.Queue, entry: Any, stop: threading.Event) -> bool:
    """Puts ``entry`` on ``channel``, waiting while it is full; gives up when ``stop`` is set.
    Returns whether it was put."""
    while not stop.is_set():
        try:
            channel.put(entry, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def in_background(items: Iterator[T], ahead: int = 2) -> Iterator[T]:
    """Iterates ``items`` in a worker thread, at most ``ahead`` items ahead of the consumer.

    Exceptions of ``items`` are re-raised in the consumer; when the consumer stops early,
    the worker stops after its current item.
    """
    channel: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        return put_unless_stopped(channel, entry, stop)

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # pylint: disable=broad-except - handed to the consumer
            put((end, e))

    worker = threading.Thread(target=work, name="jaxsurg-flow", daemon=True)
    worker.start()
    try:
        while True:
            item, error = channel.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join()


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(eq=False)
class FlowConfig(tfds.core.BuilderConfig):
    """The config of a builder that stores forward optical flow between consecutive frames
    (``with_flow``); builders with more settings subclass it.

    Attributes:
      flow_method, flow_preset: see ``jaxsurg.data.flow.optical_flow``.
      flow_steps_per_pixel: flow is stored rounded to 1/this px (0 = exact float32).
    """

    flow_method: str = "dis"
    flow_preset: str = "medium"
    flow_steps_per_pixel: int = FLOW_STEPS_PER_PIXEL


# BuilderConfig fields that a config string may not set.
_RESERVED_FIELDS = frozenset({"name", "version", "release_notes", "supported_versions", "tags", "description"})


def _parse_value(text: str, default: Any) -> Any:
    """A config override value, typed like the field's default: the raw text for a str
    field; else a Python literal (``none`` → None), cast to the default's type if it has one."""
    if isinstance(default, str):
        return text
    if text.lower() == "none":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot parse config value {text!r}") from None
    return value if default is None else type(default)(value)


def resolve_config(builder_cls: type, spec: str | None) -> tfds.core.BuilderConfig:
    """The builder config named by ``spec``: ``None`` (the default config), a config name
    (``"tiny"``), overrides of the default (``"fps=10,max_side=480"``) or both
    (``"tiny:train_clips=4"``).

    Overridden configs get a name of their own (base name + digest of the overrides), so
    that builds with different settings never share a directory.

    Raises:
      ValueError: unknown config name or field, or a malformed override.
    """
    known = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
    default = builder_cls.DEFAULT_BUILDER_CONFIG_NAME or builder_cls.BUILDER_CONFIGS[0].name
    spec = (spec or "").strip()
    if ":" in spec:
        base_name, overrides = spec.split(":", 1)
    elif "=" in spec:
        base_name, overrides = "", spec
    else:
        base_name, overrides = spec, ""
    base_name = base_name or default
    if base_name not in known:
        raise ValueError(f"unknown config {base_name!r} of {builder_cls.name}; known configs: {sorted(known)}")
    base = known[base_name]
    if not overrides:
        return base
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for item in filter(None, (s.strip() for s in overrides.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields or key in _RESERVED_FIELDS:
            settable = sorted(set(fields) - _RESERVED_FIELDS)
            raise ValueError(f"bad config override {item!r} for {builder_cls.name}; settable fields: {settable}")
        changes[key] = _parse_value(text.strip(), getattr(base, key))
    return replace_config(base, name=f"{base.name}-{fingerprint(sorted(changes.items()))}", **changes)


def replace_config(config: tfds.core.BuilderConfig, **changes: Any) -> tfds.core.BuilderConfig:
    """A copy of a builder config with ``changes`` (a new ``name`` among them)."""
    return dataclasses.replace(config, **changes)


class FrameSequenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the jaxsurg builders: array_record files, and builds without TensorFlow
    (nor ``importlib_resources``).

    An interrupted build leaves no dataset that looks complete: TFDS writes into an
    ``incomplete.*`` sibling directory and renames it only when every split is written;
    the next build starts over (``builders.prepare`` then removes the leftover folder).

    Quiet: TFDS's "Downloading and preparing dataset ..." / "... downloaded and prepared"
    prints and its "has no dataset_info.json" warnings are left out.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The file defining the builder (TFDS looks for ``checksums.tsv`` beside it).

        TFDS's own version needs the ``importlib_resources`` package for builders defined
        in a package; this one does not.
        """
        return epath.Path(inspect.getfile(cls))

    def download_and_prepare(self, *args, **kwargs):  # noqa: D102 - see the class docstring
        kwargs.setdefault("file_format", "array_record")
        with tf_free_spilling(), quiet_tfds():
            return super().download_and_prepare(*args, **kwargs)

    # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size,
    # ...)" before a build and "Dataset ... downloaded and prepared to ..." after it;
    # ``builders.prepare`` prints one line of its own instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info_from(self, features_dict: tfds.features.FeaturesDict, description: str, citation: str = "") -> tfds.core.DatasetInfo:
        """DatasetInfo with records in generation order (``disable_shuffling``)."""
        return tfds.core.DatasetInfo(
            builder=self, description=description, features=features_dict, citation=citation, disable_shuffling=True
        )

