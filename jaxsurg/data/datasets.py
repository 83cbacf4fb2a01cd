"""Which TFDS builder serves each ``config.dataset``, its tasks, and its train/test split.

``config.dataset`` names: ``synthetic`` (the embedded default, rendered on first use),
``cholecseg8k`` (needs ``config.data_dir``, the folder holding the official layout) and
``surgical_video`` (unlabelled; training data for self-supervised stages only).

Splits (``DatasetSpec.split_mode``):

- ``builder``: the dataset's own train and test splits (synthetic clips, m2caiSeg,
  EndoVis 2015 key points);
- ``temporal``: each video split in time, the first ``train_fraction`` (2/3) of its frames
  train, the rest test, so that no test frame is a near-copy of a training frame
  (CholecSeg8k, LabelMe folders);
- ``folds``: cross-validation over whole videos (EndoVis 2017: ``config.fold`` 0..3 holds
  out the videos of the builder module's ``FOLDS``; -1 trains on every training video and
  tests on the released test set).

``config.test_dataset`` replaces the test part by every labelled frame of another dataset
with the same task (cross-dataset / cross-video evaluation, ``other_test_rows``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to load one ``config.dataset``.

    Attributes:
      builder: TFDS builder name in ``jaxsurg.data.builders``.
      module: module holding the builder (and its ``TASK_CLASSES`` where labelled).
      split_mode: ``builder`` (its own train/test splits) or ``temporal`` (see module doc).
      needs_manual_dir: whether ``config.data_dir`` must point at the raw files.
      default_resize: (height, width) frames are resized to when ``config.resize`` is unset.
      label_files: where the dataset's ground truth comes from, for error messages.
    """

    builder: str
    module: str
    split_mode: str
    needs_manual_dir: bool
    default_resize: tuple[int, int] | None = None
    label_files: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(
        "synthetic_surgery", "jaxsurg.data.builders.synthetic_surgery", "builder", False,
        label_files="masks rendered with the frames",
    ),
    "cholecseg8k": DatasetSpec(
        "cholecseg8k", "jaxsurg.data.builders.cholecseg8k", "temporal", True, (192, 352),
        label_files="frame_<N>_endo_watershed_mask.png beside each frame_<N>_endo.png",
    ),
    "surgical_video": DatasetSpec(
        "surgical_video", "jaxsurg.data.builders.surgical_video", "builder", True, label_files="none (unlabelled video)",
    ),
    "endovis17": DatasetSpec(
        "endovis17", "jaxsurg.data.builders.endovis17", "folds", True, (256, 320),
        label_files="ground_truth/<Instrument>_labels/frameNNN.png of each instrument_dataset_K",
    ),
    "endovis15_keypoints": DatasetSpec(
        "endovis15_keypoints", "jaxsurg.data.builders.endovis15_keypoints", "builder", True, (288, 352),
        label_files="Du et al.'s train{1..4}_labels.json / test{1..6}_labels.json key-point files",
    ),
    "m2caiseg": DatasetSpec(
        "m2caiseg", "jaxsurg.data.builders.m2caiseg", "builder", True, (192, 352),
        label_files="groundtruth/N_gt.png beside images/N.jpg in train/ and test/",
    ),
    "labelme": DatasetSpec(
        "labelme", "jaxsurg.data.builders.labelme", "temporal", True, (192, 352),
        label_files="LabelMe JSON files (polygons) beside the frames",
    ),
}


def get_spec(name: str, key: str = "config.dataset") -> DatasetSpec:
    """The spec of ``config.dataset`` (or another config ``key``) = ``name``.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in DATASETS:
        raise ValueError(f"{key}={name!r} is unknown; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def task_classes(dataset: str, task: str) -> tuple[str, ...]:
    """Class names (index 0 = background) of ``task`` on ``dataset``.

    Raises:
      ValueError: if the dataset has no such task (the message lists the tasks it has).
    """
    tasks = getattr(importlib.import_module(get_spec(dataset).module), "TASK_CLASSES", {})
    if task not in tasks:
        raise ValueError(f"config.task={task!r} is not a task of dataset {dataset!r}; its tasks: {sorted(tasks)}")
    return tuple(tasks[task])


def default_tfds_dir() -> str:
    """Where built datasets go when ``config.tfds_dir`` is empty: ``$JAXSURG_TFDS_DIR`` or
    ``~/.cache/jaxsurg/tensorflow_datasets``."""
    return os.environ.get("JAXSURG_TFDS_DIR") or os.path.expanduser("~/.cache/jaxsurg/tensorflow_datasets")


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Per-record metadata of one built split, in record order.

    Attributes:
      video_id: int (N,). frame_index: int (N,) original frame numbers.
      has_label: bool (N,). video_name: N strings.
    """

    video_id: np.ndarray
    frame_index: np.ndarray
    has_label: np.ndarray
    video_name: tuple[str, ...]

    @classmethod
    def read(cls, source: Sequence[dict]) -> "RecordIndex":
        """Reads the metadata of every record of ``source`` (a TFDS data source)."""
        vid, idx, lab, names = [], [], [], []
        for i in range(len(source)):
            r = source[i]
            vid.append(int(r["video_id"]))
            idx.append(int(r["frame_index"]))
            lab.append(bool(r["has_label"]))
            name = r["video_name"]
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return cls(np.asarray(vid, np.int64), np.asarray(idx, np.int64), np.asarray(lab, bool), tuple(names))

    def videos(self) -> dict[int, np.ndarray]:
        """Record indices of each video, sorted by frame index."""
        out = {}
        for v in np.unique(self.video_id):
            rows = np.flatnonzero(self.video_id == v)
            out[int(v)] = rows[np.argsort(self.frame_index[rows], kind="stable")]
        return out


def temporal_split(index: RecordIndex, train_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Splits each video in time: its first ``round(n·train_fraction)`` frames train.

    Returns:
      (train record indices, test record indices, description for summary.json).

    Raises:
      ValueError: if ``train_fraction`` is not in (0, 1).
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"config.train_fraction must be in (0, 1), got {train_fraction}")
    train, test, described = [], [], {}
    for v, rows in index.videos().items():
        n_train = int(round(len(rows) * train_fraction))
        train.append(rows[:n_train])
        test.append(rows[n_train:])
        f = index.frame_index
        described[index.video_name[rows[0]]] = {
            "train_frames": [int(f[rows[0]]), int(f[rows[n_train - 1]])] if n_train else [],
            "test_frames": [int(f[rows[n_train]]), int(f[rows[-1]])] if n_train < len(rows) else [],
        }
    info = {"mode": "temporal", "train_fraction": train_fraction, "videos": described}
    return np.concatenate(train), np.concatenate(test), info


def fold_split(index: RecordIndex, folds: dict[int, Sequence[int]], fold: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cross-validation over videos: the records of fold ``fold``'s held-out videos test,
    every other record trains.

    Args:
      index: the training split's records. folds: fold → held-out ``video_id`` s.
      fold: 0 … len(folds) − 1.

    Returns:
      (train record indices, test record indices, description for summary.json).

    Raises:
      ValueError: an unknown fold (the message lists the folds and their videos), or a fold
        whose held-out videos or whose training videos are all missing from the build.
    """
    if fold not in folds:
        listed = ", ".join(f"{k}: {list(v)}" for k, v in sorted(folds.items()))
        raise ValueError(f"config.fold={fold} is not a fold; folds (held-out videos): {listed}, or -1 for the released test set")
    held_out = np.isin(index.video_id, np.asarray(folds[fold]))
    present = sorted(set(index.video_id.tolist()))
    if not held_out.any() or held_out.all():
        part = "none of" if not held_out.any() else "every video but"
        raise ValueError(
            f"config.fold={fold} holds out videos {list(folds[fold])}, but the build holds {part} them "
            f"(videos present: {present}); fold cross-validation needs the full training set"
        )
    train, test = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    info = {
        "mode": "fold", "fold": fold, "test_videos": sorted(set(index.video_id[test].tolist())),
        "train_videos": sorted(set(index.video_id[train].tolist())),
    }
    return train, test, info


def labelled_subset(index: RecordIndex, rows: np.ndarray, label_interval: int) -> np.ndarray:
    """The records of ``rows`` that count as labelled with one label every ``label_interval``
    frames of each video (positions 0, h, 2h, ... in time order) and have ground truth.

    Returns an empty array when none is left (``pipeline.load`` refuses that with the
    dataset's label files named).

    Raises:
      ValueError: if ``label_interval`` < 1.
    """
    if label_interval < 1:
        raise ValueError(f"config.label_interval must be ≥ 1, got {label_interval}")
    keep = []
    rows_set = set(rows.tolist())
    for vid_rows in index.videos().values():
        ordered = [r for r in vid_rows if r in rows_set]
        keep.extend(r for pos, r in enumerate(ordered) if pos % label_interval == 0 and index.has_label[r])
    return np.asarray(sorted(keep), dtype=np.int64)
