"""The training loop every stage shares: resume, steps, logging, checkpointing, progress.

A stage supplies its jitted ``train_step(state, batch) -> (state, metrics)``
(``jaxsurg.train.step``) and a function giving the batch stream from a step on; the loop
restores the latest checkpoint of the stage, runs to ``total_steps``, logs to
``metrics.jsonl`` and TensorBoard, shows a progress bar with ETA, saves every
``checkpoint_every`` steps and at the end, and stops with ``FloatingPointError`` on a
non-finite metric before anything non-finite is saved.
Because batch ``s`` depends only on the config and ``s``, a run killed and started again
ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxsurg import progress
from jaxsurg.train import checkpoint
from jaxsurg.train.state import TrainState
from jaxsurg.train.writers import MetricWriter

TrainStep = Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log and save.

    Attributes:
      stage: stage name; checkpoints go to ``WORKDIR/<stage>/checkpoints``.
      total_steps: optimiser steps of the stage.
      log_every: steps between metric records (and non-finite checks).
      checkpoint_every: steps between checkpoints (a last one is always saved at the end).
      keep_checkpoints: how many recent checkpoints orbax keeps.
      examples_per_step: global batch size, for ``examples_per_sec``.
    """

    stage: str
    total_steps: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    examples_per_step: int


def _check_finite(records: list[dict[str, np.ndarray]], first_step: int, stage: str, last_saved: int) -> None:
    for i, record in enumerate(records):
        bad = {k: float(v) for k, v in record.items() if not np.all(np.isfinite(v))}
        if bad:
            raise FloatingPointError(
                f"stage '{stage}': non-finite {bad} at step {first_step + i}; the run stopped "
                f"without saving it (last checkpoint: step {last_saved}). Lower "
                "config.learning_rate or check the input data."
            )


def learning_rates(state: Any, step: int) -> dict[str, float]:
    """The learning rates to log at ``step``: ``learning_rate`` for a ``TrainState`` with a
    schedule, ``learning_rate/<name>`` for each of a dict of named states."""
    if isinstance(state, TrainState):
        lr = state.learning_rate(step)
        return {} if lr is None else {"learning_rate": lr}
    if isinstance(state, Mapping):
        out = {}
        for name, sub in state.items():
            out.update({k.replace("learning_rate", f"learning_rate/{name}"): v for k, v in learning_rates(sub, step).items()})
        return out
    return {}


def stage_line(cfg: LoopConfig, start: int) -> str:
    """The message (without the ``jaxsurg: `` prefix) ``train`` prints when a stage begins,
    given the step of its restored checkpoint (0 for none), e.g.
    ``stage 'train': 300 steps of batch 4, starting at step 0``,
    ``stage 'train': 300 steps of batch 4, resuming from the checkpoint at step 200`` or
    ``stage 'train': complete (300 steps), final checkpoint restored``."""
    head = f"stage '{cfg.stage}':"
    if start == cfg.total_steps:
        return f"{head} complete ({cfg.total_steps} steps), final checkpoint restored"
    if start > cfg.total_steps:
        return (
            f"{head} complete ({cfg.total_steps} steps asked; its latest checkpoint, at step {start}, "
            "restored and not trained further)"
        )
    plan = f"{head} {cfg.total_steps} steps of batch {cfg.examples_per_step}"
    if start == 0:
        return f"{plan}, starting at step 0"
    return f"{plan}, resuming from the checkpoint at step {start}"


def train(
    cfg: LoopConfig,
    workdir: str,
    state: Any,
    train_step: TrainStep,
    batches_from: Callable[[int], Iterator[dict[str, jax.Array]]],
) -> Any:
    """Runs (or resumes) one stage to ``cfg.total_steps`` and returns the final state.

    On process 0 it first prints one line to standard output saying whether the stage
    starts fresh, resumes from a checkpoint or is already complete (``stage_line``), then
    shows a ``jaxsurg.progress`` bar on standard error (plain lines when that is not a
    terminal). Metric rows a killed run logged after its last checkpoint are dropped from
    ``metrics.jsonl`` before they are logged again (``MetricWriter``'s ``start``).

    Args:
      cfg: loop settings.
      workdir: the run's workdir.
      state: a freshly initialised ``TrainState`` or dict of them (gives the structure and
        shardings to restore into); the learning rates of their schedules are logged.
      train_step: jitted step; its metrics dict holds scalars (at least ``loss``).
      batches_from: ``batches_from(step)`` yields the global batches for steps
        ``step, step + 1, ...``.

    Returns:
      The state after ``cfg.total_steps`` steps (restored as is when already complete).

    Raises:
      FloatingPointError: on a non-finite metric; the offending state is not saved.
    """
    manager = checkpoint.make_manager(workdir, cfg.stage, every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
    state, start = checkpoint.restore_latest(manager, state)
    progress.say(stage_line(cfg, start))
    if start >= cfg.total_steps:
        manager.close()
        return state
    writer = MetricWriter(workdir, cfg.stage, start=start)
    batches = batches_from(start)
    pending: list[dict[str, jax.Array]] = []
    last_saved, window_start, window_time = start, start, time.perf_counter()
    bar = progress.bar(total=cfg.total_steps, initial=start, desc=cfg.stage, unit="step")
    try:
        for step in range(start, cfg.total_steps):
            state, metrics = train_step(state, next(batches))
            pending.append(metrics)
            done = step + 1
            save_now = done % cfg.checkpoint_every == 0 or done == cfg.total_steps
            if done % cfg.log_every == 0 or save_now:
                records = jax.device_get(pending)
                _check_finite(records, window_start + 1, cfg.stage, last_saved)
                elapsed = time.perf_counter() - window_time
                scalars = {k: float(np.mean([r[k] for r in records])) for k in records[0]}
                scalars["examples_per_sec"] = len(records) * cfg.examples_per_step / max(elapsed, 1e-9)
                scalars.update(learning_rates(state, step))
                writer.write(done, scalars)
                bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if not k.startswith("learning_rate")})
                pending, window_start, window_time = [], done, time.perf_counter()
            if save_now:
                checkpoint.save(manager, done, state, force=done == cfg.total_steps)
                last_saved = done
            bar.update(1)
    finally:
        bar.close()
        writer.close()
        manager.wait_until_finished()
        manager.close()
    return state
