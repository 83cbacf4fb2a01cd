"""Laparoflow-SSL (Moens et al. 2024): optical-flow-guided self-supervised pixel
representations, then tiny-label segmentation and key points.

Stages, each resumable from its own checkpoints (``WORKDIR/<stage>/checkpoints``):

1. ``pretrain``: a SegFormer-B0 backbone (256-d unit-norm pixel representations at 1/4
   resolution) trained on unlabelled frames and their optical flow with the flow-weighted
   pixel InfoNCE of the paper's Eq. (1), (5)–(9) (or the ablations of its Appendix C,
   ``config.pretrain.loss``). τ_P and τ_N are estimated before training from the
   pretraining set (``WORKDIR/pretrain/tau.json``); afterwards ``WORKDIR/pretrain/pca.png``
   shows three principal components of the representations as colours (paper Fig. 1b).
2. ``finetune``: backbone frozen; a side-tune network and the segmentation head trained
   with cross-entropy + Lovász-Softmax on ``config.num_labelled`` frames chosen by
   ``config.seed`` (``config.head = "linear_probe"``: a 1×1 conv on the representation,
   cross-entropy); ``config.total_steps`` steps, or to a plateau of the validation loss on
   ``config.val_frames`` more labelled frames (``patience``, ``val_every``).
3. ``eval``: per-frame IoU/Dice with per-class figures (``eval/summary.json``, overlays).
4. ``keypoints`` (datasets with key points): the narrow key-point head on the frozen
   backbone, Gaussian targets, mean of binary Lovász and cross-entropy; scored as Du et al.
   (2018) (``eval/keypoints.json``).

``config.baseline = "nossl"`` is the paper's "No SSL": the same network randomly
initialised, every parameter trained, the same labelled frames and budget.

Pretraining length: ``config.pretrain.keep_steps`` keeps the backbone at those steps of one
pretraining; ``config.pretrain.use_step`` picks the backbone the downstream stages read (−1
the finished one, 0 the random start — frozen random features, not No SSL — or a kept
step). ``use_step`` belongs to the ``finetune`` stage's settings, not ``pretrain``'s, so runs
that differ in it share one pretraining through ``config.stages_from`` (the pretraining runs,
or is taken, whatever step is read).

Files: ``config`` (checks, stride, losses), ``views`` and ``photometric`` (Eq. (2)–(4),
App. B.2), ``contrastive`` (Eq. (1), (5)–(9), App. C), ``temperatures`` (τ_P, τ_N),
``segformer`` and ``hf_segformer`` (the backbone and its Hugging Face weights), ``heads``
(App. D.1), ``pretrain``, ``finetune``, ``keypoints`` (targets, loss, peaks, Du et al.'s
metric) and ``keypoint_stage``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from jaxsurg import evaluate, inference
from jaxsurg.config import resolve_stage
from jaxsurg.data import pipeline, unlabelled
from jaxsurg.methods import common
from jaxsurg.methods.laparoflow import finetune, keypoint_stage, pretrain
from jaxsurg.methods.laparoflow.config import HEADS, LOSSES, STRIDE, TASK_FOR_DATASET, check_pretrain_steps, resolve_task
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import stage
from jaxsurg.train import workdir as workdir_lib

__all__ = ["HEADS", "LOSSES", "STAGES", "STRIDE", "SWEEP_FIGURES", "TASK_FOR_DATASET", "resolve_task", "run", "stages_for", "trained_model"]

# Keys of the pretrain block that choose what the downstream stages read, not what the
# pretraining makes: the finetune stage's settings.
DOWNSTREAM_PRETRAIN_KEYS = ("use_step",)


def _pretrain_keys() -> tuple[str, ...]:
    """Every leaf of the config's ``pretrain`` block but ``DOWNSTREAM_PRETRAIN_KEYS``."""
    from jaxsurg.configs.laparoflow import get_config

    return tuple(f"pretrain.{k}" for k in get_config().pretrain if k not in DOWNSTREAM_PRETRAIN_KEYS)


# Figures of eval/summary.json that a sweep's tables show beside Dice (jaxsurg.sweep): the
# fine-tuning's steps (to a plateau where val_frames > 0) and its best-scored step.
SWEEP_FIGURES = {"fine-tune steps": ("finetune", "steps"), "best step": ("finetune", "best_step")}

# The stages and the config keys their outputs depend on (``config.stages_from``).
STAGES = (
    # Seeded by pretrain.seed (−1: the run's seed): runs of several seeds can share one pretraining.
    stage.StageSpec("pretrain", _pretrain_keys() + ("model",), seed_key="pretrain.seed"),
    stage.StageSpec(
        "finetune",
        stage.MAIN_STAGE + ("baseline", "num_labelled", "image_size", "augment", "clip_length", "batch_keys", "head", "val_frames",
                            "val_every", "patience") + tuple(f"pretrain.{k}" for k in DOWNSTREAM_PRETRAIN_KEYS),
    ),
    stage.StageSpec("keypoints", ("keypoints",)),
)


def stages_for(config: ml_collections.ConfigDict) -> tuple[stage.StageSpec, ...]:
    """The stages a run of ``config`` runs, those it compares when it takes another run's
    (``config.stages_from``, ``jaxsurg.sweep``): No SSL (``baseline="nossl"``) has no
    pretraining, so it neither takes one nor is fingerprinted by its settings."""
    if config.get("baseline") == "nossl":
        return tuple(spec for spec in STAGES if spec.name != "pretrain")
    return STAGES


def run(config: ml_collections.ConfigDict, workdir: str, policy: str = "refuse") -> dict[str, Any]:
    """All stages; returns the segmentation summary written to ``eval/summary.json`` (with
    the key-point scores under ``"keypoints"`` where the dataset has key points).

    ``policy``: what to do with a workdir made by another config (``jaxsurg.train.workdir``).

    Raises:
      ValueError: a bad config value (before any data is built), ``num_labelled`` above the
        labelled training frames (before pretraining).
      workdir.WorkdirConflict: the workdir holds another config's or another data build's outputs.
    """
    given, config = config, resolve_task(config)
    workdir_lib.claim(given, workdir, STAGES, policy)
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    if config.num_labelled > len(data.train_rows):
        raise ValueError(
            f"config.num_labelled={config.num_labelled} but {config.dataset} has only {len(data.train_rows)} labelled "
            f"training frames (label_interval={config.label_interval}); lower num_labelled"
        )
    config = common.resolve_config(config, config.num_labelled)
    resolve_stage(config.keypoints, config.keypoints.num_labelled)
    nossl = config.baseline == "nossl"
    if nossl and config.model.pretrained_segformer:
        raise ValueError("config.baseline='nossl' is randomly initialised; unset config.model.pretrained_segformer")
    use_step = int(config.pretrain.use_step)
    # The pretraining runs whatever use_step reads (0 too: its starting point), so that runs
    # differing only in use_step (a sweep's cells) all hold the one pretraining they share.
    frames = None if nossl else unlabelled.pretraining_frames(config, data)
    if frames is not None:
        resolve_stage(config.pretrain, len(frames))
        check_pretrain_steps(config)
    workdir_lib.check_data(workdir, data.build, STAGES)
    stage.take_stages_from(config, workdir, stages_for(config))
    common.write_config(config, workdir)
    seconds: dict[str, float] = {}
    backbone = None
    if not nossl:
        with stage.timed(seconds, "pretrain"):
            final = pretrain.pretrain(config, workdir, data, frames, mesh)
        backbone = pretrain.backbone_for_downstream(config, workdir, final)
    with stage.timed(seconds, "finetune"):
        model, state, rows, report = finetune.finetune(config, workdir, data, backbone, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict = evaluate.make_predictor(inference_apply(model), variables, pad_multiple=1)
    header = {
        "method": "laparoflow_nossl" if nossl else "laparoflow", "dataset": config.dataset, "task": config.task,
        "split": data.split_info, "num_labelled": int(len(rows)), "labelled_records": [int(r) for r in rows],
        "pretrain_loss": config.pretrain.loss if not nossl else None,
        # The pretraining step whose backbone was read (0: its random start); None for No SSL.
        "pretrain_step": None if nossl else (int(config.pretrain.total_steps) if use_step == -1 else use_step),
        "head": report["head"], "finetune": report,
    }
    tau_path = os.path.join(workdir, "pretrain", "tau.json")
    if os.path.exists(tau_path):
        with open(tau_path, encoding="utf-8") as f:
            header["tau"] = json.load(f)
    with stage.timed(seconds, "eval"):
        summary = evaluate.evaluate_segmentation(
            predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
            class_names=data.class_names, out_dir=os.path.join(workdir, "eval"), header=header,
            batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
        )
    with stage.timed(seconds, "keypoints"):
        scores = keypoint_stage.keypoint_stage(config, workdir, data, backbone, mesh)
    if scores is not None:
        summary["keypoints"] = scores
    else:
        del seconds["keypoints"]
    return common.finish(summary, seconds, workdir)


def inference_apply(model: finetune.BackboneWithHead):
    """The segmentation network in inference mode: (variables, float (B, H, W, 3) in [0, 1])
    → logits (B, H, W, K)."""
    return lambda variables, x: model.apply(variables, x, train=False)


def trained_model(config: ml_collections.ConfigDict, workdir: str, summary: dict[str, Any]) -> inference.TrainedModel:
    """The finished run's backbone and segmentation head (the ``finetune`` stage's final
    variables, or its best validation's under a plateau: ``finetune.final_variables``) for
    ``jaxsurg.predict``; any frame size (no padding), as in evaluation; with the key-point
    head of the ``keypoints`` stage where the run trained one.

    Raises:
      ValueError: the stage's final checkpoint is missing or of another format.
    """
    model = finetune.segmentation_model(config, len(summary["class_names"]), freeze_backbone=config.baseline != "nossl")
    return inference.TrainedModel(
        method=summary["method"], classes=evaluate.classes_fn(inference_apply(model), pad_multiple=1),
        variables=finetune.final_variables(config, workdir),
        frame_size=inference.frame_size(summary), class_names=tuple(summary["class_names"]),
        keypoints=keypoint_stage.trained_detector(config, workdir, summary) if "keypoints" in summary else None,
    )
