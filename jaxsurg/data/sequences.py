"""Training videos in memory, and the frame-level examples cut from them.

A method that learns from the motion between neighbouring frames trains on every frame of
the training videos, labelled or not, together with the optical flow between consecutive
frames. This module holds them at a working size in host memory and offers them as
random-access ``grain`` sources:

- ``TrainSequence`` / ``load_train_sequence``: every training frame (``data.train_all_rows``)
  resized to ``config.resize``, its label where the run keeps one (``config.label_interval``),
  the ground truth it holds back, the stored forward flow F_{n→n+1} and the backward flow
  F_{n→n−1} (``flow.optical_flow`` with ``config.flow_method``, on the host);
- ``Windows``: windows of 4 consecutive frames of one video with the flows between them;
- ``Pairs``: consecutive frame pairs (I0, I1) with F_{0→1} and F_{1→0};
- ``LabelledFrames``: the labelled frames as records (image, mask, video_id, position);
- ``Identity``: the no-op ``grain`` transform, for examples that need no augmentation.

First written for Dual Motion Flow (``jaxsurg.methods.dual_motion``: ``Windows`` train its
flow predictor, ``Pairs`` its flow compensator, ``LabelledFrames`` are its D_L).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import ml_collections
import numpy as np

from jaxsurg.data import flow as flow_lib
from jaxsurg.data import pipeline, transforms


@dataclasses.dataclass
class TrainSequence:
    """The training part of every video at the working size, in memory (host numpy).

    Attributes (N training frames, in (video, time) order):
      frames: uint8 (N, H, W, 3). masks: uint8 (N, H, W), 255 on unlabelled frames.
      labelled: bool (N,), the labelled subset for ``config.label_interval``.
      video_id: int (N,). position: int (N,) index of the frame in its video's training part.
      flow_fwd: float32 (N, H, W, 2) F_{n→n+1} (the dataset's stored flow; 0 on a video's last frame).
      flow_bwd: float32 (N, H, W, 2) F_{n→n−1} (``optical_flow`` on the host; 0 on its first frame).
      starts, ends: int (N,) the first / last row of each frame's video.
      true_masks: uint8 (N, H, W) the dataset's ground truth of every training frame (255
        where it has none), held back from training: only ``propagation_quality`` reads it,
        to score the propagated labels of frames whose labels the run pretends not to have.
        None when unknown.
    """

    frames: np.ndarray
    masks: np.ndarray
    labelled: np.ndarray
    video_id: np.ndarray
    position: np.ndarray
    flow_fwd: np.ndarray
    flow_bwd: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    true_masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


def video_runs(video_id: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each entry's video run starts and ends: a run is consecutive records
    (``rows[i + 1] == rows[i] + 1``) of one video.

    Args:
      video_id: int (N,) video of each entry. rows: int (N,) record indices, increasing.

    Returns:
      (starts, ends): int (N,) index of the first and of the last entry of each entry's run.
    """
    n = len(rows)
    new_video = np.ones(n, bool)
    new_video[1:] = (video_id[1:] != video_id[:-1]) | (rows[1:] != rows[:-1] + 1)
    group = np.cumsum(new_video) - 1
    first = np.flatnonzero(new_video)
    last = np.append(first[1:] - 1, n - 1)
    return first[group], last[group]


def load_train_sequence(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> TrainSequence:
    """Reads every training record (``data.train_all_rows``), resizes it to ``config.resize``
    and computes the backward flows with ``config.flow_method``."""
    rows = np.asarray(data.train_all_rows)
    size = tuple(config.resize)
    frames = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask", "flow"))
    labelled_rows = set(int(r) for r in data.train_rows)
    has_label = data.train_index.has_label[rows]
    imgs, masks, truth, fwd = [], [], [], []
    for i in range(len(frames)):
        ex = transforms.resize(frames[i], size)
        imgs.append(ex["image"][0])
        truth.append(ex["mask"][0] if has_label[i] else np.full(size, 255, np.uint8))
        masks.append(truth[-1] if int(rows[i]) in labelled_rows else np.full(size, 255, np.uint8))
        fwd.append(ex["flow"][0].astype(np.float32))
    video_id = data.train_index.video_id[rows].astype(np.int64)
    n = len(rows)
    starts, ends = video_runs(video_id, rows)
    position = np.arange(n) - starts
    frames_arr = np.stack(imgs)
    flow_fwd = np.stack(fwd)
    flow_fwd[ends == np.arange(n)] = 0.0
    flow_bwd = np.zeros_like(flow_fwd)
    for i in range(n):
        if i > starts[i]:
            flow_bwd[i] = flow_lib.optical_flow(frames_arr[i], frames_arr[i - 1], method=config.flow_method)
    labelled = np.array([int(r) in labelled_rows for r in rows])
    return TrainSequence(frames_arr, np.stack(masks), labelled, video_id, position, flow_fwd, flow_bwd, starts, ends, np.stack(truth))


class Windows:
    """Random-access windows of 4 consecutive frames of one video: ``{"frames": uint8
    (4, H, W, 3), "fwd": float32 (3, H, W, 2) F_{s+i→s+i+1}, "bwd": float32 (3, H, W, 2)
    F_{s+i+1→s+i}}`` for window start s."""

    def __init__(self, seq: TrainSequence, length: int = 4):
        self.seq, self.length = seq, length
        n = np.arange(len(seq))
        self.starts = n[n + length - 1 <= seq.ends]
        if len(self.starts) == 0:
            raise ValueError(f"no video has {length} consecutive training frames (the flow predictor needs them)")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s, n = int(self.starts[i]), self.length
        return {
            "frames": self.seq.frames[s : s + n], "fwd": self.seq.flow_fwd[s : s + n - 1],
            "bwd": self.seq.flow_bwd[s + 1 : s + n],
        }


class Pairs:
    """Consecutive training pairs: ``{"I0", "I1": uint8 (H, W, 3), "F01", "F10": float32 (H, W, 2)}``."""

    def __init__(self, seq: TrainSequence):
        self.seq = seq
        n = np.arange(len(seq))
        self.rows = n[n < seq.ends]
        if len(self.rows) == 0:
            raise ValueError("no video has 2 consecutive training frames (the compensator needs them)")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        f = int(self.rows[i])
        s = self.seq
        return {"I0": s.frames[f], "I1": s.frames[f + 1], "F01": s.flow_fwd[f], "F10": s.flow_bwd[f + 1]}


class LabelledFrames:
    """D_L: the labelled training frames at the working size, as dict records."""

    def __init__(self, seq: TrainSequence):
        self.seq, self.rows = seq, np.flatnonzero(seq.labelled)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        return {"image": self.seq.frames[r], "mask": self.seq.masks[r], "video_id": int(self.seq.video_id[r]), "position": float(self.seq.position[r])}


@dataclasses.dataclass(frozen=True)
class Identity(grain.transforms.RandomMap):
    """No augmentation."""

    def random_map(self, element, rng):
        del rng
        return element
