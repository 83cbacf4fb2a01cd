"""The effect of pretraining length: downstream Dice against the pretraining step whose
backbone the fine-tuning read, one line per head, with the No-SSL baseline as a band.

    python -m jaxsurg.methods.laparoflow.pretraining_curve --root=runs/length

``ROOT`` is a ``python -m jaxsurg.sweep`` root (README, "Laparoflow-SSL"): Laparoflow-SSL
cells over ``pretrain.use_step`` × ``head`` × ``seed`` reading one pretraining, and,
optionally, No-SSL cells (``:baseline=nossl``) trained on the same frames. Every finished
cell under ``ROOT/cells`` is read; writes ``ROOT/curve.json`` and ``ROOT/curve.png``.

A point is the mean ± sample std (ddof 1) over the seeds of one (head, pretraining step):
each run's figure is its mean over its test frames. The figure is the Dice of the
dataset's first foreground class (Instrument Dice on the binary task) and, beside it, the
mean Dice and the fine-tuning's steps (to the validation plateau where ``val_frames`` > 0).

Cells that differ in anything but the seed, the step read, the head and the baseline (e.g.
another dataset, label count or plateau setting) are refused with the key that differs,
not averaged: a curve mixes nothing it does not say. Source of the measurement: the
project's issue 18, after Moens et al. 2024, who pretrain for 1,000,000 batches.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from jaxsurg import visualize
from jaxsurg.progress import say
from jaxsurg.train import stage
from jaxsurg.train.writers import write_json

# Keys a curve's cells may differ in (beside those that change no result, stage.NOT_RESULTS).
VARYING = ("seed", "pretrain.use_step", "head", "baseline", "stages_from")
# No SSL reads no pretraining: its pretrain block is not compared with the SSL cells'.
NOSSL_IGNORES = "pretrain."
SUMMARY = os.path.join("eval", "summary.json")


def _read(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_cells(root: str) -> list[dict[str, Any]]:
    """The finished cells under ``root/cells``: per cell its name, flat config
    (``config.json``) and summary (``eval/summary.json``); unfinished cells are named on the
    console and left out.

    Raises:
      ValueError: ``root/cells`` is missing or holds no finished Laparoflow cell.
    """
    folder = os.path.join(root, "cells")
    if not os.path.isdir(folder):
        raise ValueError(f"--root={root!r}: no cells/ folder there (not a jaxsurg.sweep root)")
    cells, unfinished = [], []
    for name in sorted(os.listdir(folder)):
        workdir = os.path.join(folder, name)
        if not os.path.exists(os.path.join(workdir, SUMMARY)):
            unfinished.append(name)
            continue
        config = stage._flat(_read(os.path.join(workdir, "config.json")))  # pylint: disable=protected-access
        if config.get("method") != "laparoflow":
            raise ValueError(f"{workdir}: a {config.get('method')!r} run, not Laparoflow-SSL")
        cells.append({"cell": name, "config": config, "summary": _read(os.path.join(workdir, SUMMARY))})
    if unfinished:
        say(f"pretraining_curve: {len(unfinished)} unfinished cell(s) left out: {', '.join(unfinished)}")
    if not cells:
        raise ValueError(f"--root={root!r}: no finished cell under {folder}")
    return cells


def check_comparable(cells: Sequence[dict[str, Any]]) -> None:
    """Refuses cells that differ in a result-changing setting other than ``VARYING`` (No-SSL
    cells are not compared on the ``pretrain`` block, which they do not read).

    Raises:
      ValueError: naming the key, the two values and the two cells.
    """

    def comparable(cell: dict[str, Any], skip_pretrain: bool) -> dict[str, Any]:
        return {k: v for k, v in cell["config"].items()
                if k not in VARYING and not stage.changes_no_result(k) and not (skip_pretrain and k.startswith(NOSSL_IGNORES))}

    first = cells[0]
    for cell in cells[1:]:
        either = cell["config"].get("baseline") == "nossl" or first["config"].get("baseline") == "nossl"
        a, b = comparable(first, either), comparable(cell, either)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                raise ValueError(
                    f"cells {first['cell']!r} and {cell['cell']!r} differ in {key} ({a.get(key)!r} vs {b.get(key)!r}): "
                    f"a curve compares only cells that differ in {', '.join(VARYING)}"
                )


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


def curve(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The curve record (``curve.json``): ``figure`` (the summary figure on the y axis),
    ``lines`` {head: [{"pretrain_step", "seeds", figure stats, "dice", "finetune_steps"}, ...]
    by step}, ``nossl`` (the same stats, or None) and ``cells`` (each run's figures)."""
    check_comparable(cells)
    classes = [c for c in cells[0]["summary"].get("class_names", []) if c != "background"]
    figure = f"dice/{classes[0]}" if classes else "dice"

    def figures(summary: dict[str, Any]) -> dict[str, float | None]:
        value = summary["per_class"][classes[0]]["dice"] if classes else summary["dice_mean"]
        return {figure: value, "dice": summary["dice_mean"], "finetune_steps": (summary.get("finetune") or {}).get("steps")}

    runs = []
    for cell in cells:
        s = cell["summary"]
        nossl = cell["config"].get("baseline") == "nossl"
        runs.append({"cell": cell["cell"], "seed": cell["config"]["seed"], "head": None if nossl else s.get("head"),
                     "pretrain_step": None if nossl else s.get("pretrain_step"), "nossl": nossl, **figures(s)})
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["head"], r["pretrain_step"]), []).append(r)

    def point(members: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"seeds": sorted(m["seed"] for m in members)}
        for key in (figure, "dice", "finetune_steps"):
            values = [m[key] for m in members if m[key] is not None]
            out[key] = _stats(values) if values else None
        return out

    lines: dict[str, list[dict[str, Any]]] = {}
    for (head, step), members in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
        if head is not None:
            lines.setdefault(head, []).append({"pretrain_step": step, **point(members)})
    baseline = groups.get((None, None))
    return {"figure": figure, "lines": lines, "nossl": point(baseline) if baseline else None, "cells": runs,
            "std": "sample standard deviation (ddof 1) over seeds; each run's figure is its mean over its test frames"}


HEAD_COLOURS = {"side_tune": (80, 170, 255), "linear_probe": (255, 170, 60)}


def curve_figure(record: dict[str, Any], *, width: int = 720, height: int = 400) -> np.ndarray:
    """``curve.png``: the figure (0 … 1) against the pretraining step, one line per head
    with ± std whiskers, No SSL as a dashed line in its ± std band. Returns uint8 RGB."""
    left, right, top, bottom = 44, 16, 12, 40
    pw, ph = width - left - right, height - top - bottom
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.38
    img, y_of = visualize.score_axes(width, height, (left, right, top, bottom))
    steps = [p["pretrain_step"] for line in record["lines"].values() for p in line] or [0]
    x_max = max(max(steps), 1)

    def x_of(step: float) -> int:
        return int(round(left + step / x_max * (pw - 1)))
    for s in sorted(set(steps)):
        x = min(x_of(s) - 10, width - 8 * len(str(s)) - 4)  # the last label stays inside the picture
        cv2.putText(img, str(s), (x, top + ph + 16), font, scale, visualize.TEXT_COLOUR, 1, cv2.LINE_AA)
    figure, legend = record["figure"], []
    base = record.get("nossl") and record["nossl"].get(figure)
    if base:
        std = base["std"] or 0.0
        band = img.copy()
        cv2.rectangle(band, (left, y_of(base["mean"] + std)), (left + pw - 1, y_of(base["mean"] - std)), (90, 90, 90), -1)
        img = cv2.addWeighted(band, 0.5, img, 0.5, 0)
        for x in range(left, left + pw - 1, 12):
            cv2.line(img, (x, y_of(base["mean"])), (min(x + 6, left + pw - 1), y_of(base["mean"])), (220, 220, 220), 1)
        legend.append(("No SSL (+- std)", (220, 220, 220)))
    for i, (head, line) in enumerate(record["lines"].items()):
        colour = HEAD_COLOURS.get(head, visualize.class_colour(i + 1))
        points = [(x_of(p["pretrain_step"]), y_of(p[figure]["mean"]), p[figure]) for p in line if p.get(figure)]
        for (x0, y0, _), (x1, y1, _) in zip(points, points[1:]):
            cv2.line(img, (x0, y0), (x1, y1), colour, 2, cv2.LINE_AA)
        for x, y, f in points:
            if f["std"] is not None:
                cv2.line(img, (x, y_of(f["mean"] - f["std"])), (x, y_of(f["mean"] + f["std"])), colour, 1)
            cv2.circle(img, (x, y), 4, colour, -1, cv2.LINE_AA)
        legend.append((head, colour))
    title = f"Laparoflow-SSL: test {figure.replace('dice/', 'Dice ')} against pretraining steps, mean +- std over seeds"
    return visualize.compose([img], [title], legend=legend, min_side=height)


def write_curve(root: str) -> dict[str, Any]:
    """Reads ``root``'s finished cells and writes ``curve.json`` and ``curve.png`` there;
    returns the record (see ``curve``). Raises ValueError as ``read_cells`` and
    ``check_comparable``."""
    record = {"root": os.path.abspath(root), **curve(read_cells(root))}
    write_json(os.path.join(root, "curve.json"), record)
    cv2.imwrite(os.path.join(root, "curve.png"), curve_figure(record)[..., ::-1])
    return record


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a jaxsurg.sweep root of Laparoflow-SSL (and No-SSL) cells")
    args = p.parse_args(argv)
    record = write_curve(args.root)
    figure = record["figure"]
    for head, line in record["lines"].items():
        say(f"{head}: " + ", ".join(f"{p['pretrain_step']} steps {p[figure]['mean']:.3f} (n={p[figure]['n']})" for p in line if p.get(figure)))
    if record["nossl"] and record["nossl"].get(figure):
        say(f"No SSL: {record['nossl'][figure]['mean']:.3f} (n={record['nossl'][figure]['n']})")
    say(f"pretraining_curve: {os.path.join(args.root, 'curve.json')} and curve.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
