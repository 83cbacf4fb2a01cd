"""Orbax checkpointing of a stage's train state: interval, number kept, resume from latest.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never looks like a finished checkpoint. ``WORKDIR/<stage>/checkpoint_format.json``
records ``FORMAT``, the layout of jaxsurg's train states; checkpoints of another format (or
none: written before it was recorded) are refused with a message, never half-restored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsurg.train.writers import write_json

# 2: train states carry their optimiser (TrainState.apply_gradients), every optimiser has a
# learning-rate schedule, and a stage may hold a dict of named train states.
FORMAT = 2
_FORMAT_FILE = "checkpoint_format.json"


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

    Raises:
      ValueError: the checkpoints are of another ``FORMAT``, or do not fit ``state`` (another
        model size or optimiser); the message names the directory and the ways on.
    """
    step = manager.latest_step()
    if step is None:
        return state, 0
    directory = str(manager.directory)
    check_format(directory, f"start a new --workdir (or delete {directory} to retrain the stage)")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{directory}: the checkpoint at step {step} does not fit this run's train state (another model "
            f"size, optimiser or config made it); start a new --workdir or delete {directory}. ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    return restored, int(step)


def check_format(directory: str, ways_on: str) -> None:
    """Raises ValueError naming ``directory`` and ``ways_on`` unless its checkpoints are of
    this jaxsurg's ``FORMAT``."""
    found = _read_format(directory)
    if found != FORMAT:
        raise ValueError(
            f"{directory}: checkpoints of jaxsurg checkpoint format {found or '1 (unrecorded)'}, this jaxsurg reads "
            f"format {FORMAT}; {ways_on}"
        )


def restore_final_variables(workdir: str, stage: str, total_steps: int, collections: tuple[str, ...] = ("params", "batch_stats")) -> dict[str, Any]:
    """The model variables of a finished stage, without its optimiser: the checkpoint at
    ``total_steps`` of ``WORKDIR/<stage>/checkpoints`` restored from its own metadata (no
    template of the train state is needed) onto this process's first device, whatever mesh
    or number of hosts saved it, its ``collections`` (those present and not empty) as host arrays.

    Returns:
      {"params": ..., ["batch_stats": ...]} of numpy arrays, the Linen variables of the
      stage's network.

    Raises:
      ValueError: no checkpoint there, the latest one short of ``total_steps`` (the run is not
        finished), or checkpoints of another ``FORMAT``; the message names the directory.
    """
    directory = checkpoint_dir(workdir, stage)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory} is missing: the {stage!r} stage's checkpoints (a study cell's are deleted after its evaluation; an unfinished run has none yet)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    manager = ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())
    try:
        step = manager.latest_step()
        if step is None or step < total_steps:
            raise ValueError(f"{directory}: the {stage!r} stage is at step {step or 0} of {total_steps}; finish the run first (its command again resumes it)")
        check_format(directory, "this run was made by another jaxsurg version; retrain it with this one")
        # Onto this process's first device, whatever mesh saved it (a pod's run predicts on a laptop).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), manager.item_metadata(step))
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    finally:
        manager.close()
    return {k: jax.tree.map(np.asarray, restored[k]) for k in collections if restored.get(k)}


def _format_path(directory: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(directory)), _FORMAT_FILE)


def _read_format(directory: str) -> int | None:
    try:
        with open(_format_path(directory), encoding="utf-8") as f:
            return int(json.load(f)["format"])
    except (OSError, ValueError, KeyError):
        return None


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if the interval says so (or ``force``); True if saved.
    The first save also records ``FORMAT`` beside the checkpoints (process 0)."""
    path = _format_path(str(manager.directory))
    if jax.process_index() == 0 and not os.path.exists(path):
        write_json(path, {"format": FORMAT})
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)
