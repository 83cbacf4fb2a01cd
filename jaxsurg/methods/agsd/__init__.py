"""AGSD (Liu et al., MICCAI 2020): unsupervised binary instrument segmentation — hand-crafted
cues fused into anchors (pseudo labels), spread by a semantic diffusion loss over adjacent
frames. No manual annotation is used for training.

Stages:

1. ``anchors``: colour, objectness and location cues of every frame (``cues``), fused into
   a_pos and a_neg (``anchor_generation``), computed once per set of frames and stored
   beside the built datasets; ``WORKDIR/anchors/cues.json`` (each cue's pixel AUC against
   the ground truth, where the dataset has it) and ``anchors.png``.
2. ``train``: the network (``networks``: the paper's vanilla U-Net or the code's ResNet18
   U-Net) on pairs of consecutive frames (``frames``) with L_anc (``anchor_loss``, Eq. 1)
   and the semantic diffusion hinges (``semantic_diffusion``, Eq. 2–4) on frozen features
   (``features``: VGG16 relu5_3, or a Laparoflow-SSL run's backbone), ``training`` (Eq. 5).
3. ``eval``: masks by Otsu's threshold or the code's fixed 0.6 (``prediction``), scored
   with the TernausNet binary protocol; summary.json also scores the anchors alone
   (Otsu on a_pos and on 1 − a_neg, the paper's Table 2) on the same frames.

Settings ``SS`` / ``TT``: see ``frames``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsurg import evaluate, inference, metrics
from jaxsurg.config import check_size, resolve_stage
from jaxsurg.data import pipeline
from jaxsurg.methods import common
from jaxsurg.methods.agsd import anchor_generation, anchor_loss, cues, features, frames as frames_lib, networks, prediction, semantic_diffusion, training
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import stage
from jaxsurg.train import workdir as workdir_lib
from jaxsurg.train.checkpoint import restore_final_variables
from jaxsurg.train.writers import write_json

__all__ = ["STAGES", "check_config", "run", "trained_model"]

STAGES = (
    stage.StageSpec("anchors", ("setting", "video_dir", "video_builder_config", "cues")),
    # ``predict`` only changes the evaluation, which every run redoes; it is listed here so
    # that --resume and stages_from compare it (a changed threshold retrains, to be safe).
    stage.StageSpec("train", stage.MAIN_STAGE + ("model", "loss", "features", "vgg16_weights", "diffusion_scale", "crop_scale", "augment", "predict")),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no data, before anything is built.

    Raises:
      ValueError: a task other than binary, an unknown setting, arch, loss form, margins,
        terms, features or threshold; a frame size that is not a multiple of 32 (both
        networks halve it five times, or four); a diffusion scale outside (0, 1].
      FileNotFoundError: a BING folder without the model files.
    """
    if config.task != "binary":
        raise ValueError(f"config.task={config.task!r}: AGSD segments instruments vs the rest; only 'binary' is defined")
    if config.setting not in frames_lib.SETTINGS:
        raise ValueError(f"config.setting={config.setting!r} is unknown; known: {frames_lib.SETTINGS}")
    if config.resize is None:
        raise ValueError("config.resize is unset: AGSD needs the working frame size (H, W), e.g. --config.resize='(128, 224)'")
    check_size(config, "resize", 32, what="the networks halve the frame up to five times")
    if config.model.arch not in networks.ARCHS:
        raise ValueError(f"config.model.arch={config.model.arch!r} is unknown; known: {networks.ARCHS}")
    if config.model.resnet18_weights and config.model.arch != "resnet18_unet":
        raise ValueError("config.model.resnet18_weights is set but config.model.arch is not 'resnet18_unet'")
    if config.model.resnet18_weights and not os.path.isfile(config.model.resnet18_weights):
        raise FileNotFoundError(f"config.model.resnet18_weights={config.model.resnet18_weights!r}: no such file")
    if config.loss.anchor not in anchor_loss.FORMS:
        raise ValueError(f"config.loss.anchor={config.loss.anchor!r} is unknown; known: {anchor_loss.FORMS}")
    if config.loss.margins not in semantic_diffusion.MARGINS:
        raise ValueError(f"config.loss.margins={config.loss.margins!r} is unknown; known: {sorted(semantic_diffusion.MARGINS)}")
    training.parse_terms(config.loss.terms)
    run_dir = features.laparoflow_dir(config.features)
    if run_dir is not None and not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise ValueError(f"config.features={config.features!r}: {run_dir!r} has no config.json (not a finished jaxsurg run)")
    if not 0 < config.diffusion_scale <= 1:
        raise ValueError(f"config.diffusion_scale={config.diffusion_scale}: expected a fraction of the frame size in (0, 1]")
    if not 0 <= config.loss.edge_margin < 0.25:
        raise ValueError(f"config.loss.edge_margin={config.loss.edge_margin}: expected a fraction of the frame's shorter side in [0, 0.25)")
    if config.predict.threshold not in prediction.METHODS:
        raise ValueError(f"config.predict.threshold={config.predict.threshold!r} is unknown; known: {prediction.METHODS}")
    frames_lib.pair_augment(config)
    anchor_generation.check_cues(config)


def anchor_scores(frames: frames_lib.AgsdFrames, anchors: anchor_generation.Anchors, class_names: tuple[str, ...]) -> dict[str, Any]:
    """The anchors alone (paper Table 2): Otsu on a_pos and on 1 − a_neg, scored on the
    evaluated frames with the TernausNet binary protocol: {name: {iou_mean, iou_std,
    dice_mean, dice_std}}."""
    rows = np.flatnonzero(frames.evaluated)
    truth = jnp.asarray(frames.truth[rows].astype(np.int32))
    out = {}
    for name, maps in (("a_pos", anchors.a_pos[rows]), ("1 - a_neg", 1 - anchors.a_neg[rows].astype(np.float32))):
        masks, _ = prediction.binarize(maps.astype(np.float32), "otsu")
        s = metrics.summarize(jax.device_get(metrics.confusion_counts(jnp.asarray(masks), truth, len(class_names))), class_names)
        out[name] = {k: round(getattr(s, k), 5) for k in ("iou_mean", "iou_std", "dice_mean", "dice_std")}
    return out


def diffusion_view(frames: frames_lib.AgsdFrames, loss: ml_collections.ConfigDict) -> np.ndarray | None:
    """The pixels the semantic diffusion pools (ours; the paper pools all): bool (N, H, W),
    inside the endoscope's field of view when ``loss.field_of_view`` and farther than
    ``loss.edge_margin`` × the frame's shorter side (pixels, rounded) from every image edge;
    None when neither is asked for (every pixel, the paper's pooling). ``check_config``
    has checked the margin."""
    if not loss.field_of_view and not loss.edge_margin:
        return None
    n, h, w = frames.images.shape[:3]
    view = anchor_generation.field_of_view(frames) if loss.field_of_view else np.ones((n, h, w), bool)
    m = int(round(loss.edge_margin * min(h, w)))
    if m:
        view[:, :m], view[:, h - m :], view[:, :, :m], view[:, :, w - m :] = False, False, False, False
    return view


def network_auc(frames: frames_lib.AgsdFrames, rows: np.ndarray, probabilities: np.ndarray) -> float | None:
    """The threshold-free score of the network: the pixel AUC (``cues.pixel_auc``) of its p
    (float (len(rows), H, W), in the order of ``rows``) for instrument vs the rest, over the
    evaluated frames ``rows``, inside the field of view and where the truth is known — the
    figure cues.json gives for each cue, so the two compare. None where only one class is
    present."""
    truth = frames.truth[rows]
    valid = (truth != 255) & anchor_generation.field_of_view(frames, rows)
    auc = cues.pixel_auc(probabilities.astype(np.float32), truth == 1, valid)
    return None if np.isnan(auc) else round(float(auc), 4)


def _copy_anchor_files(anchors: anchor_generation.Anchors, workdir: str) -> None:
    out = os.path.join(workdir, "anchors")
    os.makedirs(out, exist_ok=True)
    for name in ("cues.json", "anchors.png"):
        shutil.copyfile(os.path.join(anchors.directory, name), os.path.join(out, name))
    write_json(os.path.join(out, "store.json"), {"directory": anchors.directory})


def run(config: ml_collections.ConfigDict, workdir: str, policy: str = "refuse") -> dict[str, Any]:
    """All stages; returns the summary written to ``eval/summary.json``.

    ``policy``: what to do with a workdir made by another config (``jaxsurg.train.workdir``).

    Raises:
      ValueError / FileNotFoundError: ``check_config``'s errors (before any data is built);
        no consecutive training frames or no labelled frame to score.
      workdir.WorkdirConflict: the workdir holds another config's or another data build's outputs.
    """
    check_config(config)
    workdir_lib.claim(config, workdir, STAGES, policy)
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    seconds: dict[str, float] = {}
    with stage.timed(seconds, "frames"):
        frames = frames_lib.load_frames(config, data)
    config = ml_collections.ConfigDict(config.to_dict())
    num_pairs = len(frames.pair_starts())
    resolve_stage(config, num_pairs)
    workdir_lib.check_data(workdir, data.build, STAGES)
    stage.take_stages_from(config, workdir, STAGES)
    common.write_config(config, workdir)
    with stage.timed(seconds, "anchors"):
        anchors = anchor_generation.anchors_for(config, frames)
        stage.on_host0(lambda: _copy_anchor_files(anchors, workdir), "anchor files")
    terms = training.parse_terms(config.loss.terms)
    feats = None
    if terms & {"fg", "bg"}:
        with stage.timed(seconds, "features"):
            extract = features.make_extractor(config.features, config.vgg16_weights, tuple(config.resize), config.seed + 3)
            feats = features.compute_features(extract, frames.images, batch_size=config.eval_batch_size)
    view = diffusion_view(frames, config.loss) if feats is not None else None
    model = networks.build_network(config.model)
    with stage.timed(seconds, "train"):
        state = stage.train(
            "train", config, config, workdir, training.init_state(config, model, mesh), training.make_train_step(model, config, mesh),
            frames_lib.Pairs(frames, anchors.a_pos, anchors.a_neg, feats, view), frames_lib.pair_augment(config), mesh,
        )
    variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    predict, record = prediction.make_predictor(lambda v, x: model.apply(v, x, train=False), variables, config.predict)
    rows = np.flatnonzero(frames.evaluated)
    header = {
        "method": "agsd", "dataset": config.dataset, "task": config.task, "setting": config.setting, "split": data.split_info,
        "loss_terms": sorted(terms), "anchor_loss": config.loss.anchor, "margins": config.loss.margins,
        "features": features.describe(config.features, config.vgg16_weights) if feats is not None else None,
        "arch": config.model.arch, "frames": {
            "trained": int(frames.trained.sum()), "pairs": num_pairs, "evaluated": int(len(rows)),
            "video": int(sum(p == "video" for p in frames.part)),
        },
        "note": "per_frame.jsonl 'record' is the index into eval/frames.jsonl (part and dataset record of each scored frame)",
    }
    with stage.timed(seconds, "eval"):
        eval_dir = os.path.join(workdir, "eval")
        summary = evaluate.evaluate_segmentation(
            predict, ((int(i), {"image": frames.images[i], "mask": frames.truth[i]}) for i in rows), num_frames=len(rows),
            class_names=data.class_names, out_dir=eval_dir, header=header,
            batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
        )
        thresholds = np.asarray(record["thresholds"])
        summary["threshold"] = {
            "method": config.predict.threshold, "mean": round(float(np.mean(thresholds)), 4), "min": round(float(np.min(thresholds)), 4),
            "max": round(float(np.max(thresholds)), 4),
            **({"fixed_threshold": config.predict.fixed_threshold, "min_area_fraction": config.predict.min_area_fraction} if config.predict.threshold == "fixed" else {}),
        }
        summary["anchors_alone"] = anchor_scores(frames, anchors, data.class_names)
        summary["cues_auc"] = anchors.auc.get("auc", {})
        probabilities = np.stack(record["probabilities"])
        summary["network_auc"] = network_auc(frames, rows, probabilities)
        stage.on_host0(lambda: cv2.imwrite(os.path.join(eval_dir, "probability.png"), prediction.probability_picture(
            frames.images[rows], probabilities, anchors.a_pos[rows], frames.truth[rows], thresholds)[..., ::-1]), "probability picture")

        def frames_file():
            with open(os.path.join(eval_dir, "frames.jsonl"), "w", encoding="utf-8") as f:
                for i in rows:
                    f.write(json.dumps({"index": int(i), "part": frames.part[i], "record": int(frames.record[i])}) + "\n")

        stage.on_host0(frames_file, "frames listed")
    return common.finish(summary, seconds, workdir)


def trained_model(config: ml_collections.ConfigDict, workdir: str, summary: dict[str, Any]) -> inference.TrainedModel:
    """The finished run's network (the ``train`` stage's final variables) with its
    ``config.predict`` threshold, for ``jaxsurg.predict``: Otsu's threshold per frame
    (exportable), or the fixed threshold with small components removed on the host.

    Raises:
      ValueError: the stage's final checkpoint is missing or of another format.
    """
    model = networks.build_network(config.model)
    classes, postprocess = prediction.classes_fn(lambda v, x: model.apply(v, x, train=False), config.predict)
    return inference.TrainedModel(
        method=summary["method"], classes=classes, variables=restore_final_variables(workdir, "train", config.total_steps),
        frame_size=inference.frame_size(summary), class_names=tuple(summary["class_names"]), postprocess=postprocess,
        postprocess_note=f"predict.threshold='fixed' removes components under {config.predict.min_area_fraction} of the frame",
    )
