"""PAT (Ross et al., "Exploiting the potential of unlabeled endoscopic video data with
self-supervised learning", IJCARS 2018): pretrain the segmentation U-Net on an auxiliary task,
re-colourisation of unlabelled frames, then fine-tune it for instrument segmentation.

Stages, each resumable from its own checkpoints (``WORKDIR/<stage>/checkpoints``):

1. ``pretrain`` (``pretraining``; skipped with ``pretrain.enabled=False``, the paper's "no
   pretraining" arm): the a*, b* histograms of the unlabelled frames and the rebalancing
   weights (``WORKDIR/pretrain/histograms.npz``, ``.json``, ``.png``), then the GAN — G, a
   U-Net11 from L to (a, b), against D, ResNet18 or PatchGAN (sec. 2.2.1, Eqs. 1–5);
   ``WORKDIR/pretrain/recolor.png``.
2. ``ext`` (PAT-Ext, sec. 2.2.3; only with ``ext.enabled``): the pretrained U-Net11, its
   last layer re-initialised, trained with the fine-tuning's recipe on every labelled
   training frame of a related dataset (``ext.dataset``, build ``ext.build``; for the real
   clip the synthetic data: a sim-to-real stage); ``WORKDIR/ext/split.json``, ``plateau.json``.
3. ``finetune`` (``fine_tuning``): the same U-Net11, every layer but the last (``final``)
   from G (from the ``ext`` stage under PAT-Ext), binary cross-entropy on the labelled frames, learning rate × 0.1 after a
   plateau of the validation loss (sec. 2.2.2); ``WORKDIR/finetune/split.json`` (the
   training and validation frames), ``plateau.json``.
4. ``eval``: the TernausNet binary protocol on the test frames (``eval/summary.json``,
   overlays).

Pieces: ``colour_rebalancing`` (histograms, weights P^c of Eq. 3), ``recolorization`` (the
L → ab scaling, the losses, the GAN step), ``jaxsurg.models.discriminators``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxsurg import evaluate, inference
from jaxsurg.config import check_size, resolve_stage
from jaxsurg.data import datasets, pipeline
from jaxsurg.methods import common
from jaxsurg.methods.pat import colour_rebalancing, fine_tuning, pretraining, recolorization
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import stage
from jaxsurg.train import workdir as workdir_lib
from jaxsurg.train.checkpoint import restore_final_variables
from jaxsurg.train.state import make_optimizer

__all__ = ["STAGES", "check_config", "check_ext", "ext_data", "run", "trained_model"]

# The stages and the config keys their outputs depend on (``config.stages_from``, --resume).
STAGES = (
    stage.StageSpec("pretrain", ("pretrain", "model")),
    stage.StageSpec("ext", ("ext", "finetune")),
    stage.StageSpec("finetune", stage.MAIN_STAGE + ("finetune", "num_labelled", "labelled_fraction", "labelled_subset", "augment")),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no data, before anything is built.

    Raises:
      ValueError: a task other than binary; ``resize`` unset or not multiples of 32 (U-Net11
        halves the frame five times) or under 32 (ResNet18); an unknown discriminator,
        rebalancing form, D mode or pretraining source; "video" without ``video_dir`` or a
        ``video_dir`` without "video"; a pretrain optimiser other than Adam with the step
        schedule; β, learning rates, mix, sigma, fractions, plateau settings out of range;
        a bad main-stage optimiser (``make_optimizer``'s message); ``ext`` enabled without
        pretraining, on an unknown dataset, or on the target data itself (same dataset,
        build and data_dir); a negative ``labelled_subset``.
    """
    p, f = config.pretrain, config.finetune
    if config.task != "binary":
        raise ValueError(f"config.task={config.task!r}: PAT segments instruments vs background; only 'binary' is defined")
    if config.resize is None:
        raise ValueError("config.resize is unset: PAT needs the working frame size (H, W), e.g. --config.resize='(96, 128)'")
    h, w = check_size(config, "resize", 32, what="U-Net11 halves the frame five times")
    if p.discriminator not in pretraining.DISCRIMINATORS:
        raise ValueError(f"config.pretrain.discriminator={p.discriminator!r} is unknown; known: {pretraining.DISCRIMINATORS}")
    if p.rebalancing not in colour_rebalancing.FORMS:
        raise ValueError(f"config.pretrain.rebalancing={p.rebalancing!r} is unknown; known: {colour_rebalancing.FORMS}")
    if p.discriminator_mode not in recolorization.D_MODES:
        raise ValueError(f"config.pretrain.discriminator_mode={p.discriminator_mode!r} is unknown; known: {recolorization.D_MODES}")
    if not p.sources or any(s not in pretraining.SOURCES for s in p.sources):
        raise ValueError(f"config.pretrain.sources={tuple(p.sources)!r}: expected a non-empty subset of {pretraining.SOURCES}")
    if "video" in p.sources and not p.video_dir:
        raise ValueError("config.pretrain.sources has 'video' but config.pretrain.video_dir is empty")
    if p.video_dir and "video" not in p.sources:
        raise ValueError(f"config.pretrain.video_dir={p.video_dir!r} is set but 'video' is not in config.pretrain.sources; add it or unset video_dir")
    if p.enabled and min(h, w) < 32:
        raise ValueError(f"config.resize={(h, w)}: the discriminators need frames of at least 32×32")
    if p.optimizer != "adam" or p.lr_schedule != "step" or p.warmup_steps:
        raise ValueError(
            f"config.pretrain: optimizer={p.optimizer!r}, lr_schedule={p.lr_schedule!r}, warmup_steps={p.warmup_steps}: "
            "the GAN's optimisers are Adam with beta1/beta2 and the step schedule (pix2pix's); no warm-up"
        )
    if not (0.0 <= p.beta1 < 1.0 and 0.0 <= p.beta2 < 1.0):
        raise ValueError(f"config.pretrain.beta1={p.beta1}, beta2={p.beta2}: Adam's betas must be in [0, 1)")
    if p.learning_rate <= 0 or p.discriminator_learning_rate <= 0:
        raise ValueError(f"config.pretrain.learning_rate={p.learning_rate}, discriminator_learning_rate={p.discriminator_learning_rate}: must be > 0")
    if not 0.0 < p.rebalancing_mix <= 1.0 or p.rebalancing_sigma < 0:
        raise ValueError(f"config.pretrain.rebalancing_mix={p.rebalancing_mix} must be in (0, 1], rebalancing_sigma={p.rebalancing_sigma} >= 0")
    if p.histogram_frames < 0 or p.picture_frames < 0 or p.patchgan_ndf < 1:
        raise ValueError(
            f"config.pretrain.histogram_frames={p.histogram_frames}, picture_frames={p.picture_frames} must be >= 0, "
            f"patchgan_ndf={p.patchgan_ndf} >= 1"
        )
    if config.model.num_filters < 1:
        raise ValueError(f"config.model.num_filters={config.model.num_filters}: must be >= 1")
    if not 0.0 < config.labelled_fraction <= 1.0 or config.num_labelled < 0:
        raise ValueError(
            f"config.labelled_fraction={config.labelled_fraction} must be in (0, 1] (the paper's k) and "
            f"config.num_labelled={config.num_labelled} >= 0 (0 = use the fraction)"
        )
    if config.labelled_subset < 0:
        raise ValueError(f"config.labelled_subset={config.labelled_subset}: must be >= 0 (the s-th random labelled subset)")
    if not 0.0 < f.validation_fraction < 1.0:
        raise ValueError(f"config.finetune.validation_fraction={f.validation_fraction}: expected a fraction in (0, 1)")
    if f.plateau_epochs < 0 or not 0.0 < f.plateau_factor <= 1.0 or f.plateau_threshold < 0:
        raise ValueError(
            f"config.finetune: plateau_epochs={f.plateau_epochs} must be >= 0, plateau_factor={f.plateau_factor} in (0, 1], "
            f"plateau_threshold={f.plateau_threshold} >= 0"
        )
    make_optimizer(config)
    check_ext(config)


def check_ext(config: ml_collections.ConfigDict) -> None:
    """PAT-Ext's checks (``config.ext``), before anything is built.

    Raises:
      ValueError: ``ext.enabled`` without ``pretrain.enabled`` (PAT-Ext extends PAT's
        pretraining); an unknown ``ext.dataset``; ``ext`` naming the target data itself
        (the same dataset, build and data_dir: that would be more fine-tuning on the target,
        not a related dataset); ``ext.label_interval`` < 1; a bad ``ext`` optimiser.
    """
    e = config.ext
    if not e.enabled:
        return
    if not config.pretrain.enabled:
        raise ValueError("config.ext.enabled=True needs config.pretrain.enabled=True: PAT-Ext is PAT's pretraining, then the related dataset")
    if e.dataset not in datasets.DATASETS:
        raise ValueError(f"config.ext.dataset={e.dataset!r} is unknown; known datasets: {sorted(datasets.DATASETS)}")
    target_build = pipeline.builder_config_name(config) or ""
    if e.dataset == config.dataset and (e.build or target_build) == target_build and e.data_dir == config.data_dir:
        raise ValueError(
            f"config.ext: dataset={e.dataset!r}, build={e.build!r}, data_dir={e.data_dir!r} is the target data itself; "
            "PAT-Ext needs a related labelled dataset (e.g. --config.ext.build=related for the synthetic data)"
        )
    if e.label_interval < 1:
        raise ValueError(f"config.ext.label_interval={e.label_interval}: must be >= 1 (1 = every labelled training frame)")
    make_optimizer(e)


def ext_data(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, pipeline.LoadedDataset, Any, Any]:
    """PAT-Ext's related dataset: (its config — ``config`` with ``ext``'s dataset, data_dir
    and label_interval, every labelled frame asked — , the loaded data, the training rows,
    the validation rows). All of its labelled training frames are used, split by
    ``fine_tuning.labelled_split`` (subset 0, fraction 1: the same split whatever the
    target's ``labelled_subset``, so a study's cells share one ext stage).

    Raises:
      ValueError: ``pipeline.load``'s; fewer than 2 labelled frames."""
    e = config.ext
    c = ml_collections.ConfigDict(config.to_dict())
    c.dataset, c.data_dir, c.label_interval = e.dataset, e.data_dir, int(e.label_interval)
    c.num_labelled, c.labelled_fraction, c.labelled_subset = 0, 1.0, 0
    data = pipeline.load(c, build=e.build)
    train_rows, val_rows = fine_tuning.labelled_split(data.train_rows, c)
    return c, data, train_rows, val_rows


def run(config: ml_collections.ConfigDict, workdir: str, policy: str = "refuse") -> dict[str, Any]:
    """All stages; returns the summary written to ``eval/summary.json``. With
    ``config.study`` = "fractions", the paper's grid instead (``study.run_study``: a run
    per cell under ``WORKDIR/study/``, then ``study.json``, ``study.png``).

    ``policy``: what to do with a workdir made by another config (``jaxsurg.train.workdir``).

    Raises:
      ValueError: ``check_config``'s errors (before any data is built); more labelled frames
        asked than exist (before pretraining).
      workdir.WorkdirConflict: the workdir holds another config's or another data build's outputs.
    """
    if config.study:  # the paper's grid: one run of this function per cell
        from jaxsurg.methods.pat import study

        return study.run_study(config, workdir, policy)
    check_config(config)
    workdir_lib.claim(config, workdir, STAGES, policy)
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    train_rows, val_rows = fine_tuning.labelled_split(data.train_rows, config)
    config = common.resolve_config(config, len(train_rows))
    enabled, extended = bool(config.pretrain.enabled), bool(config.ext.enabled)
    examples = pretraining.pretraining_examples(config, data) if enabled else None
    if examples is not None:
        resolve_stage(config.pretrain, len(examples))
    if extended:  # the related dataset is built and checked before the pretraining
        ext_config, ext_loaded, ext_train, ext_val = ext_data(config)
        resolve_stage(config.ext, len(ext_train))
    workdir_lib.check_data(workdir, data.build, STAGES)
    stage.take_stages_from(config, workdir, STAGES)
    common.write_config(config, workdir)
    seconds: dict[str, float] = {}
    generator, pretrain_record = None, None
    if enabled:
        with stage.timed(seconds, "pretrain"):
            generator, pretrain_record = pretraining.pretrain(config, workdir, data, examples, mesh)
    init, ext_record = generator, None
    if extended:
        with stage.timed(seconds, "ext"):
            _, ext_state, ext_plateau = fine_tuning.finetune(
                ext_config, workdir, ext_loaded, ext_train, ext_val, generator, mesh, name="ext", block=config.ext, seed_offset=2,
            )
        init = {"params": ext_state.params}
        ext_record = {
            "dataset": ext_config.dataset, "build": ext_loaded.build, "num_train": int(len(ext_train)), "num_validation": int(len(ext_val)),
            "steps": int(config.ext.total_steps), "best_validation_loss": ext_plateau["best_validation_loss"],
        }
    with stage.timed(seconds, "finetune"):
        model, state, plateau = fine_tuning.finetune(config, workdir, data, train_rows, val_rows, init, mesh)
    predict = evaluate.make_predictor(segmenter_apply(model), {"params": state.params})
    header = {
        "method": ("pat_ext" if extended else "pat") if enabled else "pat_no_pretraining", "dataset": config.dataset, "task": config.task,
        "split": data.split_info, "labelled_fraction": config.labelled_fraction, "num_labelled": int(len(train_rows)),
        "num_validation": int(len(val_rows)), "labelled_records": [int(r) for r in train_rows],
        "validation_records": [int(r) for r in val_rows], "pretrain": pretrain_record, "ext": ext_record,
        "plateau": {k: plateau[k] for k in ("reductions", "best_validation_loss", "final_learning_rate", "epochs")},
    }
    with stage.timed(seconds, "eval"):
        summary = evaluate.evaluate_segmentation(
            predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
            class_names=data.class_names, out_dir=f"{workdir}/eval", header=header,
            batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
        )
    return common.finish(summary, seconds, workdir)


def segmenter_apply(model):
    """The fine-tuned U-Net11 on RGB frames in [0, 1]: float (B, H, W, 3) → logits (B, H, W,
    1), through the scaled L channel it was trained on (``recolorization.to_lab_input``)."""
    return lambda variables, x: model.apply(variables, recolorization.to_lab_input(x)[0])


def trained_model(config: ml_collections.ConfigDict, workdir: str, summary: dict[str, Any]) -> inference.TrainedModel:
    """The finished run's fine-tuned U-Net11 (the ``finetune`` stage's final parameters) for
    ``jaxsurg.predict``.

    Raises:
      ValueError: the stage's final checkpoint is missing (a study cell's are deleted after
        its evaluation) or of another format.
    """
    model = fine_tuning.build_segmenter(config)
    return inference.TrainedModel(
        method=summary["method"], classes=evaluate.classes_fn(segmenter_apply(model)),
        variables=restore_final_variables(workdir, "finetune", config.total_steps, ("params",)),
        frame_size=inference.frame_size(summary), class_names=tuple(summary["class_names"]),
    )
