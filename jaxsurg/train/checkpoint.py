"""Orbax checkpointing of a stage's train state: interval, number kept, resume from latest.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never looks like a finished checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str, stage: str) -> str:
    """``WORKDIR/<stage>/checkpoints`` as an absolute path (orbax needs one)."""
    return os.path.abspath(os.path.join(workdir, stage, "checkpoints"))


def make_manager(workdir: str, stage: str, *, every: int, keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager saving every ``every`` steps and keeping the ``keep`` latest.

    Raises:
      ValueError: if ``every`` or ``keep`` is not positive.
    """
    if every <= 0 or keep <= 0:
        raise ValueError(f"checkpoint_every ({every}) and keep_checkpoints ({keep}) must be positive")
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep, create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir, stage), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> tuple[Any, int]:
    """Restores the latest checkpoint into the structure and shardings of ``state``.

    Returns:
      (state, step): the restored state and its step, or ``(state, 0)`` unchanged when the
      directory holds no checkpoint yet.
    """
    step = manager.latest_step()
    if step is None:
        return state, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return restored, int(step)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if the interval says so (or ``force``); True if saved."""
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)
