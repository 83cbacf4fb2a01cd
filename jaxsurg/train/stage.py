"""A stage of a method: its config block, train step and batches, run by the shared loop;
timed into ``stage_seconds``; skipped when complete (the loop restores its final
checkpoint); restored from another run's finished stage; host-0 writes followed by a barrier.

A method lists its stages as ``StageSpec`` s (name and the config keys its outputs depend
on). ``take_stages_from`` reuses the finished stages of another run's workdir
(``--config.stages_from=DIR``): it refuses a source made with another method, dataset, data
folder, task, frame size, label interval or split, and takes each stage whose own and
upstream settings (the seed among them) match, in order, until the first that differs (that
one and every later stage are trained here). A stage seeded by a key of its own
(``StageSpec.seed_key``) can be shared by runs of several seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxsurg.config import STAGE_FIELDS
from jaxsurg.data import pipeline
from jaxsurg.progress import say
from jaxsurg.train import checkpoint, loop

# Settings every stage's outputs depend on: a source run that differs in one is refused. The
# run's seed is compared per stage (``StageSpec.seed_key``): the data split never depends on it.
DATA_KEYS = ("method", "dataset", "data_dir", "label_map", "task", "resize", "label_interval", "train_fraction", "fold")
RUN_SEED = "seed"
# Settings only the evaluation depends on: compared by the workdir's record (a run with
# another value is refused there, or with --resume keeps its stages and evaluates again) and
# by no stage, so that a cross-dataset evaluation reuses a finished run's stages.
EVAL_KEYS = ("test_dataset", "test_data_dir")
# The top-level keys of the main stage's block (``jaxsurg.config.STAGE_FIELDS``).
MAIN_STAGE = tuple(STAGE_FIELDS)
# Leaves that never change a result (compared nowhere).
NOT_RESULTS = frozenset({
    "log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size", "num_overlays", "data_threads",
    "pca_frames", "stages_from", "tfds_dir", "generate_batch", "variant", "study",
})
# Top-level blocks that never change a result: a study's grid says which runs exist, and each
# run (its own workdir, its own record) is compared on its own settings.
NOT_RESULT_BLOCKS = frozenset({"grid"})


def changes_no_result(key: str) -> bool:
    """Whether a flat config key (``"a.b.c"``) is compared nowhere: its leaf is in
    ``NOT_RESULTS`` or its top-level block in ``NOT_RESULT_BLOCKS``."""
    return key.rsplit(".", 1)[-1] in NOT_RESULTS or key.split(".", 1)[0] in NOT_RESULT_BLOCKS


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage's name (its folder under the workdir) and the config keys, beyond
    ``DATA_KEYS``, its outputs depend on: top-level keys or block names (all of a block's
    leaves), ``MAIN_STAGE`` for the main stage's top-level block.

    ``same``: values of a key that make the same stage, as ``((key, ((value, as), ...)),
    ...)``: compared as ``as`` for this stage only (Dual MF★'s arm trains Dual MF's U-Net11
    in its ``segment`` stage, so ``segment='dual_convlstm'`` is ``'dual'`` there).

    ``seed_key``: the key that seeds the stage: the run's ``seed`` (default; it then counts for
    this stage and every later one), or a key among ``keys`` of the stage's own whose negative
    value means the run's seed (Laparoflow-SSL's ``pretrain.seed``): a stage made with a fixed
    one is shared by runs of any seed."""

    name: str
    keys: tuple[str, ...] = ()
    same: tuple[tuple[str, tuple[tuple[Any, Any], ...]], ...] = ()
    seed_key: str = RUN_SEED

    def compared(self, flat: dict[str, Any]) -> dict[str, Any]:
        """``flat`` (selected settings) with ``same``'s values replaced."""
        out = dict(flat)
        for key, pairs in self.same:
            if key in out:
                out[key] = dict(pairs).get(out[key], out[key])
        return out


def loop_config(name: str, block: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> loop.LoopConfig:
    """The loop settings of stage ``name`` from its resolved ``block``."""
    return loop.LoopConfig(
        stage=name, total_steps=int(block.total_steps), log_every=int(block.log_every),
        checkpoint_every=int(block.checkpoint_every), keep_checkpoints=int(config.keep_checkpoints),
        examples_per_step=int(block.batch_size),
    )


def train(
    name: str,
    block: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    workdir: str,
    state: Any,
    step: loop.TrainStep,
    examples: Sequence[dict[str, Any]],
    transform: grain.transforms.RandomMap,
    mesh: jax.sharding.Mesh,
) -> Any:
    """Runs (or resumes, or skips when complete) stage ``name``: ``block.total_steps`` steps
    of ``step`` on global batches of ``block.batch_size`` random examples of ``examples``
    (``transform`` applied; batch s depends on ``config.seed`` and s only). Returns the final
    state (see ``loop.train``)."""

    def batches_from(start: int) -> Iterator[dict[str, jax.Array]]:
        return pipeline.global_batches(
            examples, transform, seed=config.seed, batch_size=int(block.batch_size), mesh=mesh, start_step=start,
            num_threads=config.data_threads,
        )

    return loop.train(loop_config(name, block, config), workdir, state, step, batches_from)


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Adds the wall-clock seconds of the ``with`` body to ``seconds[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0


def rounded(seconds: dict[str, float]) -> dict[str, float]:
    """``stage_seconds`` for a summary: each value rounded to milliseconds."""
    return {k: round(v, 3) for k, v in seconds.items()}


def barrier(tag: str) -> None:
    """Waits for every process (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxsurg: {tag}")


def on_host0(fn: Callable[[], Any], tag: str) -> Any:
    """Runs ``fn`` on process 0 only (it writes the stage's files), then a barrier so no
    process reads them before they exist. Returns ``fn``'s result on process 0, None elsewhere."""
    out = fn() if jax.process_index() == 0 else None
    barrier(tag)
    return out


def restore_finished(source_workdir: str, name: str, state: Any, total_steps: int, key: str) -> Any:
    """The final train state of stage ``name`` of another run (``source_workdir``), restored
    into the structure and shardings of ``state``; the source is not written.

    Raises:
      ValueError: the source's stage is short of ``total_steps`` (at step 0: no checkpoint);
        the message names ``key``, the config key that pointed there.
    """
    directory = checkpoint.checkpoint_dir(source_workdir, name)
    restored, step = state, 0
    if os.path.isdir(directory):
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        manager = ocp.CheckpointManager(directory, options=options)
        try:
            restored, step = checkpoint.restore_latest(manager, state)
        finally:
            manager.close()
    if step < total_steps:
        raise ValueError(f"config.{key}={source_workdir!r}: its {name} stage is at step {step}, not {total_steps}; finish it there first")
    return restored


# ----------------------------------------------------------------------------- stages_from


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _normalised(config: Any) -> dict[str, Any]:
    raw = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return _flat(json.loads(json.dumps(raw, default=list)))


def _select(flat: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = {}
    for key in keys:
        for k, v in flat.items():
            if (k == key or k.startswith(key + ".")) and not changes_no_result(k):
                out[k] = v
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def stage_differences(
    theirs: dict[str, Any], ours: dict[str, Any], stages: Sequence[StageSpec]
) -> list[tuple[StageSpec, dict[str, tuple[Any, Any]]]]:
    """For each stage in order, the settings its outputs depend on (``DATA_KEYS``, its own
    and every upstream stage's ``keys``, and the run's seed from the first stage it seeds on;
    ``changes_no_result`` keys left out) that differ between two flat configs: ``{key:
    (theirs, ours)}``, empty where the stage is valid. A stage's own seed key is compared
    with its negative value replaced by the run's seed."""
    theirs, ours = _own_seeds_resolved(theirs, stages), _own_seeds_resolved(ours, stages)
    out, upstream = [], list(DATA_KEYS)
    for spec in stages:
        upstream += list(spec.keys)
        if spec.seed_key == RUN_SEED and RUN_SEED not in upstream:
            upstream.append(RUN_SEED)
        out.append((spec, _differences(spec.compared(_select(theirs, upstream)), spec.compared(_select(ours, upstream)))))
    return out


def _own_seeds_resolved(flat: dict[str, Any], stages: Sequence[StageSpec]) -> dict[str, Any]:
    """``flat`` with each stage's own seed key (``StageSpec.seed_key``), where negative,
    replaced by the run's seed."""
    out = dict(flat)
    for spec in stages:
        key = spec.seed_key
        if key != RUN_SEED and key in out and out[key] is not None and int(out[key]) < 0:
            out[key] = out.get(RUN_SEED)
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def take_stages_from(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[StageSpec]) -> list[str]:
    """Reuses the stages of ``config.stages_from`` (another run's workdir) that were made
    with this run's settings, by linking (or copying) their folders into ``workdir``; the
    stages then skip as complete (or resume, if the source had not finished one).

    A stage of ``workdir`` that already exists is kept. Stages are taken in order until the
    first whose settings (``DATA_KEYS``, its own and every upstream stage's ``keys``) differ;
    that one and the later ones are trained here. One line per stage says what was done.

    Returns:
      The names of the stages taken.

    Raises:
      ValueError: ``stages_from`` is this workdir, is no jaxsurg workdir (no config.json),
        or was made with other ``DATA_KEYS`` (the message lists each key's two values).
    """
    source = config.stages_from
    if not source:
        return []
    if os.path.abspath(source) == os.path.abspath(workdir):
        raise ValueError(f"config.stages_from={source!r} is this run's own workdir")
    path = os.path.join(source, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"config.stages_from={source!r}: no config.json there (not a jaxsurg workdir)")
    with open(path, encoding="utf-8") as f:
        theirs = _flat(json.load(f))
    ours = _normalised(config)
    differ = _differences(_select(theirs, DATA_KEYS), _select(ours, DATA_KEYS))
    if differ:
        listed = "; ".join(f"{k}: theirs {a!r}, ours {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"config.stages_from={source!r} was made with other data settings ({listed}); its stages cannot be reused")
    taken = []
    for spec, differ in stage_differences(theirs, ours, stages):
        mine, src = os.path.join(workdir, spec.name), os.path.join(source, spec.name)
        if os.path.exists(mine):
            continue
        if not os.path.isdir(src):
            say(f"stages_from: {source} has no '{spec.name}' stage; it and the stages after it run here")
            break
        if differ:
            listed = ", ".join(f"{k} ({a!r} there, {b!r} here)" for k, (a, b) in differ.items())
            say(f"stages_from: '{spec.name}' of {source} was made with other settings: {listed}; it and the stages after it run here")
            break
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            tmp = mine + ".incoming"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, copy_function=_link_or_copy, symlinks=True)
            os.replace(tmp, mine)
        say(f"stages_from: '{spec.name}' taken from {src}")
        taken.append(spec.name)
    barrier("stages taken")
    return taken
