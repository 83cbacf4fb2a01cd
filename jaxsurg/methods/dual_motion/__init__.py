"""Dual Motion Flow (Zhao et al., MICCAI 2020): semi-supervised segmentation of sparsely
labelled surgical video by learned motion (paper ``dual_motion_flow_zhao2020``).

Stages, each resumable and each with its own outputs under ``WORKDIR/<stage>/``; an arm
(``config.segment``) runs those it needs (``training_sets.stages_run``): ``dual`` (Dual
MF) all but ``convlstm``; ``single`` (Single MF) no ``compensator``; ``dl_only`` (U-Net11
on the labelled frames alone, the paper's baseline) only ``segment``; ``dual_convlstm``
(Dual MF★) all, its ``segment`` being Dual MF's U-Net11 (skipped when
``convlstm.init_from`` names a finished run's). ``config.motion='optical_flow'`` skips 1.

1. ``flow_predictor``: G (``MotionFlowPredictor``, SDC-Net layout) learns, on windows of 4
   consecutive training frames (labels unused), to predict F̂_{t→t+1} so that
   Î_{t+1} = T(I_t, F̂) ≈ I_{t+1} (Sec. 2.1, Eq. 1), from (I_{t−1}, I_t, I_{t+1}) and the
   optical flows between them (``flow_predictor.inputs='reconstruct'``, Eq. 1's
   G(I_{t0:t+1}, F_{t0+1:t+1}) and the authors' code: G refines the flow into I_{t+1}) or
   from (I_{t−2..t}) and theirs (``'past'``: prediction, the target unseen). Loss =
   w_l1·L1 + w_p·perceptual (VGG16 features) + w_s·‖∇F̂‖₁ (paper 0.7 / 0.2 / 0.1;
   ``flow_predictor.weights='code'``: the authors' 2·L1 + 1000·Gram + 0.2·smooth +
   0.1·image-gradient). Time is reversed with probability ``time_reverse_p`` (0.5), so G
   also predicts backward motion. T = forward splatting (paper) or, with
   ``config.warp='backward'``, backward sampling (the authors' code). G's flow
   normalisation is fixed first from the training set's flows (zero mean, their scale:
   ``flow_predictor/flow_stats.json``, reused on resume) and its output layer starts at
   zero, so a fresh G predicts exactly zero motion both ways (``flow_predictor.flow_stats``
   / ``output_init``: 'sdc' = SDC-Net's constants / initialisation).
2. ``propagate`` (joint propagation, Eq. 2): from every labelled training frame l, G's
   motion is chained step by step in both directions for up to ``propagation_steps`` = k
   steps (the paper's k = 1, 2, 4), inside the video's training part:
   (Î_{l±j}, L̂_{l±j}) = (T(Î_{l±(j−1)}, F̂), T(L̂_{l±(j−1)}, F̂)) — the warped label is
   paired with the warped frame, never with the raw one. G's input is always RAW frames
   (``propagation.history``; edge frames repeated with zero flow at a video's ends) — in
   reconstruct mode the unlabelled frame stepped into, whose image is known (no label is
   read). D_R holds one pair per unlabelled training frame reached: the propagation from
   the NEAREST labelled frame; on a tie (even ``label_interval``) the earlier labelled
   frame propagated forward wins (``training_sets.propagation_plan``). Unlabelled frames
   farther than k from every labelled frame get no D_R pair. Written to ``propagate/d_r``
   (``jaxsurg.data.generated``), with ``propagate/sequence.png`` (the rebuilt training
   sequence: raw frames / propagated frames / their labels, paper Fig. 3) and
   ``propagate/quality.json`` (``propagation_quality``: the propagated labels scored
   against the ground truth the run holds back, per k, next to copying the labelled
   frame's label unchanged and to the same chains run with the stored optical flow; also
   in ``eval/summary.json`` as ``d_r_quality``). ``config.motion='optical_flow'`` chains
   the stored optical flow F_{p→p±1} instead of G's motion (label propagation by optical
   flow, as MFTAPNet, the paper's ref. [10], does; an ablation of G).
3. ``compensator``: the flow compensator (``FlowCompensator``, 5-stage U-Net) trained on
   consecutive training pairs (I0, I1) with F_{0→1} (the dataset's stored flow) and
   F_{1→0} (``flow.optical_flow(I1, I0, config.flow_method)`` on the host), Eq. (4)
   approximations at t = ``compensator.t`` (0.5), the cycle of Eq. (5) and the cycle loss
   (Eq. 6, λ0 = 1.0, λi = 0.8, λ1 = 2.0, λp = 0.01). Then D_C (``compensator/d_c``): for
   every consecutive training pair (f, f + 1) whose frame f has a label pair in the rebuilt
   sequence — (I_f, L_f) for a labelled f, its D_R pair (Î_f, L̂_f) otherwise — the
   compensated pair (T(I_f, F̂_{0→t}), T(L_f, F̂_{0→t})) at position f + t (interpolation
   rate 1: N + M − 1 pairs when every frame has a pair). With a backward warp the refined
   F̂_{t→0} is sampled instead (the flow on the target grid).
4. ``segment``: U-Net11 (``methods.unet11``) with the TernausNet loss on the arm's set,
   D_L ∪ D_R ∪ D_C (``dual``, ``dual_convlstm``), D_L ∪ D_R (``single``) or D_L
   (``dl_only``); the top-level stage block, ``config.epochs`` counted over that set.
5. ``convlstm`` (Dual MF★ only): ``UNet11ConvLSTM`` started from stage 4's U-Net11 (or
   ``convlstm.init_from``'s), on clips of ``convlstm.clip_length`` = 5 consecutive entries
   of the rebuilt sequence 0, 0.5, 1, …, Adam 1e-4 on the ConvLSTM and 1e-5 elsewhere; the
   ``convlstm`` stage block, its epochs counted in clips.
6. ``eval``: ``evaluate.evaluate_segmentation`` on the test frames → ``eval/summary.json``
   (with the optical-flow estimators, the sizes of D_L/D_R/D_C, every stage's epochs,
   steps and epoch size (``budget``), G's flow normalisation and each stage's seconds).

Every stage works on the training frames resized to ``config.resize`` (H, W multiples of
64, G's constraint); U-Net11 trains on random ``config.image_size`` crops of those.
Frame positions in D_R / D_C are indices in the video's training part (0, 1, …). Every
set's size, hence every stage's epoch, is known before anything trains
(``training_sets``); ``config.resolve`` turns epochs into steps from it.

Files, one per part of the paper: ``config.py`` (the settings, ``resolve``);
``training_sets.py`` (what each arm trains on and how big each epoch is);
``flow_predictor.py`` (G and stage 1, Sec. 2.1, Eqs. 1 and 3); ``propagation.py`` (joint
propagation, Eqs. 1–2, and stage 2); ``compensator.py`` (Eqs. 4–6, stage 3 and D_C) with
``compensator_network.py`` (its 5-stage U-Net); ``segment.py`` (Sec. 2.3, stages 4 and 5)
with ``convlstm.py`` (Dual MF★'s network); ``transform.py`` (T(·, F)); ``training.py``
(what the stages share). The training videos in memory are ``jaxsurg.data.sequences``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections

from jaxsurg import evaluate, inference
from jaxsurg.config import check_size
from jaxsurg.data import pipeline
from jaxsurg.data.sequences import load_train_sequence
from jaxsurg.methods import common
from jaxsurg.methods.dual_motion import compensator, flow_predictor, propagation, segment, training_sets
from jaxsurg.methods.dual_motion.config import STAGES, arm_stages, check, resolve
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import stage
from jaxsurg.train import workdir as workdir_lib
from jaxsurg.train.checkpoint import restore_final_variables

# Figures of eval/summary.json that a sweep's tables show beside Dice (jaxsurg.sweep): D_R's
# label Dice against the held-back labels over every k, the copied label's and the stored
# optical flow's on the same chains, D_R's PSNR (dB), and the U-Net11 stage's steps.
SWEEP_FIGURES = {
    "D_R Dice": ("d_r_quality", "all", "label_dice"),
    "copy Dice": ("d_r_quality", "all", "zero_motion_dice"),
    "optical-flow Dice": ("d_r_quality", "all", "optical_flow_dice"),
    "D_R PSNR": ("d_r_quality", "all", "psnr_db"),
    "segment steps": ("budget", "segment", "total_steps"),
}

# The stages a run of this arm compares when it takes another run's (``config.arm_stages``);
# ``jaxsurg.sweep`` reads it to find a cell's source.
stages_for = arm_stages


def run(config: ml_collections.ConfigDict, workdir: str, policy: str = "refuse") -> dict[str, Any]:
    """The stages of ``config.segment``'s arm (``training_sets.stages_run``; each resumed
    or skipped when complete); returns the summary written to ``eval/summary.json``.

    ``policy``: what to do with a workdir made by another config (``jaxsurg.train.workdir``).

    Raises:
      ValueError: a bad config value (``image_size`` and ``config.check`` before any data
        is built; the rest by ``config.resolve``), or a ``convlstm.init_from`` that is no
        finished Dual MF run (before any stage trains).
      workdir.WorkdirConflict: the workdir holds another config's or another data build's outputs.
    """
    check_size(config, "image_size", 32, what="U-Net11 halves the frame five times")
    check(config)
    workdir_lib.claim(config, workdir, STAGES, policy)
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    config = resolve(config, data)
    workdir_lib.check_data(workdir, data.build, STAGES)
    stage.take_stages_from(config, workdir, stages_for(config))
    common.write_config(config, workdir)
    num_classes = len(data.class_names)
    runs = training_sets.stages_run(config)
    seconds: dict[str, float] = {}
    with stage.timed(seconds, "load"):
        seq = load_train_sequence(config, data)
    sizes = training_sets.training_set_sizes(config, seq)
    counted = training_sets.training_set_sizes(config, training_sets.layout_of(data))
    if sizes != counted:
        raise RuntimeError(f"the training sequence's sets {sizes} differ from those config.resolve counted {counted}")
    logging.info("dual motion (%s): %d training frames, %d labelled; stages %s", config.segment, len(seq), int(seq.labelled.sum()), runs)
    g_model = g_params = d_r = d_c = params = None
    if "convlstm" in runs and config.convlstm.init_from:  # checked before anything trains
        params = segment.load_segment_params(config, config.convlstm.init_from, num_classes)
    if "flow_predictor" in runs:
        with stage.timed(seconds, "flow_predictor"):
            g_model, g_params = flow_predictor.train_flow_predictor(config, workdir, seq, mesh)
    if "propagate" in runs:
        with stage.timed(seconds, "propagate"):
            d_r = propagation.propagate(config, workdir, seq, g_model, g_params, num_classes)
    if "compensator" in runs:
        with stage.timed(seconds, "compensator"):
            c_model, c_params = compensator.train_compensator(config, workdir, seq, mesh)
            d_c = compensator.generate_d_c(config, workdir, seq, propagation.d_r_by_row(seq, d_r), c_model, c_params, num_classes)
    if "segment" in runs:
        with stage.timed(seconds, "segment"):
            model, params = segment.segment(config, workdir, seq, d_r, d_c, num_classes, mesh, sizes["examples"])
    if "convlstm" in runs:
        with stage.timed(seconds, "convlstm"):
            model, params = segment.convlstm_stage(config, workdir, seq, d_r, d_c, num_classes, mesh, params, sizes["clips"])
    with stage.timed(seconds, "eval"):
        summary = evaluate_test_frames(config, workdir, data, model, params, sizes)
    return common.finish(summary, seconds, workdir)


def evaluate_test_frames(config, workdir: str, data: pipeline.LoadedDataset, model, params, sizes: dict[str, int]) -> dict[str, Any]:
    """Stage ``eval``: the network of the arm's last stage (Dual MF★ through
    ``ClipPredictor``) on the test frames with ``evaluate.evaluate_segmentation``, which
    writes ``eval/``. The summary also holds the run's settings; ``train_sizes`` (the
    arm's D_L, D_R, D_C and their sum ``examples``; Dual MF★'s ``clips``); ``budget``
    (``training_sets.budget``: per training stage its epochs, resolved ``total_steps``,
    ``batch_size``, ``examples_per_epoch`` and ``epochs_trained``, so arms can be compared
    at equal epochs or at equal steps); ``flow_normalisation`` (G's constants,
    ``flow_predictor/flow_stats.json``) and ``propagate/quality.json`` as ``d_r_quality``
    where the arm has them."""
    if config.segment == "dual_convlstm":
        predict = segment.ClipPredictor(model, jax.device_get(params), config.convlstm.clip_length)
    else:
        predict = evaluate.make_predictor(model.apply, {"params": params})
    runs = training_sets.stages_run(config)
    train_sizes = {k: sizes[k] for k in ("D_L", "D_R", "D_C", "examples")}
    if config.segment == "dual_convlstm":
        train_sizes["clips"] = sizes["clips"]
    header = {
        "method": config.method, "segment": config.segment, "dataset": config.dataset, "task": config.task,
        "split": data.split_info, "label_interval": config.label_interval, "train_sizes": train_sizes,
        "budget": training_sets.budget(config, sizes), "stages": list(runs),
        "optical_flow": {"forward": f"stored by the {config.dataset} builder", "backward": config.flow_method},
        "warp": config.warp, "propagation_steps": config.propagation_steps, "vgg16_weights": config.vgg16_weights,
        "motion": config.motion,
    }
    if "flow_predictor" in runs:
        header["flow_predictor_inputs"] = config.flow_predictor.inputs
        stats_path = os.path.join(workdir, "flow_predictor", flow_predictor.FLOW_STATS)
        if os.path.exists(stats_path):
            with open(stats_path, encoding="utf-8") as f:
                header["flow_normalisation"] = json.load(f)
    quality_path = os.path.join(workdir, "propagate", propagation.QUALITY)
    if "propagate" in runs and os.path.exists(quality_path):
        with open(quality_path, encoding="utf-8") as f:
            header["d_r_quality"] = json.load(f)
    return evaluate.evaluate_segmentation(
        predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
        class_names=data.class_names, out_dir=os.path.join(workdir, "eval"), header=header,
        batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
    )


def trained_model(config: ml_collections.ConfigDict, workdir: str, summary: dict[str, Any]) -> inference.TrainedModel:
    """The finished run's segmentation network for ``jaxsurg.predict``: U-Net11 (the
    ``segment`` stage's final parameters), or for Dual MF★ (``segment='dual_convlstm'``) the
    ConvLSTM U-Net11 of the ``convlstm`` stage on clips of the ``convlstm.clip_length``
    latest frames.

    Raises:
      ValueError: the stage's final checkpoint is missing or of another format.
    """
    if config.segment == "dual_convlstm":
        variables = restore_final_variables(workdir, "convlstm", config.convlstm.total_steps, ("params",))
    else:
        variables = restore_final_variables(workdir, "segment", config.total_steps, ("params",))
    common_fields = dict(method=summary["method"], variables=variables, frame_size=inference.frame_size(summary), class_names=tuple(summary["class_names"]))
    model = segment.build_network(config, len(summary["class_names"]))
    if config.segment == "dual_convlstm":
        return inference.TrainedModel(classes=segment.clip_classes_fn(model), clip_length=int(config.convlstm.clip_length), **common_fields)
    return inference.TrainedModel(classes=evaluate.classes_fn(model.apply), **common_fields)
