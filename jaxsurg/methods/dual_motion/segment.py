"""Semi-supervised segmentation (Dual Motion Flow, Sec. 2.3): the ``segment`` and
``convlstm`` stages.

``segment``: U-Net11 (``methods.unet11``) with the TernausNet loss on the arm's set —
D_L ∪ D_R ∪ D_C (Dual MF, ``config.segment='dual'``), D_L ∪ D_R (Single MF, ``'single'``)
or D_L alone (``'dl_only'``, the paper's "U-Net11" baseline: same frames, crops, budget and
evaluation). Dual MF★ (``'dual_convlstm'``) first trains Dual MF's U-Net11 in its own
``segment`` stage (or takes a finished run's, ``convlstm.init_from``:
``load_segment_params``), then ``convlstm``: a ConvLSTM at U-Net11's bottleneck
(``convlstm.UNet11ConvLSTM``) on clips of consecutive entries of the rebuilt sequence 0,
0.5, 1, … (``rebuilt_sequence``, ``training_sets.convlstm_clips``), with Adam 1e-4 on the
ConvLSTM and 1e-5 elsewhere (``convlstm_optimizer``) — the paper's rates, which fine-tune a
trained segmentation network; ``ClipPredictor`` evaluates it frame by frame.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg import evaluate
from jaxsurg.data import generated, pipeline
from jaxsurg.data.sequences import LabelledFrames
from jaxsurg.losses import cross_entropy, ternaus_loss
from jaxsurg.methods import unet11 as unet11_method
from jaxsurg.methods.dual_motion.convlstm import UNet11ConvLSTM, param_labels
from jaxsurg.methods.dual_motion.training_sets import ARM_SETS, convlstm_clips
from jaxsurg.models import UNet11
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.checkpoint import restore_final_variables
from jaxsurg.train.state import TrainState, make_optimizer


def rebuilt_sequence(d_l: LabelledFrames, sets: list[generated.GeneratedDataset]) -> list[list[tuple[Any, int]]]:
    """Per video, the (source, index) entries of the rebuilt sequence sorted by position."""
    entries: dict[int, list[tuple[float, Any, int]]] = {}
    for i in range(len(d_l)):
        r = d_l.rows[i]
        entries.setdefault(int(d_l.seq.video_id[r]), []).append((float(d_l.seq.position[r]), d_l, i))
    for ds in sets:
        for i, (v, p) in enumerate(zip(ds.video_id, ds.position)):
            entries.setdefault(int(v), []).append((float(p), ds, i))
    out = []
    for v in sorted(entries):
        out.append([(e[0], e[1], e[2]) for e in sorted(entries[v], key=lambda e: e[0])])
    return out


def make_convlstm_step(model: UNet11ConvLSTM, jaccard_weight: float, mesh):
    """Jitted Dual MF★ step: TernausNet loss over every frame of the clip."""

    def step(state, batch):
        x = pipeline.images_to_float(batch["image"])
        labels = batch["mask"].astype(jnp.int32)

        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            flat, lab = logits.reshape(-1, *logits.shape[2:]), labels.reshape(-1, *labels.shape[2:])
            return ternaus_loss(flat, lab, jaccard_weight=jaccard_weight), {"flat": flat, "labels": lab}

        state, loss, aux, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss, "cross_entropy": cross_entropy(aux["flat"], aux["labels"])}

    return step_lib.jit_step(step, mesh)


def load_segment_params(config, source_workdir: str, num_classes: int) -> dict[str, Any]:
    """The U-Net11 params of another run's finished ``segment`` stage (any Dual MF arm:
    every arm's ``segment`` stage is a U-Net11), for ``convlstm.init_from``: restored at
    the step count that run resolved (its ``config.json``), without its optimiser.

    Returns:
      U-Net11's params on the host (float32 arrays, the tree of ``UNet11.init``: ``encoder``,
      ``center``, ``dec5`` … ``dec1``, ``final``), to merge over a ``UNet11ConvLSTM`` init.

    Raises:
      ValueError: ``source_workdir`` is no Dual MF workdir (no config.json, another method),
        its segment stage is missing or unfinished, or its U-Net11 has other shapes than
        this config's (another ``model.num_filters`` or task); the message names
        ``config.convlstm.init_from``.
    """
    key = f"config.convlstm.init_from={source_workdir!r}"
    path = os.path.join(source_workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{key}: no config.json there (not a jaxsurg workdir)")
    with open(path, encoding="utf-8") as f:
        theirs = json.load(f)
    if theirs.get("method") != "dual_motion":
        raise ValueError(f"{key} was made by method {theirs.get('method')!r}, not dual_motion")
    try:
        params = restore_final_variables(source_workdir, "segment", int(theirs["total_steps"]), ("params",))["params"]
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    h, w = config.image_size
    template = jax.eval_shape(
        unet11_method.build_model(config, num_classes).init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3), jnp.float32)
    )["params"]
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
    if jax.tree.structure(params) != jax.tree.structure(template) or shapes(params) != shapes(template):
        raise ValueError(f"{key}: its U-Net11 has other shapes than this config's (model.num_filters, task)")
    return dict(params)


def build_network(config, num_classes: int) -> UNet11ConvLSTM | UNet11:
    """The network of the arm's last stage: the ConvLSTM U-Net11 for Dual MF★
    (``segment='dual_convlstm'``), else U-Net11 (one logit for a 2-class task)."""
    if config.segment == "dual_convlstm":
        return UNet11ConvLSTM(num_classes=1 if num_classes == 2 else num_classes, num_filters=config.model.num_filters, convlstm_layers=config.convlstm.layers)
    return unet11_method.build_model(config, num_classes)


def _augment(config, clips: bool) -> pipeline.Augment:
    """Random ``config.image_size`` crops (one per clip) with the ``config.augment`` flips and jitter."""
    a = config.augment
    return pipeline.Augment(
        resize=None, crop=tuple(config.image_size), hflip=a.hflip, vflip=a.vflip, brightness=a.brightness,
        contrast=a.contrast, saturation=a.saturation, hue_degrees=a.hue_degrees, squeeze_time=not clips,
    )


def _check_size(what: str, got: int, expected: int | None) -> None:
    if expected is not None and got != expected:
        raise RuntimeError(
            f"the {what} holds {got} examples but config.resolve counted {expected} (its epochs were resolved from that "
            "count): training_sets and the stages disagree"
        )


def segment(config, workdir, seq, d_r, d_c, num_classes: int, mesh, expected_examples: int | None = None):
    """Stage ``segment`` (Sec. 2.3): U-Net11 with the TernausNet loss on the arm's set
    (``training_sets.ARM_SETS[config.segment]``: D_L for ``dl_only``, D_L ∪ D_R for
    ``single``, D_L ∪ D_R ∪ D_C for ``dual`` and Dual MF★'s start), random
    ``config.image_size`` crops of the ``config.resize`` frames, the top-level stage block
    (``config.total_steps``, resolved from ``config.epochs`` over that set).

    Args:
      seq: the ``TrainSequence``; d_r, d_c: D_R and D_C (``GeneratedDataset``), None where
        the arm has none. expected_examples: the set's size ``config.resolve`` counted
        (checked when given).

    Returns:
      (U-Net11, its params).

    Raises:
      RuntimeError: the set's size is not ``expected_examples``.
    """
    d_l = LabelledFrames(seq)
    sets = {"D_R": d_r, "D_C": d_c}
    used = [sets[name] for name in ARM_SETS[config.segment] if name != "D_L"]
    items = [[(d_l, i)] for i in range(len(d_l))] + [[(ds, i)] for ds in used for i in range(len(ds))]
    _check_size(f"segment stage's set ({' ∪ '.join(ARM_SETS[config.segment])})", len(items), expected_examples)
    model = unet11_method.build_model(config, num_classes)
    state = unet11_method.init_state(config, model, mesh)
    step = unet11_method.make_train_step(model, config.model.jaccard_weight, mesh)
    state = stage.train("segment", config, config, workdir, state, step, generated.FrameExamples(items), _augment(config, False), mesh)
    return model, state.params


def convlstm_optimizer(block, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Dual MF★'s two learning rates (Sec. 3: "1e−4 for ConvLSTM layer while 1e−5 for other
    network components"): ``block.lr_convlstm`` for the ConvLSTM leaves (``param_labels``),
    ``block.learning_rate`` for the U-Net11 ones, each with the block's optimiser, weight
    decay and schedule (``make_optimizer``). Returns (optimiser, the U-Net11 layers'
    schedule, the one logged)."""
    base, schedule = make_optimizer(block)
    lstm_block = ml_collections.ConfigDict(block.to_dict())
    lstm_block.learning_rate = float(block.lr_convlstm)
    lstm, _ = make_optimizer(lstm_block)
    return optax.multi_transform({"convlstm": lstm, "base": base}, param_labels(params)), schedule


def convlstm_stage(config, workdir, seq, d_r, d_c, num_classes: int, mesh, unet_params, expected_clips: int | None = None):
    """Stage ``convlstm`` (Dual MF★, Sec. 2.3 and 3): ``UNet11ConvLSTM`` started from
    ``unet_params`` (Dual MF's U-Net11: this run's ``segment`` stage, or the finished run of
    ``convlstm.init_from`` through ``load_segment_params``; the ConvLSTM itself from
    ``config.seed``), trained with the TernausNet loss on every frame of clips of
    ``convlstm.clip_length`` consecutive entries of the rebuilt sequence 0, 0.5, 1, … of
    D_L ∪ D_R ∪ D_C (one crop per clip), with the ``convlstm`` stage block
    (``convlstm_optimizer``: 1e-4 on the ConvLSTM, 1e-5 elsewhere by default).

    Returns:
      (UNet11ConvLSTM, its params).

    Raises:
      ValueError: no clip (``config.resolve`` refuses it first).
      RuntimeError: the number of clips is not ``expected_clips``.
    """
    cl = config.convlstm
    items = convlstm_clips(rebuilt_sequence(LabelledFrames(seq), [d_r, d_c]), cl.clip_length)
    if not items:
        raise ValueError(f"the rebuilt sequence has no {cl.clip_length} consecutive entries for config.segment='dual_convlstm'")
    _check_size("convlstm stage's clips", len(items), expected_clips)
    model = build_network(config, num_classes)
    h, w = config.image_size
    params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), jnp.zeros((1, cl.clip_length, h, w, 3)))["params"]
    params = {**params, **jax.device_get(unet_params)}
    tx, schedule = convlstm_optimizer(cl, params)
    state = step_lib.put_replicated(TrainState.create(params, tx, schedule=schedule), mesh)
    step = make_convlstm_step(model, config.model.jaccard_weight, mesh)
    state = stage.train("convlstm", cl, config, workdir, state, step, generated.FrameExamples(items), _augment(config, True), mesh)
    return model, state.params


class ClipPredictor:
    """A host-side predictor for Dual MF★ on frames given in time order: each frame is
    predicted as the last of a clip of the ``length`` latest frames (the first frames
    repeat the earliest). The window does not know video boundaries: the first
    ``length − 1`` frames of a test video see frames of the previous one."""

    def __init__(self, model: UNet11ConvLSTM, params, length: int):
        self._fn = jax.jit(clip_classes_fn(model))
        self._variables = {"params": params}
        self._length, self._buffer = length, []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for im in images:
            self._buffer = (self._buffer or [im] * self._length)[1:] + [im]
            out.append(np.asarray(self._fn(self._variables, np.stack(self._buffer)[None]))[0])
        return np.stack(out)


def clip_classes_fn(model: UNet11ConvLSTM):
    """Dual MF★'s class map of the last frame of each clip: ``(variables, uint8 (B, T, H, W,
    3)) → int32 (B, H, W)`` (``evaluate.classes_fn``, frames padded to multiples of 32)."""
    return evaluate.classes_fn(lambda v, x: model.apply(v, x)[:, -1])
