"""A workdir knows what made it: ``WORKDIR/made_by.json`` records the config a run was
given (after ``--config.*`` overrides, before data-dependent resolution), the jaxsurg
version and the built dataset it read; a later run into the same workdir is compared with
that record before any expensive step.

A run whose config differs from the record in any leaf that can change a result (every
leaf but those ``stage.changes_no_result`` names: logging, checkpoint cadence, eval batch
size, overlays, a study's grid, ...) is refused with the keys that differ and the ways on:
a new ``--workdir``, or one of two explicit policies,

- ``overwrite``: the workdir's earlier outputs (stage folders, ``eval/``, metrics,
  TensorBoard events, ``config.json``, the record) are deleted and everything runs afresh;
- ``resume``: the stages whose own and upstream settings (``stage.DATA_KEYS`` and each
  ``StageSpec``'s keys, as ``config.stages_from`` compares them) are unchanged are kept;
  the first stage that differs and every later one are deleted and run again; ``eval/`` is
  always redone.

A changed dataset build (the same config reading changed files: the build's name holds a
digest of the files' content) is checked once the data is loaded (``check_data``): with
stages present it is refused unless the policy is ``overwrite``.

Only process 0 deletes and writes; every process takes the same decision from the same
files, then waits at a barrier.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from jaxsurg.progress import say
from jaxsurg.train import stage
from jaxsurg.train.writers import write_json

RECORD = "made_by.json"
POLICIES = ("refuse", "overwrite", "resume")
# What a run writes beside its stage folders.
OUTPUTS = ("eval", "metrics.jsonl", "tensorboard", "config.json")


class WorkdirConflict(ValueError):
    """The workdir holds outputs of another config or another dataset build."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxsurg")
    except metadata.PackageNotFoundError:
        return "unknown"


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_writable(workdir: str) -> None:
    """Refuses a workdir that is a file, or that cannot be created or written.

    Raises:
      NotADirectoryError: ``workdir`` (or a folder above it) is a file.
      PermissionError: ``workdir`` cannot be created or written (the message names it).
    """
    path = os.path.abspath(os.path.expanduser(workdir))
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise NotADirectoryError(f"--workdir={workdir!r}: {probe} is a file, not a folder; give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"--workdir={workdir!r}: {probe} is not writable; give a folder you can write to")


def _present(workdir: str, stages: Sequence[stage.StageSpec]) -> list[str]:
    names = [s.name for s in stages] + list(OUTPUTS)
    return [n for n in names if os.path.exists(os.path.join(workdir, n))]


def _differences(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    def results(flat: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flat.items() if not stage.changes_no_result(k)}

    return stage._differences(results(theirs), results(ours))  # pylint: disable=protected-access


def _delete(workdir: str, names: Sequence[str]) -> None:
    if jax.process_index() != 0:
        return
    for name in names:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _listed(differ: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())


def _kept_stages(theirs: dict[str, Any], ours: dict[str, Any], stages: Sequence[stage.StageSpec]) -> list[str]:
    """The leading stages whose settings are unchanged (``stage.stage_differences``)."""
    kept = []
    for spec, differ in stage.stage_differences(theirs, ours, stages):
        if differ:
            break
        kept.append(spec.name)
    return kept


def claim(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[stage.StageSpec], policy: str = "refuse") -> None:
    """Checks ``workdir`` against ``config`` before a run starts, applies ``policy`` and
    writes the record (``WORKDIR/made_by.json``).

    Args:
      config: the config as given (overrides applied, not yet resolved against the data).
      workdir: the run's folder (created when missing).
      stages: the method's stages in order (``<method>.STAGES``).
      policy: ``"refuse"`` (default), ``"overwrite"`` or ``"resume"`` (module docstring).

    Raises:
      WorkdirConflict: the workdir holds outputs made with other result-changing settings,
        or outputs without a record (an older jaxsurg or another program), and the policy
        is ``"refuse"``. The message lists each differing key with its two values and the
        ways on.
      NotADirectoryError, PermissionError: from ``check_writable``.
      ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"workdir policy {policy!r} is unknown; known: {POLICIES}")
    check_writable(workdir)
    ours = stage._normalised(config)  # pylint: disable=protected-access
    record_path = os.path.join(workdir, RECORD)
    present = _present(workdir, stages) if os.path.isdir(workdir) else []
    previous = _read_json(record_path) if os.path.exists(record_path) else None
    theirs = None if previous is None else previous["config"]
    ways = (
        "Ways on: a new --workdir; or --overwrite (delete this workdir's outputs and run afresh); "
        "or --resume (keep the stages the change leaves valid{kept}, redo the rest)"
    )
    if present and policy == "overwrite":
        say(f"--overwrite: deleting {', '.join(present)} in {workdir}")
        _delete(workdir, present + [RECORD])
    elif present and theirs is None:
        if policy == "refuse":
            raise WorkdirConflict(
                f"--workdir={workdir!r} holds outputs ({', '.join(present)}) but no {RECORD}: it was made by an older "
                f"jaxsurg or another program, so what made it is unknown. " + ways.format(kept=": all of them, unchecked")
            )
        say(f"--resume: {workdir} has no {RECORD}; its stages are kept unchecked")
    elif present:
        differ = _differences(theirs, ours)
        if differ:
            kept = _kept_stages(theirs, ours, stages)
            if policy == "refuse":
                said = f": here {', '.join(kept)}" if kept else ": here none"
                raise WorkdirConflict(
                    f"--workdir={workdir!r} was made with another config ({_listed(differ)}); its results would not be "
                    f"this config's. " + ways.format(kept=said)
                )
            redo = [n for n in present if n not in kept]
            say(f"--resume: keeping {', '.join(kept) or 'no stage'}; deleting {', '.join(redo)} (settings changed: {', '.join(differ)})")
            _delete(workdir, redo)
    record = {"jaxsurg_version": _version(), "config": ours}
    if previous is not None and policy != "overwrite" and previous.get("dataset_build") is not None:
        record["dataset_build"] = previous["dataset_build"]
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json(record_path, record)
    stage.barrier("workdir claimed")


def check_data(workdir: str, build: str, stages: Sequence[stage.StageSpec]) -> None:
    """Compares the dataset build a run reads (``pipeline.LoadedDataset.build``: builder,
    config name with the content digest of its files, version) with the one the workdir's
    stages were made from, then records it.

    Raises:
      WorkdirConflict: the workdir has stage outputs made from another build of the data
        (its files changed since); the message names both builds and the ways on.
    """
    record_path = os.path.join(workdir, RECORD)
    record = _read_json(record_path) if os.path.exists(record_path) else {"jaxsurg_version": _version()}
    made_from = record.get("dataset_build")
    trained = [s.name for s in stages if os.path.exists(os.path.join(workdir, s.name))]
    if made_from is not None and made_from != build and trained:
        raise WorkdirConflict(
            f"--workdir={workdir!r}: its stages ({', '.join(trained)}) were made from the dataset build {made_from!r}, "
            f"this run reads {build!r} (the data files changed since). Ways on: a new --workdir, or --overwrite"
        )
    record["dataset_build"] = build
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json(record_path, record)
    stage.barrier("dataset recorded")
