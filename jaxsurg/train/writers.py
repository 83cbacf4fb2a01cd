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


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (a ``.tmp`` file, then a rename), so a
    reader never sees a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, **dump_kwargs)
    os.replace(tmp, path)


class MetricWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors the scalars
    to TensorBoard under ``WORKDIR/tensorboard/<stage>``. Only process 0 writes.

    Each record holds ``step``, ``stage`` and the scalars given (loss terms,
    ``learning_rate``, ``examples_per_sec``).
    """

    def __init__(self, workdir: str, stage: str):
        self.stage = stage
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            from tensorboardX import SummaryWriter  # imported lazily: it is slow to import

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage))

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
