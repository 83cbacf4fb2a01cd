"""Dual Motion Flow's settings: the values ``config.segment``, ``config.warp``,
``config.motion``, ``config.flow_predictor.weights`` / ``inputs`` / ``flow_stats`` accept,
the loss weights of the flow predictor (Sec. 2.1, Eq. 3, and the authors' code), the stages
(``STAGES``; ``arm_stages``: those an arm runs, for ``config.stages_from``) and
``resolve``, which checks a config against them and fills the values that depend on the
data — every stage's steps from its epochs over the arm's own training set
(``training_sets.training_set_sizes``).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxsurg.config import resolve_stage
from jaxsurg.data import pipeline
from jaxsurg.methods import common
from jaxsurg.methods.dual_motion import training_sets
from jaxsurg.train import stage

# The stages and the config keys their outputs depend on (``config.stages_from``, --resume).
# ``segment`` is U-Net11 on the arm's set (every arm; Dual MF★'s is Dual MF's), ``convlstm``
# Dual MF★'s ConvLSTM U-Net11 started from it.
STAGES = (
    stage.StageSpec("flow_predictor", ("flow_predictor", "warp", "motion", "vgg16_weights", "flow_method")),
    stage.StageSpec("propagate", ("propagation_steps",)),
    stage.StageSpec("compensator", ("compensator",)),
    # Dual MF★ trains Dual MF's U-Net11 in its segment stage: one stage, shared through stages_from.
    stage.StageSpec("segment", stage.MAIN_STAGE + ("segment", "model", "image_size", "augment", "clip_length", "batch_keys"),
                    same=(("segment", (("dual_convlstm", "dual"),)),)),
    stage.StageSpec("convlstm", ("convlstm",)),
)
SEGMENT_MODES = tuple(training_sets.ARM_SETS)  # dl_only | single | dual | dual_convlstm
WARPS = ("forward", "backward")
MOTIONS = ("learned", "optical_flow")
G_INPUTS = ("reconstruct", "past")  # flow_predictor.inputs (flow_predictor.g_inputs)
FLOW_STATS_MODES = ("training", "sdc")  # flow_predictor.flow_stats (flow_predictor.flow_statistics)
G_MULTIPLE = 64  # MotionFlowPredictor needs H, W multiples of 64
# The flow predictor's loss weights: the paper's Sec. 2.1 and the authors' code (REFERENCE.md).
G_LOSS_WEIGHTS = {
    "paper": dict(l1=0.7, perceptual=0.2, style=0.0, smooth=0.1, image_gradient=0.0),
    "code": dict(l1=2.0, perceptual=0.0, style=1000.0, smooth=0.2, image_gradient=0.1),
}


def arm_stages(config: ml_collections.ConfigDict) -> tuple[stage.StageSpec, ...]:
    """The ``STAGES`` that ``config``'s arm runs (``training_sets.stages_run``), for
    ``stage.take_stages_from``: a stage the arm skips is not taken from the source, and its
    keys move to the next stage that runs (so ``warp``, ``motion`` and ``flow_method`` still
    fingerprint an optical-flow D_R, and the U-Net11 keys a Dual MF★ started from
    ``convlstm.init_from``), except into the D_L-only arm's ``segment``, which reads no
    generated set: its U-Net11 is the same whatever G, D_R or D_C would have been (a sweep
    over G's settings trains it once)."""
    run = training_sets.stages_run(config)
    reads_generated = training_sets.ARM_SETS[config.segment] != ("D_L",)
    out, carried = [], ()
    for spec in STAGES:
        if spec.name in run:
            upstream = carried if reads_generated or spec.name != "segment" else ()
            out.append(stage.StageSpec(spec.name, upstream + spec.keys, spec.same))
            carried = ()
        else:
            carried += spec.keys
    return tuple(out)


def check(config: ml_collections.ConfigDict) -> None:
    """Checks the Dual MF keys that need no data.

    Raises:
      ValueError: unknown ``segment`` / ``warp`` / ``motion`` / ``flow_predictor.weights`` /
        ``flow_predictor.inputs`` / ``flow_predictor.flow_stats``, ``propagation_steps`` < 1,
        ``convlstm.clip_length`` < 1.
    """
    if config.segment not in SEGMENT_MODES:
        raise ValueError(f"config.segment={config.segment!r}; expected one of {SEGMENT_MODES}")
    if config.warp not in WARPS:
        raise ValueError(f"config.warp={config.warp!r}; expected one of {WARPS}")
    if config.motion not in MOTIONS:
        raise ValueError(f"config.motion={config.motion!r}; expected one of {MOTIONS}")
    fp = config.flow_predictor
    if fp.weights not in G_LOSS_WEIGHTS:
        raise ValueError(f"config.flow_predictor.weights={fp.weights!r}; expected one of {tuple(G_LOSS_WEIGHTS)}")
    if fp.inputs not in G_INPUTS:
        raise ValueError(f"config.flow_predictor.inputs={fp.inputs!r}; expected one of {G_INPUTS}")
    if fp.flow_stats not in FLOW_STATS_MODES:
        raise ValueError(f"config.flow_predictor.flow_stats={fp.flow_stats!r}; expected one of {FLOW_STATS_MODES}")
    if config.propagation_steps < 1:
        raise ValueError(f"config.propagation_steps={config.propagation_steps} must be >= 1")
    if config.convlstm.clip_length < 1:
        raise ValueError(f"config.convlstm.clip_length={config.convlstm.clip_length} must be >= 1")


def resolve(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> ml_collections.ConfigDict:
    """Checks the Dual MF keys (``check``) and fills ``resize`` (the dataset default or the
    native frame size) and the step counts from ``epochs``: one epoch of each stage is its
    own training set of this arm (``training_sets.training_set_sizes`` on the layout of
    ``data``, known exactly before anything trains) — the segment stage's (the top-level
    block) D_L, D_L ∪ D_R or D_L ∪ D_R ∪ D_C, Dual MF★'s ``convlstm`` stage its clips, G
    its windows of 4 frames, the compensator its consecutive pairs. Only the stages the arm
    runs are resolved. Returns a copy.

    Raises:
      ValueError: a bad key (``check``), ``resize`` not multiples of 64, ``image_size``
        larger than ``resize`` or not multiples of 32, a stage the arm runs with nothing to
        train on (no window of 4 frames, no consecutive pair, no clip).
    """
    check(config)
    sizes = training_sets.training_set_sizes(config, training_sets.layout_of(data))
    runs = training_sets.stages_run(config)
    empty = {
        "flow_predictor": ("windows", "no video has 4 consecutive training frames (the flow predictor needs them)"),
        "compensator": ("pairs", "no video has 2 consecutive training frames (the compensator needs them)"),
        "convlstm": ("clips", f"the rebuilt sequence has no {config.convlstm.clip_length} consecutive entries for config.segment='dual_convlstm'"),
    }
    for name, (key, message) in empty.items():
        if name in runs and sizes[key] < 1:
            raise ValueError(message)
    c = common.resolve_config(config, sizes["examples"])
    for name in runs:
        block_key, size_key = training_sets.STAGE_BLOCKS[name] if name in training_sets.STAGE_BLOCKS else ("", "")
        if block_key:
            resolve_stage(c[block_key], sizes[size_key])
    if c.resize is None:
        h, w = np.asarray(data.train_source[int(data.train_all_rows[0])]["image"]).shape[:2]
        with c.ignore_type():
            c.resize = (int(h), int(w))
    rh, rw = c.resize
    if rh % G_MULTIPLE or rw % G_MULTIPLE:
        raise ValueError(f"config.resize={tuple(c.resize)} must be multiples of {G_MULTIPLE} (the flow predictor's input)")
    ih, iw = c.image_size
    if ih % 32 or iw % 32 or ih > rh or iw > rw:
        raise ValueError(f"config.image_size={tuple(c.image_size)} must be multiples of 32 and fit in config.resize={tuple(c.resize)}")
    return c
