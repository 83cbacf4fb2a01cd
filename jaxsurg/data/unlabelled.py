"""Unlabelled frames with optical flow, for self-supervised pretraining (Laparoflow-SSL).

A pretraining example is one frame t with its forward flow t → t+1:

- ``image``: uint8 (H, W, 3) RGB;
- ``flow``: float32 (H, W, 2), (dx, dy) in pixels of the (resized) frame;
- ``valid``: bool (H, W): pixels allowed in the loss — the flow's forward–backward check
  passed *and* the pixel lies inside the endoscope's field of view (``field_of_view``).

Sources (``config.pretrain.sources``): ``"train"`` = every training frame of
``config.dataset`` (labels unused; the test frames are never used, so pretraining cannot
see the evaluation frames even without their labels) and ``"video"`` = the
``surgical_video`` builder over ``config.pretrain.video_dir`` (mp4 files or frame folders).
The last frame of each video has no flow and is left out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import cv2
import grain
import numpy as np

from jaxsurg.data import datasets, pipeline, transforms


def field_of_view(image: np.ndarray, *, threshold: int = 12, erode: int = 2) -> np.ndarray:
    """The endoscope's field of view: pixels that are not part of the dark border.

    A pixel is outside when its brightest channel is below ``threshold`` *and* it is
    connected to the image border through such pixels (so dark tissue in the middle of the
    image stays inside). The result is eroded by ``erode`` px so that the blurred rim of the
    circle is excluded too.

    Args:
      image: uint8 (H, W, 3) RGB.
      threshold: brightness (0–255) under which a border-connected pixel is outside.
      erode: erosion radius in pixels (0 = none).

    Returns:
      bool (H, W), True inside the field of view.

    Raises:
      ValueError: if ``image`` is not uint8 (H, W, 3).
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"field_of_view expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    dark = (image.max(axis=-1) < threshold).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=4)  # dark regions, label 0 = bright
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    inside = ~np.isin(labels, np.unique(rim[rim > 0]))
    if erode > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1, 2 * erode + 1))
        inside = cv2.erode(inside.astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return inside


class _FlowRecords(Sequence):
    """The records ``rows`` of one TFDS source as pretraining examples."""

    def __init__(self, source: Sequence[dict], rows: np.ndarray):
        self._source, self._rows = source, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        record = self._source[int(self._rows[i])]
        return {
            "image": np.asarray(record["image"]),
            "flow": np.asarray(record["flow"], np.float32),
            "flow_valid": np.asarray(record["flow_valid"], bool),
        }


class FlowFrames(pipeline.ConcatFrames):
    """Random-access pretraining examples (see the module doc) from several TFDS sources.

    Args:
      parts: (data source, record indices) pairs; each record must have ``image``,
        ``flow`` and ``flow_valid``.
    """

    def __init__(self, parts: Sequence[tuple[Sequence[dict], np.ndarray]]):
        super().__init__([_FlowRecords(src, rows) for src, rows in parts])


def rows_with_flow(index: datasets.RecordIndex, rows: np.ndarray) -> np.ndarray:
    """The records of ``rows`` that have a successor in the same video (so a flow t → t+1)."""
    rows = np.asarray(rows, np.int64)
    nxt = rows + 1
    ok = nxt < len(index.video_id)
    ok[ok] &= index.video_id[nxt[ok]] == index.video_id[rows[ok]]
    return rows[ok]


@dataclasses.dataclass(frozen=True)
class PretrainPrepare(grain.transforms.RandomMap):
    """Resizes a pretraining example to ``size`` (flow rescaled to the new pixels) and
    combines the flow's valid mask with the field of view into ``valid``. Deterministic (the
    random views are cut on the device); a ``RandomMap`` only to fit ``local_batches``."""

    size: tuple[int, int]
    fov_threshold: int = 12

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng
        return self.prepare(element)

    def prepare(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ex = transforms.resize({k: v[None] for k, v in element.items()}, self.size)
        image = ex["image"][0]
        valid = ex["flow_valid"][0] & field_of_view(image, threshold=self.fov_threshold)
        return {"image": image, "flow": ex["flow"][0].astype(np.float32), "valid": valid}


def video_source(tfds_dir: str, video_dir: str, builder_config: str = "") -> tuple[Sequence[dict], datasets.RecordIndex]:
    """The ``surgical_video`` build of the unlabelled videos in ``video_dir`` (built on first
    use into ``tfds_dir``, "" = the default): its data source and RecordIndex.

    Raises:
      FileNotFoundError: from the builder, for a missing or empty ``video_dir``.
    """
    from jaxsurg.data import builders

    builder = builders.prepare(
        "surgical_video", data_dir=tfds_dir or datasets.default_tfds_dir(), manual_dir=video_dir, config=builder_config or None,
    )
    source = builder.as_data_source(split="train")
    return source, datasets.RecordIndex.read(source)


def pretraining_frames(config: Any, data: Any) -> FlowFrames:
    """The unlabelled frames ``config.pretrain.sources`` names (see the module doc).

    Args:
      config: the method config (``pretrain.sources``, ``pretrain.video_dir``,
        ``pretrain.video_builder_config``, ``tfds_dir``).
      data: the ``pipeline.LoadedDataset`` of ``config.dataset``.

    Raises:
      ValueError: an unknown source, ``"video"`` without ``pretrain.video_dir``, or no frame
        with flow at all.
    """
    parts = []
    for source in config.pretrain.sources:
        if source == "train":
            parts.append((data.train_source, rows_with_flow(data.train_index, data.train_all_rows)))
        elif source == "video":
            if not config.pretrain.video_dir:
                raise ValueError("config.pretrain.sources has 'video' but config.pretrain.video_dir is empty")
            src, index = video_source(config.tfds_dir, config.pretrain.video_dir, config.pretrain.video_builder_config)
            parts.append((src, rows_with_flow(index, np.arange(len(src)))))
        else:
            raise ValueError(f"config.pretrain.sources: unknown source {source!r}; known: 'train', 'video'")
    frames = FlowFrames(parts)
    if len(frames) == 0:
        raise ValueError(f"no pretraining frame with optical flow in sources {list(config.pretrain.sources)}")
    return frames
