"""``python -m jaxsurg.sweep``: one config over a grid of settings, each cell its own run,
and the results tables.

    python -m jaxsurg.sweep --config=configs/unet11.py --root=/tmp/sweep_unet11 \\
        --grid seed 0 1 2 --grid fold 0 1 2 3 -- --config.dataset=endovis17 --config.data_dir=DIR

- ``--grid KEY V [V ...]`` (repeatable): a config key (``seed``, ``fold``,
  ``label_interval``, ``test_dataset``, any dotted ``--config.KEY``) and its values; a key
  written ``:NAME`` is an argument of the config file itself (``--grid :segment dual dl_only``
  runs ``--config=configs/dual_motion.py:segment=dual`` and ``...:segment=dl_only``).
  The cells are every combination, the last grid varying fastest.
- After ``--``: ``--config.KEY=VALUE`` overrides shared by every cell.
- Each cell runs ``python -m jaxsurg.main`` in ``ROOT/cells/<k=v,...>/`` (a subprocess, so a
  crash or out-of-memory of one cell leaves the others intact). A cell whose
  ``eval/summary.json`` exists is skipped; an interrupted one resumes (``--resume``); a
  cell folder made with other arguments (``cell.json``) is refused. A cell takes the
  finished stages of an earlier cell that agree on every setting those stages depend on
  (``--config.stages_from``; e.g. cells that differ only in ``test_dataset`` train once),
  among every cell of ``ROOT``, an earlier sweep's included.
- Every cell is checked (its config built, keys and values parsed) before the first runs.

Writes, in ``ROOT``: ``results.json`` (every cell's figures and each row's aggregate),
``results.md`` (mean ± sample std over the replicate keys, ``--over``, default seed and
fold; per class; the figures the method names in its ``SWEEP_FIGURES``, e.g. Dual MF's D_R
quality and Laparoflow-SSL's fine-tuning steps; then one line per cell) and ``results.png`` (Dice per row and class, ±
std bars). A row lists how many runs it averages; a failed or missing cell is named, never
averaged as if present. ``--report`` only rewrites these from the cells on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Sequence

import cv2
import numpy as np

from jaxsurg import cli, visualize
from jaxsurg.config import apply_overrides
from jaxsurg.progress import say
from jaxsurg.train.writers import write_json, write_text

REPLICATE_KEYS = ("seed", "fold")
CELL_RECORD = "cell.json"
SUMMARY = os.path.join("eval", "summary.json")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the sweep.

    Attributes:
      values: (key, value text) of each grid, in grid order (``:NAME`` for config-file args).
      spec: the ``--config`` value of this cell (file args of the grid appended).
      overrides: ``--config.KEY=VALUE`` arguments (shared ones first, then the grid's).
    """

    values: tuple[tuple[str, str], ...]
    spec: str
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        """Folder name: ``k=v`` pairs joined by ``,``; characters other than letters,
        digits and ``._=,:-`` become ``_`` (``resize=(64,128)`` → ``resize=_64,128_``)."""
        text = ",".join(f"{k}={v}" for k, v in self.values) or "default"
        return re.sub(r"[^A-Za-z0-9._=,:-]", "_", text)

    def args(self) -> list[str]:
        """The jaxsurg.main arguments without ``--workdir``."""
        return [f"--config={self.spec}", *self.overrides]

    def config(self):
        """The cell's config (before data-dependent resolution).

        Raises:
          KeyError / ValueError: an unknown key or a value that does not parse (the message
            names the cell).
        """
        try:
            config = cli.load_config(self.spec)
            return apply_overrides(config, dict(a[len("--config."):].split("=", 1) for a in self.overrides))
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise ValueError(f"sweep cell {self.name}: {e.args[0] if e.args else e}") from None


def make_cells(spec: str, shared: Sequence[str], grids: Sequence[Sequence[str]]) -> list[Cell]:
    """Every combination of the grids' values (last grid fastest).

    Args:
      spec: ``--config`` value. shared: ``--config.KEY=VALUE`` arguments of every cell.
      grids: each ``[KEY, V1, V2, ...]``.

    Raises:
      ValueError: a grid without values, a key given twice, a shared argument that is not
        ``--config.KEY=VALUE``, or a grid key also set in ``shared``.
    """
    for a in shared:
        if not re.match(r"^--config\.[\w.]+=", a):
            raise ValueError(f"shared argument {a!r} is not --config.KEY=VALUE")
    shared_keys = {a[len("--config."):].split("=", 1)[0] for a in shared}
    keys = [g[0] for g in grids]
    for g in grids:
        if len(g) < 2:
            raise ValueError(f"--grid {' '.join(g)}: give a key and at least one value")
    if len(set(keys)) != len(keys):
        raise ValueError(f"a grid key is given twice: {keys}")
    clash = sorted(shared_keys & {k for k in keys if not k.startswith(":")})
    if clash:
        raise ValueError(f"{clash} set both by --grid and after --")
    cells = []
    for combo in itertools.product(*[g[1:] for g in grids]):
        values = tuple(zip(keys, combo))
        file_args = ",".join(f"{k[1:]}={v}" for k, v in values if k.startswith(":"))
        cell_spec = spec if not file_args else f"{spec},{file_args}" if ":" in spec else f"{spec}:{file_args}"
        grid_args = tuple(f"--config.{k}={v}" for k, v in values if not k.startswith(":"))
        cells.append(Cell(values, cell_spec, tuple(shared) + grid_args))
    return cells


def _read(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cell_state(root: str, cell: Cell) -> str:
    """``"finished"``, ``"partial"`` (folder, no summary) or ``"new"``.

    Raises:
      ValueError: the cell's folder was made with other arguments (both lists given).
    """
    workdir = os.path.join(root, "cells", cell.name)
    record = os.path.join(workdir, CELL_RECORD)
    if not os.path.exists(record):
        return "partial" if os.path.isdir(workdir) else "new"
    theirs = _read(record)["args"]
    if theirs != cell.args():
        raise ValueError(
            f"sweep cell {workdir} was run with other arguments:\n  there: {theirs}\n  now:   {cell.args()}\n"
            "use another --root, or delete that cell's folder to run it again"
        )
    return "finished" if os.path.exists(os.path.join(workdir, SUMMARY)) else "partial"


def _recorded_cells(root: str) -> list[tuple[str, Cell]]:
    """(folder, cell) of every cell under ``ROOT/cells`` with a record and a config.json
    (this grid's or an earlier sweep's into the same root), in name order."""
    out = []
    base = os.path.join(root, "cells")
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        workdir = os.path.join(base, name)
        record = os.path.join(workdir, CELL_RECORD)
        if os.path.exists(record) and os.path.exists(os.path.join(workdir, "config.json")):
            args = _read(record)["args"]
            values = tuple(_read(record).get("values", {}).items())
            out.append((workdir, Cell(values, args[0][len("--config="):], tuple(args[1:]))))
    return out


def method_stages(config) -> tuple[Any, ...]:
    """The ``StageSpec`` s a run of ``config`` compares when it takes stages: its method's
    ``stages_for(config)`` where the method has one (Dual MF: the arm's own stages), else
    its ``STAGES``."""
    module = importlib.import_module(cli.METHODS[config.method])
    return tuple(module.stages_for(config)) if hasattr(module, "stages_for") else tuple(module.STAGES)


def shared_stages_source(root: str, cell: Cell) -> str:
    """The folder of the cell under ``ROOT/cells`` whose stages this cell can take most of
    (``""`` if none): equal ``DATA_KEYS`` and the longest run of leading stages that the
    other cell runs too, with equal settings (``stage.stage_differences`` on the unresolved
    configs; ``take_stages_from`` checks the resolved ones again when it takes them)."""
    from jaxsurg.train import stage  # pylint: disable=g-import-not-at-top

    ours = cell.config()
    if ours.get("stages_from"):
        return ""
    stages = method_stages(ours)
    flat = stage._normalised(ours)  # pylint: disable=protected-access
    best, best_count = "", 0
    for workdir, other in _recorded_cells(root):
        if other.name == cell.name:
            continue
        try:
            theirs = other.config()
        except ValueError:  # a cell of an older config file: not a source
            continue
        if theirs.method != ours.method:
            continue
        count, theirs_run = 0, {spec.name for spec in method_stages(theirs)}
        for spec, differ in stage.stage_differences(stage._normalised(theirs), flat, stages):  # pylint: disable=protected-access
            if differ or spec.name not in theirs_run:
                break
            count += 1
        if count > best_count:
            best, best_count = workdir, count
    return best


def run_cell(root: str, cell: Cell, state: str) -> int:
    """Runs one cell as a ``jaxsurg.main`` subprocess; returns its exit status."""
    workdir = os.path.join(root, "cells", cell.name)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, CELL_RECORD), {"args": cell.args(), "values": dict(cell.values)})
    command = [sys.executable, "-m", "jaxsurg.main", *cell.args(), f"--workdir={workdir}"]
    source = shared_stages_source(root, cell)
    if source:
        command.append(f"--config.stages_from={source}")
    if state == "partial":
        command.append("--resume")
    return subprocess.call(command)


# ----------------------------------------------------------------------------- results


def method_figures(cell: Cell) -> dict[str, tuple[str, ...]]:
    """The figures beyond Dice that ``cell``'s method names for the tables: its module's
    ``SWEEP_FIGURES``, ``{column: path of keys in eval/summary.json}`` (e.g. Dual MF's D_R
    quality, Laparoflow-SSL's fine-tuning steps); empty where it names none."""
    module = importlib.import_module(cli.METHODS[cell.config().method])
    return dict(getattr(module, "SWEEP_FIGURES", {}))


def cell_figures(summary: dict[str, Any], extra: dict[str, Sequence[str]] | None = None) -> dict[str, float]:
    """The figures of one run: ``dice``, ``iou`` (mean over its test frames), ``dice/<class>``,
    ``iou/<class>`` (classes present in some test frame), ``keypoints/<score>`` and each of
    ``extra`` (``{column: path of keys}``) that the summary holds as a number."""
    out = {"dice": float(summary["dice_mean"]), "iou": float(summary["iou_mean"])}
    for column, path in (extra or {}).items():
        value = _lookup(summary, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[column] = float(value)
    for name, c in summary.get("per_class", {}).items():
        if c.get("dice") is not None:
            out[f"dice/{name}"], out[f"iou/{name}"] = float(c["dice"]), float(c["iou"])
    for k, v in (summary.get("keypoints") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"keypoints/{k}"] = float(v)
    return out


def _lookup(summary: dict[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (keys) in ``summary``; None where a key is missing."""
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def count_figures(summary: dict[str, Any], extra: dict[str, Sequence[str]]) -> set[str]:
    """The columns of ``extra`` that ``summary`` holds as integers (counts: steps, frames),
    which the tables print as whole numbers."""
    counts = set()
    for column, path in extra.items():
        value = _lookup(summary, path)
        if isinstance(value, int) and not isinstance(value, bool):
            counts.add(column)
    return counts


def aggregate(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row, per figure: ``mean``, ``std`` (sample, ddof 1; None for one run) and ``n``
    (the runs holding that figure)."""
    out = {}
    for row, runs in rows.items():
        figures = {}
        for key in dict.fromkeys(k for r in runs for k in r):
            values = np.array([r[key] for r in runs if key in r], np.float64)
            figures[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None, "n": int(len(values))}
        out[row] = figures
    return out


def _number(v: float, whole: bool = False) -> str:
    """Three decimals; whole units for a count (``whole``: steps, not scores)."""
    return f"{v:.0f}" if whole else f"{v:.3f}"


def _fmt(f: dict[str, Any] | None, whole: bool = False) -> str:
    if f is None:
        return "—"
    return _number(f["mean"], whole) + (f" ± {_number(f['std'], whole)}" if f["std"] is not None else "")


def write_results(root: str, cells: Sequence[Cell], over: Sequence[str], command: str) -> dict[str, Any]:
    """Reads every cell's summary and writes ``results.json``, ``results.md`` and
    ``results.png`` in ``root``; returns the results record."""
    rows: dict[str, list[dict[str, float]]] = {}
    per_cell, missing, class_names, header, extra = [], [], [], {}, {}
    uncounted = set()  # method figures that some cell holds as a non-integer (not counts)
    for cell in cells:
        row = ",".join(f"{k}={v}" for k, v in cell.values if k not in over) or "all"
        path = os.path.join(root, "cells", cell.name, SUMMARY)
        if not os.path.exists(path):
            missing.append(cell.name)
            rows.setdefault(row, [])
            continue
        summary = _read(path)
        for k in ("method", "dataset", "task"):  # a value that varies over the cells lists them all
            header[k] = " | ".join(dict.fromkeys(filter(None, (*(header.get(k) or "").split(" | "), str(summary.get(k))))))
        class_names = class_names or [c for c in summary.get("class_names", []) if c != "background"]
        named = method_figures(cell)
        figures = cell_figures(summary, named)
        extra.update(dict.fromkeys(k for k in figures if k in named))
        uncounted |= {k for k in figures if k in named} - count_figures(summary, named)
        rows.setdefault(row, []).append(figures)
        per_cell.append({"cell": cell.name, "row": row, "values": dict(cell.values), "figures": figures, "num_frames": summary.get("num_frames"),
                         "frame_std": {"dice": summary.get("dice_std"), "iou": summary.get("iou_std")}})
    record = {
        "command": command, **header, "replicate_keys": list(over), "rows": aggregate(rows), "cells": per_cell, "missing": missing,
        "method_figures": list(extra), "count_figures": [k for k in extra if k not in uncounted],
        "std": "sample standard deviation (ddof 1) over the runs of a row; each run's figure is its mean over its test frames",
    }
    write_json(os.path.join(root, "results.json"), record)
    write_text(os.path.join(root, "results.md"), results_markdown(record, class_names))
    cv2.imwrite(os.path.join(root, "results.png"), results_figure(record, class_names)[..., ::-1])
    return record


def results_markdown(record: dict[str, Any], class_names: Sequence[str]) -> str:
    """``results.md``: the row table (mean ± std over the replicate keys), the cell table,
    the missing cells."""
    keypoint_keys = sorted({k for r in record["rows"].values() for k in r if k.startswith("keypoints/")})
    columns = ["dice", "iou"] + [f"dice/{c}" for c in class_names] + keypoint_keys + list(record.get("method_figures", ()))
    titles = [c if c in record.get("method_figures", ()) else c.replace("dice/", "Dice ").replace("dice", "Dice").replace("iou", "IoU")
              for c in columns]
    over = ", ".join(record["replicate_keys"]) or "nothing"
    counts = set(record.get("count_figures", ()))
    lines = [
        f"# {record.get('method')} on {record.get('dataset')} ({record.get('task')})", "",
        f"`{record['command']}`", "",
        f"Mean ± sample std over {over} (runs = how many runs a row averages). Dice and IoU: each run's mean over its test frames.", "",
        "| row | runs | " + " | ".join(titles) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for row, figures in record["rows"].items():
        n = max((f["n"] for f in figures.values()), default=0)
        lines.append(f"| {row} | {n} | " + " | ".join(_fmt(figures.get(c), c in counts) for c in columns) + " |")
    lines += ["", "Each cell (one run): Dice and IoU as mean ± std over its test frames.", "",
              "| cell | test frames | " + " | ".join(titles) + " |",
              "|---" * (len(columns) + 2) + "|"]
    for c in record["cells"]:
        shown = []
        for k in columns:
            text = _number(c["figures"][k], k in counts) if k in c["figures"] else "—"
            if c["frame_std"].get(k) is not None:
                text += f" ± {c['frame_std'][k]:.3f}"
            shown.append(text)
        lines.append(f"| {c['cell']} | {c['num_frames']} | " + " | ".join(shown) + " |")
    if record["missing"]:
        lines += ["", f"**Missing (not finished, not averaged): {', '.join(record['missing'])}**"]
    return "\n".join(lines) + "\n"


def results_figure(record: dict[str, Any], class_names: Sequence[str], *, width: int = 720, height: int = 360) -> np.ndarray:
    """``results.png``: per row a group of bars, mean Dice (0 … 1) then each class's, with
    ± std whiskers. Returns uint8 RGB (H, W, 3)."""
    keys = ["dice"] + [f"dice/{c}" for c in class_names]
    names = ["mean Dice"] + list(class_names)
    colours = [(230, 230, 230)] + [visualize.class_colour(k + 1) for k in range(len(class_names))]
    rows = list(record["rows"])
    left, right, top, bottom = 44, 12, 12, 46
    pw, ph = width - left - right, height - top - bottom
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.38
    img, y_of = visualize.score_axes(width, height, (left, right, top, bottom))
    group = pw / max(len(rows), 1)
    bar = max(2, int(group * 0.8 / len(keys)))
    for g, row in enumerate(rows):
        x0 = int(left + g * group + group * 0.1)
        for b, (key, colour) in enumerate(zip(keys, colours)):
            f = record["rows"][row].get(key)
            if f is None:
                continue
            x = x0 + b * bar
            cv2.rectangle(img, (x, y_of(f["mean"])), (x + bar - 2, y_of(0)), tuple(int(c) for c in colour), -1)
            if f["std"] is not None:
                xc = x + (bar - 2) // 2
                cv2.line(img, (xc, y_of(f["mean"] - f["std"])), (xc, y_of(f["mean"] + f["std"])), (255, 80, 80), 1)
        label = row if len(row) * 7 < group else row[: max(3, int(group / 7) - 1)] + "…"
        cv2.putText(img, visualize._ascii(label), (x0, top + ph + 16), font, scale, visualize.TEXT_COLOUR, 1, cv2.LINE_AA)  # pylint: disable=protected-access
    title = (f"{record.get('method')} on {record.get('dataset')} ({record.get('task')}): test Dice per row, "
             f"mean +- std over {', '.join(record['replicate_keys']) or 'nothing'}")
    return visualize.compose([img], [title], legend=list(zip(names, colours)), min_side=height)


# ----------------------------------------------------------------------------- command line


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line arguments; ``shared`` holds what follows ``--``."""
    argv = list(argv)
    shared = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m jaxsurg.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file or packaged name, with its :args (as jaxsurg.main)")
    p.add_argument("--root", required=True, help="folder of the sweep: cells/, results.json/md/png")
    p.add_argument("--grid", nargs="+", action="append", default=[], metavar=("KEY", "V"), help="a config key and its values (repeatable)")
    p.add_argument("--over", nargs="*", default=list(REPLICATE_KEYS), help="grid keys averaged over in a row (default: seed fold)")
    p.add_argument("--report", action="store_true", help="only rewrite the results from the cells on disk")
    p.add_argument("--dry_run", action="store_true", help="list the cells and what each would do, run nothing")
    p.add_argument("--keep_going", action="store_true", help="a failed cell does not stop the sweep (it is listed as missing)")
    args = p.parse_args(argv)
    args.shared = shared
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the sweep; returns the exit status (1 when a cell failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    try:
        spec = f"{os.path.abspath(cli.config_path(args.config.partition(':')[0]))}{':' if ':' in args.config else ''}{args.config.partition(':')[2]}"
        cells = make_cells(spec, args.shared, args.grid)
        for cell in cells:  # every cell's config, before anything runs
            cell.config()
        states = [cell_state(args.root, c) for c in cells]
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"jaxsurg.sweep: {e}") from None
    command = "python -m jaxsurg.sweep " + shlex.join(a for a in argv if a != "--report")
    failed = []
    for i, (cell, state) in enumerate(zip(cells, states)):
        line = f"sweep: cell {i + 1}/{len(cells)} {cell.name}"
        if args.report or state == "finished":
            say(f"{line}: {'finished' if state == 'finished' else 'not finished'}")
            continue
        if args.dry_run:
            say(f"{line}: would {'resume' if state == 'partial' else 'run'}: jaxsurg.main {' '.join(cell.args())}")
            continue
        say(f"{line}: {'resuming' if state == 'partial' else 'running'}")
        status = run_cell(args.root, cell, state)
        if status:
            failed.append(cell.name)
            say(f"{line}: FAILED (exit status {status}); its folder stays and resumes on the next call")
            if not args.keep_going:
                break
    if args.dry_run:
        return 0
    record = write_results(args.root, cells, [k for k in args.over if k in {g[0] for g in args.grid}], command)
    say(f"sweep: results in {os.path.join(args.root, 'results.md')} (.json, .png); {len(record['cells'])} of {len(cells)} cells finished")
    if record["missing"]:
        say(f"sweep: missing cells (not in any mean): {', '.join(record['missing'])}")
    return 1 if failed else 0


def run() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
