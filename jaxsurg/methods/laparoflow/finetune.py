"""Laparoflow-SSL stage 2, fine-tuning for segmentation (Moens et al. 2024, Sec. 2.4, App.
D.1 and D.3), and the downstream machinery the key-point stage shares.

The backbone frozen (inference mode, ``stop_gradient``) under a head that sees the image and
its representation (``BackboneWithHead``); the head of ``config.head`` — ``side_tune`` (the
paper's, App. D.1, trained with cross-entropy + Lovász-Softmax, App. D.3) or
``linear_probe`` (a 1×1 conv on the representation, cross-entropy) — trained by Adam on
``config.num_labelled`` frames chosen by ``config.seed``. ``config.baseline = "nossl"`` (the
paper's "No SSL") trains the same network from random initialisation, every parameter.

Fine-tuning runs ``config.total_steps`` steps, or, with ``config.val_frames`` > 0, to a
plateau of the validation loss (the paper reports its numbers "at convergence", App. D.3):
``val_frames`` more labelled training frames (disjoint from the training ones, chosen by the
seed) are scored with the training loss every ``val_every`` steps, training stops when it
has not improved for ``patience`` scorings (or at ``total_steps``), and the best scoring's
variables are the stage's result (``WORKDIR/finetune/best.msgpack``, ``validation.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg.data import pipeline, transforms
from jaxsurg.losses import lovasz
from jaxsurg.losses.segmentation import cross_entropy
from jaxsurg.methods.laparoflow.config import HEADS
from jaxsurg.methods.laparoflow.heads import LinearProbeHead, SideTuneSegmentationHead
from jaxsurg.methods.laparoflow.pretrain import _init_variables, build_backbone, load_variables, save_variables
from jaxsurg.progress import say
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.checkpoint import restore_final_variables
from jaxsurg.train.state import TrainState, make_optimizer
from jaxsurg.train.writers import write_json


class BackboneWithHead(nn.Module):
    """A SegFormer backbone and a head that sees the image and its representation.

    ``apply(variables, image, train=...)``: image float32 (B, H, W, 3) in [0, 1] → the
    head's logits (B, H, W, K). With ``freeze_backbone`` the backbone runs in inference mode
    (BatchNorm statistics, no dropout) under ``stop_gradient``. Params: ``backbone``, ``head``.
    """

    backbone: nn.Module
    head: nn.Module
    freeze_backbone: bool

    def __call__(self, image: jax.Array, *, train: bool = False) -> jax.Array:
        rep = self.backbone(image, train=train and not self.freeze_backbone)
        if self.freeze_backbone:
            rep = jax.lax.stop_gradient(rep)
        return self.head(image, rep)


def segmentation_head(config, num_classes: int) -> nn.Module:
    """The segmentation head of ``config.head`` (``HEADS``; a config without the key, as
    written before it existed, has the side-tune head) with ``num_classes`` logits.

    Raises:
      ValueError: an unknown head.
    """
    head = config.get("head", "side_tune")
    if head == "side_tune":
        return SideTuneSegmentationHead(num_classes=num_classes)
    if head == "linear_probe":
        return LinearProbeHead(num_classes=num_classes)
    raise ValueError(f"config.head={head!r}; known: {HEADS}")


def segmentation_model(config, num_classes: int, *, freeze_backbone: bool) -> BackboneWithHead:
    """The fine-tuned network: the config's SegFormer backbone and the segmentation head of
    ``config.head`` with ``num_classes`` logits (``freeze_backbone``: False for No SSL)."""
    return BackboneWithHead(build_backbone(config), segmentation_head(config, num_classes), freeze_backbone=freeze_backbone)


def choose_labelled(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of the labelled ``rows``, drawn without replacement with ``seed``, sorted.

    Raises:
      ValueError: if fewer than ``count`` rows are labelled.
    """
    if count > len(rows):
        raise ValueError(f"config.num_labelled={count} but only {len(rows)} labelled training frames exist")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.asarray(rows), size=count, replace=False))


def head_optimizer(block, freeze_backbone: bool, params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The stage ``block``'s optimiser (``make_optimizer``: Adam, constant rate by default) on
    the head (and, for No SSL, the backbone); frozen parameters get no update."""
    tx, schedule = make_optimizer(block)
    if not freeze_backbone:
        return tx, schedule
    labels = {k: ("frozen" if k == "backbone" else "train") for k in params}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels), schedule


def init_downstream(config, head: nn.Module, backbone_vars: dict[str, Any] | None, shape, mesh, block) -> tuple[BackboneWithHead, TrainState]:
    """(model, state) for a head on the backbone, trained by the optimiser of the stage
    ``block``; ``backbone_vars`` None = No SSL."""
    freeze = backbone_vars is not None
    model = BackboneWithHead(build_backbone(config), head, freeze_backbone=freeze)
    variables = _init_variables(model, config.seed + 100, shape)
    params = dict(variables["params"])
    batch_stats = dict(variables.get("batch_stats", {}))
    if freeze:
        params["backbone"] = backbone_vars["params"]
        batch_stats["backbone"] = backbone_vars["batch_stats"]
    tx, schedule = head_optimizer(block, freeze, params)
    return model, step_lib.put_replicated(TrainState.create(params, tx, batch_stats, schedule), mesh)


def make_downstream_step(model: BackboneWithHead, loss_fn: Callable, target_key: str, seed: int, mesh):
    """A jitted step of ``loss_fn(logits, batch[target_key]) -> (loss, metrics)`` for a head on
    the backbone; dropout from ``fold_in(seed + 11, step)``."""
    base_key = jax.random.PRNGKey(seed + 11)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(base_key, state.step)
        x = pipeline.images_to_float(batch["image"])

        def objective(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"dropout": key}, mutable=["batch_stats"],
            )
            loss, metrics = loss_fn(logits, batch[target_key])
            return loss, {**metrics, "batch_stats": updates.get("batch_stats", state.batch_stats)}

        new, loss, metrics, _ = step_lib.gradient_step(state, objective)
        return new, {"loss": loss, **metrics}

    return step_lib.jit_step(step, mesh)


def segmentation_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy + Lovász-Softmax, the sum (paper App. D.3: "the sum of cross-entropy and
    Lovász-Softmax loss"); logits float (B, H, W, K), labels uint8 (B, H, W), 255 = ignore.
    Returns (float32 scalar, {"cross_entropy", "lovasz"})."""
    labels = labels.astype(jnp.int32)
    ce = cross_entropy(logits, labels)
    lv = lovasz.lovasz_softmax(jax.nn.softmax(logits, axis=-1), labels, ignore_index=255)
    return ce + lv, {"cross_entropy": ce, "lovasz": lv}


def probe_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The linear probe's loss: pixel cross-entropy alone (``jaxsurg.losses.segmentation.
    cross_entropy``); logits float (B, H, W, K), labels uint8 (B, H, W), 255 = ignore.
    Returns (float32 scalar, {"cross_entropy"})."""
    ce = cross_entropy(logits, labels.astype(jnp.int32))
    return ce, {"cross_entropy": ce}


def head_loss(config) -> Callable:
    """The training loss of ``config.head``: ``segmentation_loss`` for the side-tune head,
    ``probe_loss`` for the linear probe."""
    return probe_loss if config.get("head", "side_tune") == "linear_probe" else segmentation_loss


def choose_validation(rows: np.ndarray, chosen: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of the labelled ``rows`` not in ``chosen`` (the training frames), drawn
    without replacement with ``seed`` (a stream apart from ``choose_labelled``'s), sorted.

    Raises:
      ValueError: fewer than ``count`` labelled rows are left beside the chosen ones.
    """
    rest = np.setdiff1d(np.asarray(rows), np.asarray(chosen))
    if count > len(rest):
        raise ValueError(
            f"config.val_frames={count} but only {len(rest)} labelled training frames are left beside the "
            f"{len(chosen)} of num_labelled; lower val_frames or num_labelled"
        )
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(rest, size=count, replace=False))


def make_validation(model: nn.Module, frames: Sequence[tuple[np.ndarray, np.ndarray]], loss_fn: Callable, batch_size: int) -> Callable[[Any], float]:
    """``validate(state) -> float``: the mean over ``frames`` of each frame's ``loss_fn``
    (logits, mask) in inference mode — the training loss, frame by frame, on whole frames.

    Args:
      model: the network (``BackboneWithHead``).
      frames: (image uint8 (H, W, 3), mask uint8 (H, W)) pairs; sizes may differ (frames of a
        size are batched together, ``batch_size`` at a time).
      loss_fn: ``loss_fn(logits (1, H, W, K), labels (1, H, W)) -> (scalar, metrics)``.
      batch_size: frames per forward pass.

    The state's variables are copied to the host (``jax.device_get``) and scored on this
    process's default device, so every process computes the same value.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (image, _) in enumerate(frames):
        groups.setdefault(image.shape, []).append(i)

    @jax.jit
    def per_frame(variables, images, masks):
        logits = model.apply(variables, pipeline.images_to_float(images), train=False)
        return jax.vmap(lambda lg, m: loss_fn(lg[None], m[None])[0])(logits, masks)

    def validate(state) -> float:
        variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        total = 0.0
        for idx in groups.values():
            for k in range(0, len(idx), batch_size):
                part = idx[k:k + batch_size]
                images = np.stack([frames[i][0] for i in part])
                masks = np.stack([frames[i][1] for i in part])
                total += float(np.sum(per_frame(variables, images, masks)))
        return total / len(frames)

    return validate


def train_to_plateau(
    name: str, block: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str, state: TrainState,
    step, examples, transform, mesh, *, validate: Callable[[Any], float], every: int, patience: int,
) -> tuple[TrainState, dict[str, Any]]:
    """``stage.train`` of ``block`` until a validation loss stops improving.

    Training runs in segments of ``every`` steps (each ends with a checkpoint); after each,
    ``validate(state)`` is recorded. It stops when the loss has not improved (strictly) on
    its best for ``patience`` scorings in a row, or at ``block.total_steps``. The best
    scoring's variables ({"params", "batch_stats"}) are kept in ``WORKDIR/<name>/best.msgpack``
    and returned in the state; ``WORKDIR/<name>/validation.json`` records every scoring, so a
    killed run resumes where it stopped (a finished one returns at once).

    Returns:
      (state with the best variables, record) where record = {"history": [[step, loss],
      ...], "best_step", "best_loss", "steps" (the step training stopped at), "stopped"
      ("plateau" | "total_steps"), "every", "patience"}.

    Raises:
      ValueError: ``every`` or ``patience`` < 1, or a scoring that is not finite.
    """
    if every < 1 or patience < 1:
        raise ValueError(f"val_every={every} and patience={patience} must be >= 1")
    folder = os.path.join(workdir, name)
    record_path, best_path = os.path.join(folder, "validation.json"), os.path.join(folder, "best.msgpack")
    record: dict[str, Any] = {"history": [], "best_step": None, "best_loss": None, "steps": None, "stopped": None}
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            record.update(json.load(f))
    record.update(every=int(every), patience=int(patience))
    total = int(block.total_steps)
    ends = list(range(every, total, every)) + [total]
    done = {int(s) for s, _ in record["history"]}
    for end in ends:
        if record["steps"] is not None:
            break
        if end in done:
            continue
        segment = ml_collections.ConfigDict(block.to_dict())
        segment.total_steps = end
        state = stage.train(name, segment, config, workdir, state, step, examples, transform, mesh)
        loss = float(validate(state))
        if not np.isfinite(loss):
            raise ValueError(f"stage '{name}': the validation loss at step {end} is {loss}")
        record["history"].append([end, loss])
        if record["best_loss"] is None or loss < record["best_loss"]:
            record["best_step"], record["best_loss"] = end, loss
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            stage.on_host0(lambda v=variables: save_variables(best_path, v), f"{name} best kept")
        since = sum(1 for s, _ in record["history"] if s > record["best_step"])
        say(f"stage '{name}': validation loss {loss:.4g} at step {end} (best {record['best_loss']:.4g} at step {record['best_step']})")
        if since >= patience or end == total:
            record["steps"], record["stopped"] = end, "plateau" if since >= patience else "total_steps"
        stage.on_host0(lambda r=dict(record): write_json(record_path, r), f"{name} validation recorded")
    template = {"params": state.params, "batch_stats": state.batch_stats}
    best = load_variables(best_path, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), template))
    if record["stopped"] == "plateau":
        say(f"stage '{name}': stopped at step {record['steps']} (no improvement in {patience} validations); best step {record['best_step']}")
    return state.replace(params=best["params"], batch_stats=best["batch_stats"]), record


def validation_frames(config, data, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The labelled training records ``rows`` as (image uint8 (H, W, 3), mask uint8 (H, W))
    whole frames, resized to ``config.resize`` when set (as the test frames)."""
    frames = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask"))
    out = []
    for i in range(len(frames)):
        ex = frames[i]
        if config.resize:
            ex = transforms.resize(ex, tuple(config.resize))
        out.append((ex["image"][0], ex["mask"][0]))
    return out


def finetune(config, workdir, data, backbone_vars, mesh):
    """Stage 2: trains the segmentation head of ``config.head`` (and, for No SSL, everything)
    on ``config.num_labelled`` frames with the top-level (main-stage) block: ``total_steps``
    steps, or to a plateau of the validation loss when ``config.val_frames`` > 0
    (``train_to_plateau``).

    Returns:
      (model, state, labelled rows, report): the state holds the variables the evaluation
      uses (the best validation's under a plateau); report = {"head", "steps" (trained), and
      with validation "val_frames", "val_records", "best_step", "best_val_loss", "stopped",
      "val_every", "patience", "history"} for summary.json.
    """
    rows = choose_labelled(data.train_rows, config.num_labelled, config.seed)
    head = segmentation_head(config, len(data.class_names))
    loss_fn = head_loss(config)
    model, state = init_downstream(config, head, backbone_vars, tuple(config.image_size), mesh, config)
    examples = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask"))
    step = make_downstream_step(model, loss_fn, "mask", config.seed, mesh)
    transform = pipeline.augment_from_config(config)
    report: dict[str, Any] = {"head": config.get("head", "side_tune")}
    val = int(config.get("val_frames", 0))
    if val <= 0:
        state = stage.train("finetune", config, config, workdir, state, step, examples, transform, mesh)
        report["steps"] = int(config.total_steps)
        return model, state, rows, report
    val_rows = choose_validation(data.train_rows, rows, val, config.seed)
    validate = make_validation(model, validation_frames(config, data, val_rows), loss_fn, int(config.eval_batch_size))
    state, record = train_to_plateau(
        "finetune", config, config, workdir, state, step, examples, transform, mesh,
        validate=validate, every=int(config.val_every), patience=int(config.patience),
    )
    report.update(
        steps=record["steps"], best_step=record["best_step"], best_val_loss=record["best_loss"], stopped=record["stopped"],
        val_frames=val, val_records=[int(r) for r in val_rows], val_every=record["every"], patience=record["patience"],
        history=record["history"],
    )
    return model, state, rows, report


def final_variables(config, workdir: str) -> dict[str, Any]:
    """The finished finetune stage's variables ({"params", "batch_stats"} on the host): the
    best validation's (``WORKDIR/finetune/best.msgpack``) under a plateau
    (``config.val_frames`` > 0), else the checkpoint at ``config.total_steps``.

    Raises:
      ValueError: the stage has not finished (the message says what is missing).
    """
    if int(config.get("val_frames", 0)) <= 0:
        return restore_final_variables(workdir, "finetune", config.total_steps)
    folder = os.path.join(workdir, "finetune")
    record_path = os.path.join(folder, "validation.json")
    if not os.path.exists(record_path):
        raise ValueError(f"{record_path} is missing: the finetune stage has not finished (its command again resumes it)")
    with open(record_path, encoding="utf-8") as f:
        if json.load(f).get("steps") is None:
            raise ValueError(f"{record_path}: the finetune stage has not reached its plateau yet (its command again resumes it)")
    with open(os.path.join(folder, "best.msgpack"), "rb") as f:
        return jax.tree.map(np.asarray, flax.serialization.msgpack_restore(f.read()))
