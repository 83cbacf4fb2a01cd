"""Supervised U-Net11 (TernausNet): the baseline every paper in jaxsurg compares with.

Stages: ``train`` (TernausNet loss on the labelled training frames, Adam) and ``eval``
(per-frame IoU/Dice on the test frames, ``eval/summary.json``, overlays).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxsurg import evaluate, inference
from jaxsurg.config import check_size
from jaxsurg.data import pipeline
from jaxsurg.losses import cross_entropy, ternaus_loss
from jaxsurg.methods import common
from jaxsurg.models import UNet11
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import stage
from jaxsurg.train import workdir as workdir_lib
from jaxsurg.train import step as step_lib
from jaxsurg.train.checkpoint import restore_final_variables
from jaxsurg.train.state import TrainState, make_optimizer


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> UNet11:
    """U-Net11 with one logit for a 2-class task and ``num_classes`` logits otherwise."""
    return UNet11(
        num_classes=1 if num_classes == 2 else num_classes,
        num_filters=config.model.num_filters,
        dtype=jnp.dtype(config.model.dtype),
    )


STAGES = (stage.StageSpec("train", stage.MAIN_STAGE + ("model", "image_size", "augment", "clip_length", "batch_keys")),)


def init_state(config: ml_collections.ConfigDict, model: UNet11, mesh) -> TrainState:
    """Parameters from ``config.seed`` (and the optional VGG11 file) with the optimiser of
    the config's main-stage block, replicated on the mesh."""
    h, w = config.image_size
    tx, schedule = make_optimizer(config)

    def init():
        params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, h, w, 3), jnp.float32))["params"]
        return TrainState.create(params, tx, schedule=schedule)

    state = jax.jit(init, out_shardings=mesh_lib.replicated(mesh))()
    if config.model.pretrained_vgg11:
        from jaxsurg.weights import torch_convert

        params = torch_convert.load_vgg11_encoder(config.model.pretrained_vgg11, state.params)
        state = step_lib.put_replicated(TrainState.create(params, tx, schedule=schedule), mesh)
    return state


def train_step(model: UNet11, jaccard_weight: float):
    """The U-Net11 step (unjitted): TernausNet loss on a batch of frames and masks."""

    def step(state: TrainState, batch: dict[str, jax.Array]):
        x = pipeline.images_to_float(batch["image"])
        labels = batch["mask"].astype(jnp.int32)

        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            return ternaus_loss(logits, labels, jaccard_weight=jaccard_weight), {"logits": logits}

        state, loss, aux, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss, "cross_entropy": cross_entropy(aux["logits"], labels)}

    return step


def make_train_step(model: UNet11, jaccard_weight: float, mesh):
    """The jitted, sharded step: batch split over ``data``, parameters replicated."""
    return step_lib.jit_step(train_step(model, jaccard_weight), mesh)


def run(config: ml_collections.ConfigDict, workdir: str, policy: str = "refuse") -> dict[str, Any]:
    """Trains and evaluates U-Net11; returns the summary written to ``eval/summary.json``.

    ``policy``: what to do with a workdir made by another config (``jaxsurg.train.workdir``).

    Raises:
      ValueError: a bad config value (before any data is built), no labelled frames.
      workdir.WorkdirConflict: the workdir holds another config's or another data build's outputs.
    """
    check_size(config, "image_size", 32, what="U-Net11 halves the frame five times")
    workdir_lib.claim(config, workdir, STAGES, policy)
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    config = common.resolve_config(config, len(data.train_rows))
    workdir_lib.check_data(workdir, data.build, STAGES)
    stage.take_stages_from(config, workdir, STAGES)
    common.write_config(config, workdir)
    model = build_model(config, len(data.class_names))
    seconds: dict[str, float] = {}
    with stage.timed(seconds, "train"):
        state = stage.train(
            "train", config, config, workdir, init_state(config, model, mesh), make_train_step(model, config.model.jaccard_weight, mesh),
            pipeline.train_examples(config, data), pipeline.augment_from_config(config), mesh,
        )
    predict = evaluate.make_predictor(model.apply, {"params": state.params})
    header = {"method": config.method, "dataset": config.dataset, "task": config.task, "split": data.split_info}
    with stage.timed(seconds, "eval"):
        summary = evaluate.evaluate_segmentation(
            predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
            class_names=data.class_names, out_dir=f"{workdir}/eval", header=header,
            batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
        )
    return common.finish(summary, seconds, workdir)


def trained_model(config: ml_collections.ConfigDict, workdir: str, summary: dict[str, Any]) -> inference.TrainedModel:
    """The finished run's U-Net11 (its ``train`` stage's final parameters) for
    ``jaxsurg.predict``: frames padded to multiples of 32 as in evaluation.

    Raises:
      ValueError: the stage's final checkpoint is missing or of another format.
    """
    model = build_model(config, len(summary["class_names"]))
    return inference.TrainedModel(
        method=summary["method"], classes=evaluate.classes_fn(model.apply),
        variables=restore_final_variables(workdir, "train", config.total_steps, ("params",)),
        frame_size=inference.frame_size(summary), class_names=tuple(summary["class_names"]),
    )
