"""What every method's run shares: resolving dataset-dependent config values, writing
``config.json``, and writing the final ``eval/summary.json`` with ``stage_seconds``."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from jaxsurg.config import resolve_stage
from jaxsurg.data import datasets
from jaxsurg.train import stage
from jaxsurg.train.writers import write_json


def resolve_config(config: ml_collections.ConfigDict, num_train_examples: int) -> ml_collections.ConfigDict:
    """Fills the values that depend on the data: ``resize`` (the dataset's default when
    unset) and the main stage's steps (``jaxsurg.config.resolve_stage`` with one epoch of
    ``num_train_examples``). Returns a copy."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.resize is None and datasets.get_spec(c.dataset).default_resize is not None:
        with c.ignore_type():
            c.resize = datasets.get_spec(c.dataset).default_resize
    resolve_stage(c, num_train_examples)
    return c


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to ``WORKDIR/config.json`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict(), default=list)


def finish(summary: dict[str, Any], seconds: dict[str, float], workdir: str) -> dict[str, Any]:
    """Adds ``stage_seconds`` (each stage's wall-clock seconds) to ``summary``, rewrites
    ``WORKDIR/eval/summary.json`` on process 0 (then a barrier) and returns it."""
    summary["stage_seconds"] = stage.rounded(seconds)
    path = os.path.join(workdir, "eval", "summary.json")
    stage.on_host0(lambda: write_json(path, summary), "summary written")
    return summary
