"""AGSD's frames: every frame a run trains or tests on, in host memory at the working size,
and the training pairs of consecutive frames (Liu et al. 2020, Sec. 2.2: the diffusion loss
compares adjacent frames).

- ``load_frames``: the frames of ``config.setting`` — ``SS``: every frame of the dataset (its
  training and test parts; the paper's single stage: no label is used, so training on the
  frames that are scored is legitimate), scored on every labelled one; ``TT``: the training
  part, scored on the test part. ``config.video_dir`` adds unlabelled video frames to the
  training frames in both. Frames are grouped into *runs* (one video, consecutive records,
  one part): pairs and the location cue stay inside a run, so in TT no test frame reaches
  training, not even through the location cue.
- ``Pairs``: the (t, t+1) training pairs with their anchors and frozen features.
- ``PairAugment``: one crop (area fraction in ``crop_scale``, the frame's aspect ratio) and
  one flip for both frames of a pair, colour jitter drawn per frame (the code's).
- ``crop_resize``: the crop and flip applied on the device, alike to frames, anchors and
  features, each resized to its own output size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsurg import progress
from jaxsurg.data import datasets, pipeline, transforms, unlabelled

SETTINGS = ("SS", "TT")


@dataclasses.dataclass
class AgsdFrames:
    """The frames of a run, at the working size, in (source, video, time) order.

    Attributes (N frames):
      images: uint8 (N, H, W, 3) RGB.
      truth: uint8 (N, H, W) 1 instrument / 0 rest / 255 unknown — never used for training;
        read to score the cues, the anchors and the network.
      run: int (N,) the run (one video, consecutive records, one part) each frame belongs to.
      trained: bool (N,) frames the network trains on. evaluated: bool (N,) frames scored.
      record: int (N,) the frame's record index in its source. part: list of N names
        (``"train"``, ``"test"``, ``"video"``; ``"all"`` for a dataset's frames in SS).
      sources: (data source, first frame index) of each chunk of frames, to read a frame at
        its original resolution again (``original``); empty for frames made in memory.
    """

    images: np.ndarray
    truth: np.ndarray
    run: np.ndarray
    trained: np.ndarray
    evaluated: np.ndarray
    record: np.ndarray
    part: list[str]
    sources: list[tuple[Any, int]] = dataclasses.field(default_factory=list)

    def original(self, i: int) -> np.ndarray:
        """Frame ``i`` at its original resolution: uint8 (H0, W0, 3) RGB (the frame at the
        working size when the frames were made in memory)."""
        for source, start in reversed(self.sources):
            if i >= start:
                return np.asarray(source[int(self.record[i])]["image"])
        return self.images[i]

    def __len__(self) -> int:
        return len(self.images)

    def pair_starts(self) -> np.ndarray:
        """Indices t whose frames t and t+1 are both trained on and in one run."""
        t = np.arange(len(self) - 1)
        return t[self.trained[t] & self.trained[t + 1] & (self.run[t] == self.run[t + 1])]


def _read(source, rows: np.ndarray, task: str | None, size: tuple[int, int], desc: str) -> tuple[np.ndarray, np.ndarray]:
    keys = ("image", "mask", "has_label") if task else ("image",)
    frames = pipeline.Frames(source, rows, task or "binary", keys)
    images, truth = [], []
    for i in progress.bar(range(len(frames)), total=len(frames), desc=desc, unit="frame"):
        ex = transforms.resize(frames[i], size)
        images.append(ex["image"][0])
        labelled = task and bool(ex["has_label"][0])
        truth.append(ex["mask"][0] if labelled else np.full(size, 255, np.uint8))
    return np.stack(images), np.stack(truth)


def _runs(video_id: np.ndarray, rows: np.ndarray) -> np.ndarray:
    new = np.ones(len(rows), bool)
    new[1:] = (video_id[1:] != video_id[:-1]) | (rows[1:] != rows[:-1] + 1)
    return np.cumsum(new) - 1


def load_frames(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> AgsdFrames:
    """The frames of ``config.setting`` (see the module doc) at ``config.resize``.

    Raises:
      ValueError: an unknown setting; a setting without two consecutive training frames.
    """
    if config.setting not in SETTINGS:
        raise ValueError(f"config.setting={config.setting!r} is unknown; known: {SETTINGS} (SS: train and test on the same frames; TT: held-out test part)")
    size = tuple(config.resize)
    temporal = data.train_source is data.test_source
    test_index = data.train_index if temporal else datasets.RecordIndex.read(data.test_source)
    if config.setting == "SS":
        if temporal:
            parts = [(data.train_source, data.train_index, np.arange(len(data.train_source)), "all", True)]
        else:
            parts = [
                (data.train_source, data.train_index, np.arange(len(data.train_source)), "all", True),
                (data.test_source, test_index, np.arange(len(data.test_source)), "all", True),
            ]
    else:
        test_rows = np.setdiff1d(np.arange(len(data.test_source)), data.train_all_rows) if temporal else np.arange(len(data.test_source))
        parts = [
            (data.train_source, data.train_index, np.asarray(data.train_all_rows), "train", True),
            (data.test_source, test_index, test_rows, "test", False),
        ]
    chunks: list[dict[str, Any]] = []

    def add(source, images, truth, runs, rows, name, train, scored):
        offset = int(chunks[-1]["run"].max()) + 1 if chunks else 0
        start = sum(len(c["record"]) for c in chunks)
        chunks.append(dict(images=images, truth=truth, run=runs + offset, record=rows, part=[name] * len(rows), start=start,
                           source=source, trained=np.full(len(rows), train), evaluated=scored & (truth != 255).any(axis=(1, 2))))

    for source, index, rows, name, train in parts:
        images, truth = _read(source, rows, config.task, size, f"frames ({name})")
        add(source, images, truth, _runs(index.video_id[rows], rows), rows, name, train, not train or config.setting == "SS")
    if config.video_dir:
        source, index = unlabelled.video_source(config.tfds_dir, config.video_dir, config.video_builder_config)
        rows = np.arange(len(source))
        images, truth = _read(source, rows, None, size, "frames (video)")
        add(source, images, truth, _runs(index.video_id[rows], rows), rows, "video", True, False)
    out = AgsdFrames(
        *(np.concatenate([c[k] for c in chunks]) for k in ("images", "truth", "run", "trained", "evaluated", "record")),
        sum((c["part"] for c in chunks), []), [(c["source"], c["start"]) for c in chunks],
    )
    if len(out.pair_starts()) == 0:
        raise ValueError(f"config.setting={config.setting!r}: no two consecutive training frames in {config.dataset} (AGSD trains on adjacent pairs)")
    if not out.evaluated.any():
        raise ValueError(f"config.setting={config.setting!r}: no labelled frame to score in {config.dataset}")
    return out


class Pairs:
    """Random-access training pairs: ``{"image": uint8 (2, H, W, 3), "a_pos", "a_neg":
    float16 (2, H, W), "features": float16 (2, h, w, D), "view": float16 (2, H, W)}`` of
    frames t, t+1 (``features`` and ``view`` only when given: ``view`` is the field of view
    the semantic diffusion pools inside, 1 in / 0 out)."""

    def __init__(self, frames: AgsdFrames, a_pos: np.ndarray, a_neg: np.ndarray, features: np.ndarray | None, view: np.ndarray | None = None):
        self.frames, self.a_pos, self.a_neg, self.features = frames, a_pos, a_neg, features
        self.view = None if view is None else view.astype(np.float16)
        self.starts = frames.pair_starts()

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        t = int(self.starts[i])
        ex = {"image": self.frames.images[t : t + 2], "a_pos": self.a_pos[t : t + 2], "a_neg": self.a_neg[t : t + 2]}
        if self.features is not None:
            ex["features"] = self.features[t : t + 2]
        if self.view is not None:
            ex["view"] = self.view[t : t + 2]
        return ex


@dataclasses.dataclass(frozen=True)
class PairAugment(grain.transforms.RandomMap):
    """Draws the crop both frames of a pair share — ``box`` float32 (4,) = (top, left,
    height, width) as fractions of the frame, area fraction in ``crop_scale``, the frame's
    aspect ratio — and ``flip`` (bool, p = 0.5 when ``hflip``), and jitters each frame's
    colours separately (``transforms.photometric_jitter``). The crop itself is cut on the
    device (``crop_resize``)."""

    crop_scale: tuple[float, float] = (0.85, 1.0)
    hflip: bool = True
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue°

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = dict(element)
        side = math.sqrt(rng.uniform(*self.crop_scale))
        top, left = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
        out["box"] = np.array([top, left, side, side], np.float32)
        out["flip"] = np.array(self.hflip and rng.random() < 0.5)
        b, c, s, h = self.jitter
        out["image"] = np.stack([
            transforms.photometric_jitter(f[None], rng, brightness=b, contrast=c, saturation=s, hue_degrees=h)[0]
            for f in element["image"]
        ])
        return out


def pair_augment(config: ml_collections.ConfigDict) -> PairAugment:
    """``PairAugment`` from ``config.crop_scale`` and ``config.augment``.

    Raises:
      ValueError: a crop scale outside (0, 1] or not increasing.
    """
    lo, hi = (float(v) for v in config.crop_scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"config.crop_scale={tuple(config.crop_scale)}: expected (low, high) area fractions with 0 < low <= high <= 1")
    a = config.augment
    return PairAugment((lo, hi), bool(a.hflip), (a.brightness, a.contrast, a.saturation, a.hue_degrees))


def crop_resize(x: jax.Array, box: jax.Array, flip: jax.Array, size: tuple[int, int], method: str = "linear") -> jax.Array:
    """Cuts ``box`` out of every map of a batch, resizes it to ``size`` and flips it.

    Args:
      x: float (B, H, W, C) maps covering the whole frame (any H, W: frames, anchors,
        features at 1/16 of the frame).
      box: float (B, 4) (top, left, height, width) as fractions of the frame.
      flip: bool (B,) left-right flips after the crop.
      size: (H', W') output size, pixels. method: ``jax.image`` kernel (``linear``, ``cubic``).

    Returns:
      float32 (B, H', W', C).
    """
    h, w = x.shape[1:3]

    def one(m, b, f):
        scale = jnp.array([size[0] / (b[2] * h), size[1] / (b[3] * w)])
        translation = -jnp.array([b[0] * h, b[1] * w]) * scale
        out = jax.image.scale_and_translate(m.astype(jnp.float32), (*size, m.shape[-1]), (0, 1), scale, translation, method, antialias=False)
        return jnp.where(f, out[:, ::-1], out)

    return jax.vmap(one)(x, box, flip)
