"""PAT's labelled-fraction study (Ross et al. 2018, sec. 3, Table 1 and Fig. 3): Dice of the
fine-tuned U-Net vs the fraction k of labelled training frames, k ∈ {1, 1/2, 1/4, 1/8, 1/16},
for three arms — no pretraining, PAT, PAT-Ext — over several random labelled subsets.

    python -m jaxsurg.main --config=configs/pat.py:study=fractions --workdir=/tmp/pat_study

One cell = one arm × fraction × subset, a full ``pat.run`` in its own workdir
``WORKDIR/study/<arm>/k<fraction>/s<subset>/`` (config.json, split.json, eval/summary.json):

- subsets (``labelled_subset`` = s, ``fine_tuning.labelled_split``): disjoint blocks of one
  permutation of the labelled frames by ``config.seed`` while they fit (the paper's "five
  randomly selected disjunct subsets"), fresh draws beyond; every cell has the same seed, so
  across subsets only the labelled frames differ, and across arms only the initialisation;
- the budget is the fine-tuning's ``epochs`` (the paper's unit), the same for every cell;
- the pretraining runs once (in the first PAT cell, or taken from ``config.stages_from``)
  and is linked into every other PAT and PAT-Ext cell; PAT-Ext's ``ext`` stage likewise
  runs once (``jaxsurg.train.stage.take_stages_from``);
- resumable: a cell with its ``eval/summary.json`` is read, not run again; an interrupted
  cell resumes from its checkpoints. After its summary, a cell's fine-tuning checkpoints
  are deleted (each is the size of the network; the study would hold dozens);
- every cell's labelled count is checked (≥ 2: one to train on, one to validate) before any
  training.

Writes ``WORKDIR/study.json`` (per arm and fraction: the subsets' Dice, their mean and
standard deviation, the labelled and validation counts) and ``WORKDIR/study.png`` (Dice vs k,
log₂ axis, mean line with a ± std band per arm).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import cv2
import ml_collections
import numpy as np

from jaxsurg import visualize
from jaxsurg.data import pipeline
from jaxsurg.methods.pat import fine_tuning
from jaxsurg.progress import say
from jaxsurg.train import stage
from jaxsurg.train.writers import write_json

__all__ = ["ARMS", "STUDIES", "arm_config", "cell_config", "cell_dir", "check_grid", "run_study", "study_figure"]

ARMS = ("none", "pat", "pat_ext")  # the paper's arms: no pretraining, PAT, PAT-Ext
STUDIES = ("fractions",)  # config.study values ("" = one run)
ARM_NAMES = {"none": "no pretraining", "pat": "PAT", "pat_ext": "PAT-Ext"}
ARM_COLOURS = {"none": (200, 200, 200), "pat": (80, 200, 255), "pat_ext": (255, 160, 40)}  # RGB


def arm_config(config: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` for one arm: ``study`` cleared, ``pretrain.enabled`` (all but
    "none") and ``ext.enabled`` ("pat_ext") set."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.study = ""
    c.pretrain.enabled = arm != "none"
    c.ext.enabled = arm == "pat_ext"
    return c


def cell_config(config: ml_collections.ConfigDict, arm: str, fraction: float, subset: int, stages_from: str) -> ml_collections.ConfigDict:
    """One cell's config: ``arm_config`` with ``labelled_fraction`` = ``fraction``,
    ``num_labelled`` 0, ``labelled_subset`` = ``subset`` and ``stages_from``."""
    c = arm_config(config, arm)
    c.labelled_fraction, c.num_labelled, c.labelled_subset = float(fraction), 0, int(subset)
    c.stages_from = stages_from
    return c


def cell_dir(workdir: str, arm: str, fraction: float, subset: int) -> str:
    """``WORKDIR/study/<arm>/k<fraction, 4 significant digits>/s<subset>``."""
    return os.path.join(workdir, "study", arm, f"k{fraction:.4g}", f"s{subset}")


def check_grid(config: ml_collections.ConfigDict) -> None:
    """The grid's own checks, and each arm's ``pat.check_config``, before any data is built.

    Raises:
      ValueError: an unknown study or arm; no arms; fractions not in (0, 1] or repeated;
        ``grid.subsets`` < 1; an arm's config error (the message names the arm).
    """
    from jaxsurg.methods import pat

    g = config.grid
    if config.study not in STUDIES:
        raise ValueError(f"config.study={config.study!r} is unknown; known: {STUDIES} (or '' for one run)")
    if not g.arms or any(a not in ARMS for a in g.arms) or len(set(g.arms)) != len(g.arms):
        raise ValueError(f"config.grid.arms={tuple(g.arms)!r}: expected distinct arms of {ARMS}")
    fractions = [float(k) for k in g.fractions]
    if not fractions or any(not 0.0 < k <= 1.0 for k in fractions) or len(set(fractions)) != len(fractions):
        raise ValueError(f"config.grid.fractions={tuple(g.fractions)!r}: expected distinct fractions in (0, 1]")
    if g.subsets < 1:
        raise ValueError(f"config.grid.subsets={g.subsets}: must be >= 1")
    for arm in g.arms:
        try:
            pat.check_config(arm_config(config, arm))
        except ValueError as e:
            raise ValueError(f"config.grid arm {arm!r}: {e}") from e


def _source(arm: str, firsts: dict[str, str], config: ml_collections.ConfigDict) -> str:
    """Where a cell takes its upstream stages from: its arm's first cell, else (PAT-Ext)
    the first PAT cell, else ``config.stages_from``; nothing for "none"."""
    if arm == "none":
        return ""
    return firsts.get(arm) or (firsts.get("pat", "") if arm == "pat_ext" else "") or config.stages_from


def run_study(config: ml_collections.ConfigDict, workdir: str, policy: str = "refuse") -> dict[str, Any]:
    """Runs (or resumes) every cell of the grid, then writes study.json and study.png.

    Returns:
      the study record (as study.json) with ``summary_file`` and ``table`` (lines) for the
      command line's closing summary.

    Raises:
      ValueError: ``check_grid``'s; a cell asking fewer than 2 or more labelled frames than
        exist (``fine_tuning.num_labelled``; all checked before the first cell runs); cells
        tested on different numbers of frames (read back from an older run);
        ``pat.run``'s.
    """
    check_grid(config)
    g = config.grid
    fractions = sorted((float(k) for k in g.fractions), reverse=True)
    pool = len(pipeline.load(config).train_rows)
    for k in fractions:
        fine_tuning.num_labelled(cell_config(config, g.arms[0], k, 0, ""), pool)
    cells, firsts = [], {}
    total = len(g.arms) * len(fractions) * int(g.subsets)
    for arm in g.arms:
        for k in fractions:
            for s in range(int(g.subsets)):
                d = cell_dir(workdir, arm, k, s)
                path = os.path.join(d, "eval", "summary.json")
                say(f"study: cell {len(cells) + 1}/{total}: {ARM_NAMES[arm]}, k={k:.4g}, subset {s} -> {d}")
                if os.path.exists(path):
                    summary = _read(path)
                    say("study: complete (its eval/summary.json is read)")
                else:
                    summary = _run_cell(cell_config(config, arm, k, s, _source(arm, firsts, config)), d, policy)
                firsts.setdefault(arm, d)
                cells.append({
                    "arm": arm, "fraction": k, "subset": s, "dice": float(summary["dice_mean"]), "iou": float(summary["iou_mean"]),
                    "num_labelled": int(summary["num_labelled"]), "num_validation": int(summary["num_validation"]),
                    "num_frames": int(summary["num_frames"]), "stage_seconds": summary.get("stage_seconds", {}), "workdir": d,
                })
    record = _table(config, cells, fractions, pool)
    stage.on_host0(lambda: write_json(os.path.join(workdir, "study.json"), record), "study.json written")
    picture = study_figure(record)
    stage.on_host0(lambda: cv2.imwrite(os.path.join(workdir, "study.png"), np.ascontiguousarray(picture[..., ::-1])), "study.png written")
    lines = [f"  {'k':>7}  " + "  ".join(f"{ARM_NAMES[a]:>19}" for a in g.arms)]
    for k in fractions:
        rows = [record["arms"][a][_key(k)] for a in g.arms]
        lines.append(f"  {k:>7.4g}  " + "  ".join(f"{r['dice_mean']:>8.3f} ± {r['dice_std']:.3f} (n={r['num_labelled']:>2})" for r in rows))
    return {
        **record, "method": "pat_study", "summary_file": os.path.join(workdir, "study.json"),
        "table": ["Dice per labelled fraction k (mean ± std over subsets; n = labelled training frames):", *lines],
    }


def _run_cell(config: ml_collections.ConfigDict, workdir: str, policy: str) -> dict[str, Any]:
    """``pat.run`` of one cell, then its fine-tuning checkpoints deleted (the summary holds
    what the study needs; the upstream stages are kept for the cells that link them)."""
    from jaxsurg.methods import pat

    summary = pat.run(config, workdir, policy)
    stage.on_host0(lambda: shutil.rmtree(os.path.join(workdir, "finetune", "checkpoints"), ignore_errors=True), "cell checkpoints deleted")
    return summary


def _read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _key(k: float) -> str:
    return f"{k:.4g}"


def _table(config: ml_collections.ConfigDict, cells: list[dict[str, Any]], fractions: list[float], pool: int) -> dict[str, Any]:
    tested = sorted({c["num_frames"] for c in cells})
    if len(tested) != 1:  # the cells share the dataset and split: another count is another test set
        example = {c["num_frames"]: c["workdir"] for c in reversed(cells)}  # the first cell of each count
        raise ValueError(f"the study's cells were tested on different numbers of frames {tested} "
                         f"({'; '.join(f'{n}: e.g. {example[n]}' for n in tested)}); "
                         "their Dice cannot be compared: rerun the odd cells (delete their folders)")
    arms = {}
    for arm in config.grid.arms:
        arms[arm] = {}
        for k in fractions:
            mine = [c for c in cells if c["arm"] == arm and c["fraction"] == k]
            dice = np.array([c["dice"] for c in mine])
            arms[arm][_key(k)] = {
                "fraction": k, "subsets": len(mine), "dice": [round(float(v), 6) for v in dice],
                "dice_mean": float(dice.mean()), "dice_std": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
                "num_labelled": mine[0]["num_labelled"], "num_validation": mine[0]["num_validation"],
            }
    return {
        "study": "fractions", "dataset": config.dataset, "labelled_pool": pool, "num_frames": tested[0], "subsets": int(config.grid.subsets),
        "epochs": int(config.epochs), "total_steps": int(config.total_steps), "seed": int(config.seed), "arms": arms, "cells": cells,
        "note": "dice_std: sample standard deviation (ddof 1) over the subsets; each cell's Dice is its mean over the test frames",
    }


def study_figure(record: dict[str, Any], *, width: int = 640, height: int = 400) -> np.ndarray:
    """``study.png``: Dice (0 … 1) against the labelled fraction k (log₂ axis, largest k on
    the right), one line per arm through the subsets' means with a translucent ± std band,
    titled and with a legend. ``record`` as study.json. Returns uint8 RGB (H, W, 3)."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = visualize.BACKGROUND
    left, right, top, bottom = 52, 20, 14, 40
    pw, ph = width - left - right, height - top - bottom
    arms = list(record["arms"])
    keys = sorted(record["arms"][arms[0]], key=lambda s: float(s))
    logs = np.log2([float(s) for s in keys])
    lo, hi = float(logs.min()), float(logs.max())

    def x_of(v: float) -> int:
        return int(round(left + (0.5 if hi == lo else (v - lo) / (hi - lo)) * (pw - 1)))

    def y_of(d: float) -> int:
        return int(round(top + (1.0 - float(np.clip(d, 0.0, 1.0))) * (ph - 1)))

    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for d in np.linspace(0, 1, 6):
        cv2.line(img, (left, y_of(d)), (left + pw - 1, y_of(d)), (60, 60, 60), 1)
        cv2.putText(img, f"{d:.1f}", (left - 30, y_of(d) + 4), font, scale, visualize.TEXT_COLOUR, 1, cv2.LINE_AA)
    for s, v in zip(keys, logs):
        x = x_of(v)
        cv2.line(img, (x, top + ph - 1), (x, top + ph + 3), (200, 200, 200), 1)
        label = "1" if float(s) == 1 else f"1/{1 / float(s):.3g}"
        cv2.putText(img, label, (x - 12, top + ph + 18), font, scale, visualize.TEXT_COLOUR, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw - 1, top + ph - 1), (110, 110, 110), 1)
    for arm in arms:
        rows = [record["arms"][arm][s] for s in keys]
        mean = np.array([r["dice_mean"] for r in rows])
        std = np.array([r["dice_std"] for r in rows])
        colour = ARM_COLOURS[arm]
        band = np.array([[x_of(v), y_of(m + e)] for v, m, e in zip(logs, mean, std)]
                        + [[x_of(v), y_of(m - e)] for v, m, e in zip(logs[::-1], mean[::-1], std[::-1])], np.int32)
        overlay = img.copy()
        cv2.fillPoly(overlay, [band], colour)
        img = cv2.addWeighted(overlay, 0.25, img, 0.75, 0)
        pts = np.array([[x_of(v), y_of(m)] for v, m in zip(logs, mean)], np.int32)[:, None]
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        for p in pts[:, 0]:
            cv2.circle(img, (int(p[0]), int(p[1])), 3, colour, -1, cv2.LINE_AA)
    title = (f"PAT labelled-fraction study on {record['dataset']}: test Dice vs fraction k of {record['labelled_pool']} labelled frames, "
             f"mean +- std over {record['subsets']} subsets, fine-tuning "
             + (f"{record['epochs']} epochs" if record["epochs"] else f"{record['total_steps']} steps"))
    legend = [(ARM_NAMES[a], ARM_COLOURS[a]) for a in arms]
    return visualize.compose([img], [title], legend=legend, min_side=height)
