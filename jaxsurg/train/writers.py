"""Metric writers: ``WORKDIR/metrics.jsonl`` (the workdir contract) and TensorBoard events."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax


def _jsonable(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a ``.tmp`` file, then a rename), so a reader
    never sees a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically (``write_text``)."""
    write_text(path, json.dumps(obj, indent=2, **dump_kwargs))


def drop_rows_after(path: str, stage: str, step: int) -> int:
    """Removes from the ``metrics.jsonl`` at ``path`` the rows of ``stage`` whose step is
    greater than ``step``, keeping all other rows in their order; the file is rewritten
    atomically (``write_text``) and only when something changes.

    A torn last line (a kill in the middle of a write: no newline and not JSON) is dropped
    too; other lines that are not JSON objects are kept as they are.

    Returns:
      The number of lines dropped (0 also when the file does not exist).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return 0
    kept = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                continue  # torn write
            kept.append(line)
            continue
        if isinstance(row, dict) and row.get("stage") == stage and isinstance(row.get("step"), int) and row["step"] > step:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return 0
    write_text(path, "".join(kept))
    return len(lines) - len(kept)


class MetricWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors the scalars
    to TensorBoard under ``WORKDIR/tensorboard/<stage>``. Only process 0 writes.

    Each record holds ``step``, ``stage`` and the scalars given (loss terms,
    ``learning_rate``, ``examples_per_sec``).

    Resuming: given ``start`` (the step training resumes from, i.e. that of the restored
    checkpoint, 0 for a fresh stage), the writer first drops from ``metrics.jsonl`` the rows
    of this stage past ``start`` — those a killed run logged after its last checkpoint, which
    the resumed run logs again — so the file never holds two rows of one (stage, step).
    TensorBoard gets ``purge_step=start + 1``: TensorBoard hides the earlier events of
    steps after ``start`` (they stay in the old event files; readers other than TensorBoard
    may still see both). With ``start=None`` nothing is dropped or purged: plain appending.
    """

    def __init__(self, workdir: str, stage: str, start: int | None = None):
        self.stage = stage
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if start is not None:
                drop_rows_after(path, stage, int(start))
            self._jsonl = open(path, "a", encoding="utf-8")
            from tensorboardX import SummaryWriter  # imported lazily: it is slow to import

            purge = None if start is None else int(start) + 1
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage), purge_step=purge)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """Records ``scalars`` (floats or 0-d arrays) at ``step``."""
        if not self._active:
            return
        record = {"step": int(step), "stage": self.stage, **{k: _jsonable(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            v = _jsonable(v)
            if isinstance(v, (int, float)):
                self._tb.add_scalar(f"{self.stage}/{k}", v, int(step))

    def close(self) -> None:
        """Flushes and closes the files."""
        if self._active:
            self._jsonl.close()
            self._tb.close()
