"""PAT stage 2, fine-tuning for binary instrument segmentation (Ross et al. 2018, sec. 2.2.2).

"We adopt all pretrained layers and only randomly initialize the last layer ... As loss, we
use the binary cross entropy ... We reduce the learning rate by the factor of 0.1 if a
validation loss plateau is detected for 10 epochs."

- Network: ``UNet11(num_classes=1, input_channels=1)`` on the L channel (L/50 − 1): every
  layer of the pretrained generator (``pretraining.Recolorizer``, the same tree) kept, the
  last one (``final``, 1×1 conv) re-initialised (``transfer_pretrained``). Without
  pretraining (``pretrain.enabled=False``, the paper's baseline) the same network randomly
  initialised.
- Labelled frames (``labelled_split``): ``num_labelled`` (> 0) or ``labelled_fraction`` × N
  of the N labelled training frames, drawn with ``config.seed``; of these,
  ``finetune.validation_fraction`` (the paper's 119 of 413 + 119) form the validation split,
  the rest is trained on; both recorded in ``WORKDIR/finetune/split.json``.
- Loss: mean binary cross-entropy with logits (``jaxsurg.losses.cross_entropy`` with one
  logit; Eq. 6 is the two-class softmax form, the same loss). Optimiser: the main-stage
  block's (``make_optimizer``: Adam, the paper gives none), wrapped by ``with_plateau``.
- Plateau (``plateau_update``): PyTorch's ``ReduceLROnPlateau`` (mode "min", relative
  threshold, no cooldown, no minimum) on the validation loss evaluated after every epoch (an
  epoch = ceil(n_train / batch_size) steps) inside the jitted step; its state lives in the
  optimiser state, so it is checkpointed and resumed with the parameters. The per-epoch
  validation losses go to ``WORKDIR/finetune/plateau.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg.data import pipeline, transforms
from jaxsurg.losses import cross_entropy
from jaxsurg.methods.pat import recolorization
from jaxsurg.models import UNet11
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, make_optimizer
from jaxsurg.train.writers import write_json

__all__ = [
    "REINITIALISED",
    "PlateauOptState",
    "PlateauState",
    "build_segmenter",
    "finetune",
    "init_plateau",
    "labelled_split",
    "num_labelled",
    "make_finetune_step",
    "plateau_update",
    "transfer_pretrained",
    "validation_split",
    "with_plateau",
]

REINITIALISED = ("final",)  # the layers fine-tuning re-initialises (paper: "only ... the last layer")


# ----------------------------------------------------------------------------- network


def build_segmenter(config: ml_collections.ConfigDict) -> UNet11:
    """The segmentation network: U-Net11 on the L channel, one logit (binary)."""
    return UNet11(num_classes=1, num_filters=int(config.model.num_filters), dtype=jnp.dtype(config.model.dtype), input_channels=1)


def transfer_pretrained(fresh: dict[str, Any], pretrained: dict[str, Any], reinitialised: Sequence[str] = REINITIALISED) -> dict[str, Any]:
    """The fine-tuning's initial parameters: every top-level layer of ``pretrained`` except
    ``reinitialised``, which keep their ``fresh`` values.

    Args:
      fresh: a freshly initialised ``build_segmenter`` params tree (``encoder``, ``center``,
        ``dec5`` … ``dec1``, ``final``).
      pretrained: the generator's params (``pretraining.Recolorizer``: the same tree, its
        ``final`` with 2 outputs).
      reinitialised: the top-level names not taken over (``("final",)``).

    Returns:
      a new dict (the leaves are shared, not copied).

    Raises:
      ValueError: a kept layer is missing from ``pretrained`` or differs in structure or in
        a leaf's shape (the message names the layer).
    """
    out = {}
    for name, value in fresh.items():
        if name in reinitialised:
            out[name] = value
            continue
        if name not in pretrained:
            raise ValueError(f"the pretrained generator has no layer {name!r} (it has {sorted(pretrained)})")
        theirs = pretrained[name]
        if jax.tree.structure(theirs) != jax.tree.structure(value) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(theirs), jax.tree.leaves(value))
        ):
            raise ValueError(f"the pretrained layer {name!r} does not fit the segmentation network (other structure or shapes)")
        out[name] = theirs
    return out


# ----------------------------------------------------------------------------- labelled frames


def num_labelled(config: ml_collections.ConfigDict, pool: int) -> int:
    """n, the labelled frames asked of a pool of ``pool``: ``config.num_labelled`` when > 0,
    else max(2, round(``labelled_fraction`` · pool)).

    Raises:
      ValueError: n > pool or n < 2 (the message names the keys).
    """
    n = int(config.num_labelled) if config.num_labelled > 0 else max(2, int(round(config.labelled_fraction * pool)))
    if n > pool or n < 2:
        raise ValueError(
            f"config.num_labelled={config.num_labelled}, labelled_fraction={config.labelled_fraction}: {n} labelled frames asked, "
            f"{pool} exist (label_interval={config.label_interval}); at least 2 are needed (one to train on, one to validate)"
        )
    return n


def validation_split(chosen: np.ndarray, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows), each sorted, of the n ≥ 2 ``chosen`` rows in their
    random order: the first min(n − 1, max(1, round(``validation_fraction`` · n))) validate
    (Ross et al.: "randomly selected disjunct subsets of training and validation data")."""
    n = len(chosen)
    n_val = min(n - 1, max(1, int(round(validation_fraction * n))))
    return np.sort(chosen[n_val:]), np.sort(chosen[:n_val])


def labelled_split(rows: np.ndarray, config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one run's labelled frames, each sorted.

    The ``num_labelled`` (n) frames of subset s = ``config.labelled_subset`` are the s-th
    block of n of a permutation of ``rows`` by ``config.seed`` (subset 0: the first n, so a
    larger n contains a smaller one of the same seed; subsets disjoint while (s + 1)·n ≤ N),
    or, where that block would run past the N rows, the first n of a permutation by
    (``config.seed``, s); split by ``validation_split`` with ``finetune.validation_fraction``.

    Raises:
      ValueError: ``num_labelled``'s; a negative ``labelled_subset``.
    """
    rows = np.asarray(rows)
    n = num_labelled(config, len(rows))
    s = int(config.labelled_subset)
    if s < 0:
        raise ValueError(f"config.labelled_subset={s}: must be >= 0")
    if (s + 1) * n <= len(rows):
        chosen = np.random.default_rng(config.seed).permutation(rows)[s * n:(s + 1) * n]
    else:
        chosen = np.random.default_rng((int(config.seed), s)).permutation(rows)[:n]
    return validation_split(chosen, config.finetune.validation_fraction)


# ----------------------------------------------------------------------------- plateau


class PlateauState(NamedTuple):
    """The plateau controller (PyTorch ``ReduceLROnPlateau`` without cooldown).

    scale: float32 (), the learning-rate multiplier (1, then × factor per reduction).
    best: float32 (), the best validation loss so far (inf at the start).
    bad_epochs: int32 (), epochs since the last improvement (PyTorch's ``num_bad_epochs``).
    reductions: int32 (), reductions so far.
    history: float32 (E,), the validation loss after each epoch (nan until evaluated).
    """

    scale: jax.Array
    best: jax.Array
    bad_epochs: jax.Array
    reductions: jax.Array
    history: jax.Array


class PlateauOptState(NamedTuple):
    """``with_plateau``'s optimiser state: the inner optimiser's, and the controller's."""

    inner: Any
    plateau: PlateauState


def init_plateau(num_epochs: int) -> PlateauState:
    """A fresh controller with room for ``num_epochs`` ≥ 1 validation losses."""
    return PlateauState(
        scale=jnp.ones((), jnp.float32), best=jnp.full((), jnp.inf, jnp.float32), bad_epochs=jnp.zeros((), jnp.int32),
        reductions=jnp.zeros((), jnp.int32), history=jnp.full((max(1, int(num_epochs)),), jnp.nan, jnp.float32),
    )


def plateau_update(state: PlateauState, value: jax.Array, epoch: jax.Array, *, factor: float, patience: int, threshold: float) -> PlateauState:
    """One epoch's step of the controller (``torch.optim.lr_scheduler.ReduceLROnPlateau``,
    mode "min", threshold_mode "rel", cooldown 0, min_lr 0).

    ``value`` improves when value < best · (1 − threshold): then best = value and
    bad_epochs = 0, else bad_epochs + 1; when bad_epochs > ``patience`` the scale is
    multiplied by ``factor`` and bad_epochs reset to 0. So with patience 10 the rate drops
    after the 11th epoch in a row without improvement (PyTorch's count). The loss is also
    written to ``history[epoch]`` (clipped into range). Traceable (``jax.numpy``).

    Args:
      state: the controller. value: float scalar, this epoch's validation loss.
      epoch: int scalar, the epoch's index from 0.
      factor: in (0, 1], the reduction (paper: 0.1). patience: ≥ 0 epochs (paper: 10).
      threshold: ≥ 0, relative improvement needed (PyTorch's default 1e-4).

    Returns:
      the new ``PlateauState``.
    """
    value = jnp.asarray(value, jnp.float32)
    better = value < state.best * (1.0 - threshold)
    best = jnp.where(better, value, state.best)
    bad = jnp.where(better, 0, state.bad_epochs + 1)
    reduce = bad > patience
    return PlateauState(
        scale=jnp.where(reduce, state.scale * factor, state.scale).astype(jnp.float32),
        best=best.astype(jnp.float32),
        bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
        reductions=(state.reductions + reduce.astype(jnp.int32)).astype(jnp.int32),
        history=state.history.at[jnp.clip(epoch, 0, state.history.shape[0] - 1)].set(value),
    )


def with_plateau(inner: optax.GradientTransformation, num_epochs: int) -> optax.GradientTransformation:
    """``inner``'s updates × the plateau controller's ``scale`` (the learning rate's
    multiplier). The controller itself is advanced by the step (``make_finetune_step``),
    not by ``update``; its state is ``PlateauOptState.plateau``."""

    def init(params):
        return PlateauOptState(inner.init(params), init_plateau(num_epochs))

    def update(updates, state, params=None):
        updates, inner_state = inner.update(updates, state.inner, params)
        updates = jax.tree.map(lambda u: u * state.plateau.scale.astype(u.dtype), updates)
        return updates, PlateauOptState(inner_state, state.plateau)

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- step


def validation_arrays(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset, rows: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """The validation frames as the step reads them: at ``config.resize``, {"L": float32
    (C, chunk, H, W, 1) (L/50 − 1), "mask": int32 (C, chunk, H, W)}, padded to C · chunk
    frames with masks of 255 (ignored)."""
    frames = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask"))
    size = tuple(config.resize)
    ex = [transforms.resize(frames[i], size) for i in range(len(rows))]
    images = np.stack([e["image"][0] for e in ex])
    masks = np.stack([e["mask"][0] for e in ex]).astype(np.int32)
    L = np.asarray(recolorization.to_lab_input(jnp.asarray(images))[0])
    c = math.ceil(len(rows) / chunk)
    pad = c * chunk - len(rows)
    L = np.concatenate([L, np.zeros((pad, *L.shape[1:]), np.float32)])
    masks = np.concatenate([masks, np.full((pad, *masks.shape[1:]), 255, np.int32)])
    return {"L": L.reshape(c, chunk, *L.shape[1:]), "mask": masks.reshape(c, chunk, *masks.shape[1:])}


def _bce_sums(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    valid = (labels != 255).astype(jnp.float32)
    z = logits[..., 0].astype(jnp.float32)
    per_pixel = jax.nn.softplus(z) - z * jnp.where(labels == 1, 1.0, 0.0)
    return jnp.sum(per_pixel * valid), jnp.sum(valid)


def make_finetune_step(model: UNet11, config: ml_collections.ConfigDict, steps_per_epoch: int, schedule: optax.Schedule, validation, mesh):
    """The jitted fine-tuning step ``step(state, batch) -> (state, metrics)``.

    The batch's uint8 RGB ``image`` (B, H, W, 3) → L/50 − 1; ``mask`` uint8 (B, H, W), 255
    ignored; one Adam update on the mean binary cross-entropy. After the step that ends an
    epoch (state.step a multiple of ``steps_per_epoch``) the validation loss (mean BCE
    over every validation pixel, ``validation`` as ``validation_arrays``, a frozen replicated
    input) advances the plateau controller (``plateau_update`` with ``finetune.plateau_*``).

    Metrics: ``loss`` (BCE), ``learning_rate`` (schedule × plateau scale, for the next
    step), ``validation_loss`` (the latest epoch's; 0 before the first epoch ends),
    ``plateau_reductions``.
    """
    f = config.finetune
    spe = int(steps_per_epoch)

    def step(state: TrainState, batch: dict[str, jax.Array], val: dict[str, jax.Array]):
        L, _ = recolorization.to_lab_input(batch["image"])
        labels = batch["mask"].astype(jnp.int32)

        def loss_fn(params):
            return cross_entropy(model.apply({"params": params}, L), labels), {}

        state, loss, _, _ = step_lib.gradient_step(state, loss_fn)

        def epoch_end(opt_state: PlateauOptState) -> PlateauOptState:
            def chunk(carry, xs):
                s, n = _bce_sums(model.apply({"params": state.params}, xs[0]), xs[1])
                return (carry[0] + s, carry[1] + n), None

            (s, n), _ = jax.lax.scan(chunk, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)), (val["L"], val["mask"]))
            value = s / jnp.maximum(n, 1.0)
            epoch = state.step // spe - 1
            plateau = plateau_update(
                opt_state.plateau, value, epoch, factor=float(f.plateau_factor), patience=int(f.plateau_epochs), threshold=float(f.plateau_threshold),
            )
            return PlateauOptState(opt_state.inner, plateau)

        opt_state = jax.lax.cond(state.step % spe == 0, epoch_end, lambda o: o, state.opt_state)
        state = state.replace(opt_state=opt_state)
        plateau = opt_state.plateau
        evaluated = jnp.isfinite(plateau.history)
        latest = jnp.where(jnp.any(evaluated), plateau.history[jnp.maximum(jnp.sum(evaluated) - 1, 0)], 0.0)
        metrics = {
            "loss": loss, "learning_rate": jnp.asarray(schedule(state.step), jnp.float32) * plateau.scale,
            "validation_loss": latest, "plateau_reductions": plateau.reductions.astype(jnp.float32),
        }
        return state, metrics

    return step_lib.jit_step(step, mesh, frozen=validation)


# ----------------------------------------------------------------------------- stage


def steps_per_epoch(block: ml_collections.ConfigDict, num_train: int) -> int:
    """ceil(num_train / batch_size), as ``jaxsurg.config.resolve_stage`` counts an epoch."""
    return max(1, math.ceil(num_train / int(block.batch_size)))


def init_state(
    config: ml_collections.ConfigDict, block: ml_collections.ConfigDict, model: UNet11, init: dict[str, Any] | None, num_epochs: int, mesh,
    *, seed_offset: int = 1,
) -> tuple[TrainState, optax.Schedule]:
    """A supervised stage's first state: ``build_segmenter`` initialised from ``config.seed``
    + ``seed_offset`` (the re-initialised ``final``; everything when ``init`` is None), the
    other layers of ``init`` (variables with "params": the generator's, or PAT-Ext's stage's)
    transferred (``transfer_pretrained``), ``block``'s optimiser with the plateau
    controller; replicated. Returns (state, the block's schedule)."""
    h, w = config.resize
    key = jax.random.PRNGKey(config.seed + seed_offset)
    fresh = jax.jit(lambda k: model.init(k, jnp.zeros((1, h, w, 1), jnp.float32)))(key)["params"]
    params = fresh if init is None else transfer_pretrained(fresh, init["params"])
    tx, schedule = make_optimizer(block)
    # No schedule on the state: the loop would log the schedule without the plateau's scale;
    # the step logs the effective learning rate itself.
    return step_lib.put_replicated(TrainState.create(params, with_plateau(tx, num_epochs)), mesh), schedule


def finetune(
    config: ml_collections.ConfigDict, workdir: str, data: pipeline.LoadedDataset, train_rows: np.ndarray, val_rows: np.ndarray,
    init: dict[str, Any] | None, mesh, *, name: str = "finetune", block: ml_collections.ConfigDict | None = None,
    seed_offset: int = 1,
) -> tuple[UNet11, TrainState, dict[str, Any]]:
    """A supervised stage ``name`` (the fine-tuning; PAT-Ext's "ext" on the related dataset)
    on the labelled ``train_rows`` of ``data`` with ``block`` (None: the top-level, main-stage
    block), the plateau on ``val_rows``, from ``init`` (see ``init_state``); resumed, or
    skipped when complete. Writes ``WORKDIR/<name>/split.json`` (before training) and
    ``plateau.json`` (after).

    Returns:
      (model, final state, the plateau record: validation loss per epoch, reductions,
      final learning rate, steps per epoch).
    """
    block = config if block is None else block
    directory = os.path.join(workdir, name)
    split = {
        "seed": int(config.seed), "labelled_pool": int(len(data.train_rows)), "num_labelled": int(config.num_labelled),
        "labelled_fraction": float(config.labelled_fraction), "labelled_subset": int(config.labelled_subset), "validation_fraction": float(config.finetune.validation_fraction),
        "train_records": [int(r) for r in train_rows], "validation_records": [int(r) for r in val_rows],
    }

    def write_split():
        os.makedirs(directory, exist_ok=True)
        write_json(os.path.join(directory, "split.json"), split)

    stage.on_host0(write_split, "validation split")
    model = build_segmenter(config)
    spe = steps_per_epoch(block, len(train_rows))
    num_epochs = math.ceil(int(block.total_steps) / spe)
    state, schedule = init_state(config, block, model, init, num_epochs, mesh, seed_offset=seed_offset)
    validation = validation_arrays(config, data, val_rows, chunk=max(1, int(config.eval_batch_size)))
    step = make_finetune_step(model, config, spe, schedule, validation, mesh)
    examples = pipeline.Frames(data.train_source, train_rows, config.task, ("image", "mask"))
    a, size = config.augment, tuple(config.resize)
    augment = pipeline.Augment(
        resize=size, crop=size, hflip=a.hflip, vflip=a.vflip, brightness=a.brightness, contrast=a.contrast,
        saturation=a.saturation, hue_degrees=a.hue_degrees,
    )
    state = stage.train(name, block, config, workdir, state, step, examples, augment, mesh)
    plateau = jax.device_get(state.opt_state.plateau)
    history = [None if not np.isfinite(v) else round(float(v), 6) for v in np.asarray(plateau.history)]
    record = {
        "steps_per_epoch": spe, "epochs": num_epochs, "validation_loss": history, "reductions": int(plateau.reductions),
        "best_validation_loss": float(plateau.best) if np.isfinite(plateau.best) else None,
        "final_learning_rate": float(schedule(int(block.total_steps))) * float(plateau.scale),
        "plateau_epochs": int(config.finetune.plateau_epochs), "factor": float(config.finetune.plateau_factor),
    }
    stage.on_host0(lambda: write_json(os.path.join(directory, "plateau.json"), record), "plateau record")
    return model, state, record
