"""Laparoflow-SSL stage 2, fine-tuning for segmentation (Moens et al. 2024, Sec. 2.4, App.
D.1 and D.3), and the downstream machinery the key-point stage shares.

The backbone frozen (inference mode, ``stop_gradient``) under a head that sees the image and
its representation (``BackboneWithHead``); the side-tune segmentation head trained with
cross-entropy + Lovász-Softmax (App. D.3) by Adam on ``config.num_labelled`` frames chosen
by ``config.seed``. ``config.baseline = "nossl"`` (the paper's "No SSL") trains the same
network from random initialisation, every parameter.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsurg.data import pipeline
from jaxsurg.losses import lovasz
from jaxsurg.losses.segmentation import cross_entropy
from jaxsurg.methods.laparoflow.heads import SideTuneSegmentationHead
from jaxsurg.methods.laparoflow.pretrain import _init_variables, build_backbone
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, make_optimizer


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


def segmentation_model(config, num_classes: int, *, freeze_backbone: bool) -> BackboneWithHead:
    """The fine-tuned network: the config's SegFormer backbone and the side-tune
    segmentation head of ``num_classes`` logits (``freeze_backbone``: False for No SSL)."""
    return BackboneWithHead(build_backbone(config), SideTuneSegmentationHead(num_classes=num_classes), freeze_backbone=freeze_backbone)


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
    """Cross-entropy + Lovász-Softmax (paper App. D.3); labels uint8 (B, H, W), 255 = ignore."""
    labels = labels.astype(jnp.int32)
    ce = cross_entropy(logits, labels)
    lv = lovasz.lovasz_softmax(jax.nn.softmax(logits, axis=-1), labels, ignore_index=255)
    return ce + lv, {"cross_entropy": ce, "lovasz": lv}


def finetune(config, workdir, data, backbone_vars, mesh):
    """Stage 2: trains the segmentation head (and, for No SSL, everything) on
    ``config.num_labelled`` frames with the top-level (main-stage) block; returns (model,
    state, labelled rows)."""
    rows = choose_labelled(data.train_rows, config.num_labelled, config.seed)
    head = SideTuneSegmentationHead(num_classes=len(data.class_names))
    model, state = init_downstream(config, head, backbone_vars, tuple(config.image_size), mesh, config)
    examples = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask"))
    step = make_downstream_step(model, segmentation_loss, "mask", config.seed, mesh)
    state = stage.train("finetune", config, config, workdir, state, step, examples, pipeline.augment_from_config(config), mesh)
    return model, state, rows
