"""Supervised U-Net11 (TernausNet): the baseline every paper in jaxsurg compares with.

Stages: ``train`` (TernausNet loss on the labelled training frames, Adam) and ``eval``
(per-frame IoU/Dice on the test frames, ``eval/summary.json``, overlays).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsurg import evaluate
from jaxsurg.data import pipeline
from jaxsurg.losses import cross_entropy, ternaus_loss
from jaxsurg.methods import common
from jaxsurg.models import UNet11
from jaxsurg.train import loop
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train.state import TrainState, adam_with_step_decay


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> UNet11:
    """U-Net11 with one logit for a 2-class task and ``num_classes`` logits otherwise."""
    return UNet11(
        num_classes=1 if num_classes == 2 else num_classes,
        num_filters=config.model.num_filters,
        dtype=jnp.dtype(config.model.dtype),
    )


def init_state(config: ml_collections.ConfigDict, model: UNet11, tx: optax.GradientTransformation, mesh) -> TrainState:
    """Parameters from ``config.seed`` (and the optional VGG11 file), replicated on the mesh."""
    h, w = config.image_size

    def init():
        params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, h, w, 3), jnp.float32))["params"]
        return TrainState.create(params, tx)

    state = jax.jit(init, out_shardings=mesh_lib.replicated(mesh))()
    if config.model.pretrained_vgg11:
        from jaxsurg.weights import torch_convert

        params = torch_convert.load_vgg11_encoder(config.model.pretrained_vgg11, state.params)
        state = jax.device_put(TrainState.create(params, tx), mesh_lib.replicated(mesh))
    return state


def make_train_step(model: UNet11, tx: optax.GradientTransformation, jaccard_weight: float, mesh):
    """The jitted, sharded step: batch split over ``data``, parameters replicated."""

    def step(state: TrainState, batch: dict[str, jax.Array]):
        x = pipeline.images_to_float(batch["image"])
        labels = batch["mask"].astype(jnp.int32)

        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            return ternaus_loss(logits, labels, jaccard_weight=jaccard_weight), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "cross_entropy": cross_entropy(logits, labels)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates U-Net11; returns the summary written to ``eval/summary.json``."""
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    config = common.resolve_config(config, len(data.train_rows))
    common.write_config(config, workdir)
    model = build_model(config, len(data.class_names))
    tx, schedule = adam_with_step_decay(
        config.learning_rate, weight_decay=config.weight_decay,
        decay_factor=config.lr_decay_factor, decay_every=config.lr_decay_every,
    )
    state = init_state(config, model, tx, mesh)
    loop_cfg = loop.LoopConfig(
        stage="train", total_steps=config.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
        examples_per_step=config.batch_size,
    )
    t0 = time.perf_counter()
    state = loop.train(
        loop_cfg, workdir, state, make_train_step(model, tx, config.model.jaccard_weight, mesh),
        lambda start: pipeline.train_batches(config, data, mesh, start), schedule,
    )
    train_seconds = time.perf_counter() - t0
    predict = evaluate.make_predictor(model.apply, {"params": state.params})
    header = {
        "method": config.method, "dataset": config.dataset, "task": config.task,
        "split": data.split_info, "train_seconds": round(train_seconds, 3),
    }
    return evaluate.evaluate_segmentation(
        predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
        class_names=data.class_names, out_dir=f"{workdir}/eval", header=header,
        batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
    )
