"""Dual Motion Flow's settings: the values ``config.segment``, ``config.warp``,
``config.motion`` and ``config.flow_predictor.weights`` accept, the loss weights of the flow
predictor (Sec. 2.1, Eq. 3, and the authors' code), and ``resolve``, which checks a config
against them and fills the values that depend on the data.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxsurg.config import resolve_stage
from jaxsurg.data import pipeline
from jaxsurg.methods import common
from jaxsurg.train import stage

# The stages and the config keys their outputs depend on (``config.stages_from``).
STAGES = (
    stage.StageSpec("flow_predictor", ("flow_predictor", "warp", "motion", "vgg16_weights", "flow_method")),
    stage.StageSpec("propagate", ("propagation_steps",)),
    stage.StageSpec("compensator", ("compensator",)),
    stage.StageSpec("segment", stage.MAIN_STAGE + ("segment", "model", "convlstm", "image_size", "augment", "clip_length", "batch_keys")),
)
SEGMENT_MODES = ("dual", "single", "dual_convlstm")
WARPS = ("forward", "backward")
MOTIONS = ("learned", "optical_flow")
G_MULTIPLE = 64  # MotionFlowPredictor needs H, W multiples of 64
# The flow predictor's loss weights: the paper's Sec. 2.1 and the authors' code (REFERENCE.md).
G_LOSS_WEIGHTS = {
    "paper": dict(l1=0.7, perceptual=0.2, style=0.0, smooth=0.1, image_gradient=0.0),
    "code": dict(l1=2.0, perceptual=0.0, style=1000.0, smooth=0.2, image_gradient=0.1),
}


def resolve(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> ml_collections.ConfigDict:
    """Checks the Dual MF keys and fills ``resize`` (the dataset default or the native frame
    size) and the step counts from ``epochs`` (of the segmentation set, of G and of the
    compensator; their epoch sizes are approximated from the number of training frames,
    because D_R and D_C do not exist yet). Returns a copy.

    Raises:
      ValueError: unknown ``segment`` / ``warp`` / ``motion`` / ``flow_predictor.weights``, ``resize`` not
        multiples of 64, ``image_size`` larger than ``resize`` or not multiples of 32,
        ``propagation_steps`` < 1.
    """
    # One segmentation epoch ≈ |D_L ∪ D_R ∪ D_C| ≈ 2 × the training frames ('dual'), or the
    # training frames ('single'); one epoch of G / the compensator ≈ the training frames.
    num_frames = len(data.train_all_rows)
    c = common.resolve_config(config, num_frames * (1 if config.segment == "single" else 2))
    for sub in (c.flow_predictor, c.compensator):
        resolve_stage(sub, num_frames)
    if c.resize is None:
        h, w = np.asarray(data.train_source[int(data.train_all_rows[0])]["image"]).shape[:2]
        with c.ignore_type():
            c.resize = (int(h), int(w))
    if c.segment not in SEGMENT_MODES:
        raise ValueError(f"config.segment={c.segment!r}; expected one of {SEGMENT_MODES}")
    if c.warp not in WARPS:
        raise ValueError(f"config.warp={c.warp!r}; expected one of {WARPS}")
    if c.motion not in MOTIONS:
        raise ValueError(f"config.motion={c.motion!r}; expected one of {MOTIONS}")
    if c.flow_predictor.weights not in G_LOSS_WEIGHTS:
        raise ValueError(f"config.flow_predictor.weights={c.flow_predictor.weights!r}; expected one of {tuple(G_LOSS_WEIGHTS)}")
    rh, rw = c.resize
    if rh % G_MULTIPLE or rw % G_MULTIPLE:
        raise ValueError(f"config.resize={tuple(c.resize)} must be multiples of {G_MULTIPLE} (the flow predictor's input)")
    ih, iw = c.image_size
    if ih % 32 or iw % 32 or ih > rh or iw > rw:
        raise ValueError(f"config.image_size={tuple(c.image_size)} must be multiples of 32 and fit in config.resize={tuple(c.resize)}")
    if c.propagation_steps < 1:
        raise ValueError(f"config.propagation_steps={c.propagation_steps} must be >= 1")
    return c
