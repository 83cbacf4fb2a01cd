"""What each arm of Dual Motion Flow trains on, known before anything trains: the labelled
set D_L, which unlabelled frames D_R will hold (``propagation_plan``), the rows of D_C, the
clips of Dual MF★ and so the size of every stage's epoch (Sec. 2.3: the segmentation
network trains on D_L ∪ D_R ∪ D_C; the budget of the paper's segmentation, 50 epochs, is
counted over that set).

All of it follows from the training part's layout alone — which rows are labelled, where
each video starts and ends — not from any trained network: ``layout_of`` reads it from a
loaded dataset before a frame is decoded, and a ``TrainSequence`` has the same fields, so
``config.resolve`` turns epochs into steps from the same counts the stages then train on
(``run`` checks that they agree).

- ``Layout`` / ``layout_of``: the layout of ``data.train_all_rows``;
- ``propagation_plan``: the labelled frame, direction and steps that reach each unlabelled
  frame (D_R's rows, Sec. 2.1);
- ``d_c_rows``: the consecutive pairs D_C interpolates (Sec. 2.2);
- ``rebuilt_positions`` / ``convlstm_clip_count``: the rebuilt sequence's positions and
  Dual MF★'s clips;
- ``training_set_sizes``: every arm's set sizes and epoch sizes; ``budget``: epochs, steps
  and set sizes per stage, for ``eval/summary.json``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from jaxsurg.data import sequences

# What each arm's segmentation set holds (``config.segment``): the paper's Table 1 rows.
ARM_SETS = {
    "dl_only": ("D_L",),  # U-Net11 on the labelled frames only (the paper's "U-Net11" row)
    "single": ("D_L", "D_R"),  # Single MF
    "dual": ("D_L", "D_R", "D_C"),  # Dual MF
    "dual_convlstm": ("D_L", "D_R", "D_C"),  # Dual MF★: Dual MF's U-Net11, then clips of the same set
}
G_WINDOW = 4  # consecutive frames per training window of the flow predictor (``sequences.Windows``)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The training part's layout, without frames (N training frames in (video, time) order).

    Attributes:
      labelled: bool (N,), the frames kept labelled for ``config.label_interval``.
      video_id: int (N,). position: int (N,) index of the frame in its video's training part.
      starts, ends: int (N,) the first / last row of each frame's video (training part).

    A ``jaxsurg.data.sequences.TrainSequence`` has the same attributes and length, so every
    function here takes either.
    """

    labelled: np.ndarray
    video_id: np.ndarray
    position: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.labelled)


def layout_of(data: Any) -> Layout:
    """The layout of ``data.train_all_rows`` (a ``pipeline.LoadedDataset``), as
    ``sequences.load_train_sequence`` lays the rows out: a video's training part is a run of
    consecutive records of one ``video_id``; a row is labelled when it is in
    ``data.train_rows``. Reads the record index only (no frame is decoded).

    Raises:
      ValueError: the dataset has no training rows.
    """
    rows = np.asarray(data.train_all_rows, np.int64)
    if rows.size == 0:
        raise ValueError("the dataset has no training frames")
    video_id = np.asarray(data.train_index.video_id)[rows].astype(np.int64)
    n = len(rows)
    starts, ends = sequences.video_runs(video_id, rows)
    labelled = np.isin(rows, np.asarray(data.train_rows, np.int64))
    return Layout(labelled, video_id, np.arange(n) - starts, starts, ends)


def propagation_plan(seq: Any, k: int) -> dict[int, tuple[int, int, int]]:
    """For every unlabelled row u reachable within ``k`` steps of a labelled row of its
    video: (labelled row l, direction d, steps j) with u = l + d·j, the nearest labelled
    row (a tie goes to the earlier labelled row, propagated forward). ``seq``: a
    ``Layout`` or ``TrainSequence``. The rows of D_R (Sec. 2.1, joint propagation up to k
    steps both ways)."""
    plan: dict[int, tuple[int, int, int]] = {}
    for u in np.flatnonzero(~np.asarray(seq.labelled)):
        best = None
        for j in range(1, k + 1):
            for d in (+1, -1):  # forward propagation (from u − j) first: wins ties
                l = u - d * j
                if seq.starts[u] <= l <= seq.ends[u] and seq.labelled[l]:
                    best = (int(l), d, j)
                    break
            if best:
                break
        if best:
            plan[int(u)] = best
    return plan


def d_c_rows(seq: Any, plan: dict[int, tuple[int, int, int]]) -> list[int]:
    """The rows f of the consecutive training pairs (f, f + 1) that D_C interpolates: those
    whose frame f has a pair in the rebuilt sequence (labelled, or in D_R's ``plan``)."""
    n = np.arange(len(seq))
    return [int(f) for f in n[n < np.asarray(seq.ends)] if seq.labelled[f] or int(f) in plan]


def rebuilt_positions(seq: Any, plan: dict[int, tuple[int, int, int]], arm: str, t: float) -> list[list[float]]:
    """Per video (in ``video_id`` order), the sorted positions of the rebuilt sequence the
    arm trains on: D_L's and D_R's frames at their positions, D_C's at f + ``t``."""
    out: dict[int, list[float]] = {}
    sets = ARM_SETS[arm]
    for r in range(len(seq)):
        if seq.labelled[r] or ("D_R" in sets and r in plan):
            out.setdefault(int(seq.video_id[r]), []).append(float(seq.position[r]))
    if "D_C" in sets:
        for f in d_c_rows(seq, plan):
            out.setdefault(int(seq.video_id[f]), []).append(float(seq.position[f]) + t)
    return [sorted(out[v]) for v in sorted(out)]


def convlstm_clips(videos: list[list[tuple]], length: int, spacing: float = 0.5) -> list[list[tuple[Any, int]]]:
    """Dual MF★'s clips: every run of ``length`` consecutive entries of a video's rebuilt
    sequence whose positions are ``spacing`` apart (0, 0.5, 1, … with D_C at f + 0.5), so
    no clip crosses a frame without a pair. ``videos``: per video, (position, source,
    index) entries sorted by position (``segment.rebuilt_sequence``); returns each clip as
    its (source, index) pairs, in time order."""
    clips = []
    for entries in videos:
        for s in range(len(entries) - length + 1):
            window = entries[s : s + length]
            if all(abs(b[0] - a[0] - spacing) < 1e-6 for a, b in zip(window[:-1], window[1:])):
                clips.append([(e[1], e[2]) for e in window])
    return clips


def convlstm_clip_count(seq: Any, plan: dict[int, tuple[int, int, int]], clip_length: int, t: float) -> int:
    """How many clips Dual MF★ trains on: ``segment.convlstm_clips`` over the rebuilt
    sequence of D_L ∪ D_R ∪ D_C."""
    videos = [[(p, None, 0) for p in positions] for positions in rebuilt_positions(seq, plan, "dual_convlstm", t)]
    return len(convlstm_clips(videos, clip_length))


def training_set_sizes(config: ml_collections.ConfigDict, seq: Any) -> dict[str, int]:
    """The sizes of what ``config.segment``'s arm trains on, from the layout ``seq``
    (``Layout`` or ``TrainSequence``):

      - ``D_L``, ``D_R``, ``D_C``: frame-label pairs of each set (0 for a set the arm does
        not use); ``examples`` = their sum, the U-Net11 segment stage's epoch;
      - ``clips``: Dual MF★'s clips of ``convlstm.clip_length`` (its convlstm stage's epoch;
        0 for the other arms);
      - ``windows``: the flow predictor's training windows of 4 consecutive frames;
        ``pairs``: the compensator's consecutive training pairs (each stage's epoch).

    Raises:
      KeyError: an unknown ``config.segment``.
    """
    sets = ARM_SETS[config.segment]
    plan = propagation_plan(seq, int(config.propagation_steps)) if "D_R" in sets else {}
    n = np.arange(len(seq))
    sizes = {
        "D_L": int(np.sum(seq.labelled)),
        "D_R": len(plan),
        "D_C": len(d_c_rows(seq, plan)) if "D_C" in sets else 0,
    }
    sizes["examples"] = sizes["D_L"] + sizes["D_R"] + sizes["D_C"]
    t = float(config.compensator.t)
    sizes["clips"] = convlstm_clip_count(seq, plan, int(config.convlstm.clip_length), t) if config.segment == "dual_convlstm" else 0
    sizes["windows"] = int(np.sum(n + G_WINDOW - 1 <= np.asarray(seq.ends)))
    sizes["pairs"] = int(np.sum(n < np.asarray(seq.ends)))
    return sizes


def stages_run(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The stages ``config``'s arm runs, in order: ``dl_only`` only ``segment``; the flow
    predictor only with ``motion='learned'``; the compensator for the arms with D_C; Dual
    MF★ its own U-Net11 ``segment`` (unless ``convlstm.init_from`` names another run's)
    and then ``convlstm``."""
    sets = ARM_SETS[config.segment]
    out = []
    if "D_R" in sets:
        if config.motion == "learned":
            out.append("flow_predictor")
        out.append("propagate")
    if "D_C" in sets:
        out.append("compensator")
    if not (config.segment == "dual_convlstm" and config.convlstm.init_from):
        out.append("segment")
    if config.segment == "dual_convlstm":
        out.append("convlstm")
    return tuple(out)


# The config block of each training stage and the size (``training_set_sizes``) of its epoch.
STAGE_BLOCKS = {"flow_predictor": ("flow_predictor", "windows"), "compensator": ("compensator", "pairs"),
                "segment": ("", "examples"), "convlstm": ("convlstm", "clips")}


def budget(config: ml_collections.ConfigDict, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per training stage the arm runs (``stages_run``): ``epochs`` as given (0 = counted in
    steps), the resolved ``total_steps`` and ``batch_size``, ``examples_per_epoch`` (the
    stage's training-set size, ``sizes``) and ``epochs_trained`` = total_steps × batch_size
    / examples_per_epoch (what a budget given in steps amounts to, in epochs; rounded to
    3 decimals). For ``eval/summary.json``: arms compared at equal epochs or at equal
    steps read both here."""
    out = {}
    for name in stages_run(config):
        if name not in STAGE_BLOCKS:
            continue
        key, size_key = STAGE_BLOCKS[name]
        block = config[key] if key else config
        n = int(sizes[size_key])
        steps, batch = int(block.total_steps), int(block.batch_size)
        out[name] = {
            "epochs": int(block.epochs), "total_steps": steps, "batch_size": batch, "examples_per_epoch": n,
            "epochs_trained": round(steps * batch / n, 3) if n else None,
            "steps_per_epoch": max(1, math.ceil(n / batch)) if n else None,
        }
    return out
