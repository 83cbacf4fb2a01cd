"""Semi-supervised segmentation (Dual Motion Flow, Sec. 2.3): stage 4.

U-Net11 (``methods.unet11``) with the TernausNet loss trains on D_L ∪ D_R ∪ D_C (Dual MF,
``config.segment='dual'``) or D_L ∪ D_R (Single MF, ``'single'``). Dual MF★
(``'dual_convlstm'``) adds a ConvLSTM at U-Net11's bottleneck (``convlstm.UNet11ConvLSTM``)
and trains on clips of consecutive entries of the rebuilt sequence 0, 0.5, 1, …
(``rebuilt_sequence``, ``convlstm_clips``), with Adam 1e-4 on the ConvLSTM and 1e-5
elsewhere, optionally from a finished Dual MF run's U-Net11 (``load_segment_params``);
``ClipPredictor`` evaluates it frame by frame.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsurg import evaluate
from jaxsurg.data import generated, pipeline
from jaxsurg.data.sequences import LabelledFrames
from jaxsurg.losses import cross_entropy, ternaus_loss
from jaxsurg.methods import unet11 as unet11_method
from jaxsurg.methods.dual_motion.convlstm import UNet11ConvLSTM, param_labels
from jaxsurg.models import UNet11
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState


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


def convlstm_clips(videos, length: int, spacing: float = 0.5) -> list[list[tuple[Any, int]]]:
    """Clips of ``length`` consecutive entries (positions ``spacing`` apart) of the rebuilt sequence."""
    clips = []
    for entries in videos:
        for s in range(len(entries) - length + 1):
            window = entries[s : s + length]
            if all(abs(b[0] - a[0] - spacing) < 1e-6 for a, b in zip(window[:-1], window[1:])):
                clips.append([(e[1], e[2]) for e in window])
    return clips


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


def load_segment_params(config, source_workdir: str, num_classes: int, mesh) -> dict[str, Any]:
    """The U-Net11 params of another run's finished ``segment`` stage (Dual MF or Single MF).

    Dual MF★ starts from them (``config.convlstm.init_from``): its U-Net11 layers share
    U-Net11's parameter names, and the paper's learning rates (1e-4 for the new ConvLSTM,
    1e-5 for "other network components") fine-tune a trained segmentation network.

    Returns:
      U-Net11's params on the host (float32 arrays, the tree of ``UNet11.init``: ``encoder``,
      ``center``, ``dec5`` … ``dec1``, ``final``), to merge over a ``UNet11ConvLSTM`` init.

    Raises:
      ValueError: ``source_workdir`` has no segment checkpoint, or one short of
        ``config.total_steps``.
    """
    model = unet11_method.build_model(config, num_classes)
    template = unet11_method.init_state(config, model, mesh)
    state = stage.restore_finished(source_workdir, "segment", template, config.total_steps, "convlstm.init_from")
    return dict(jax.device_get(state.params))


def build_network(config, num_classes: int) -> UNet11ConvLSTM | UNet11:
    """The segment stage's network: the ConvLSTM U-Net11 for Dual MF★ (``segment='dual_convlstm'``),
    else U-Net11 (one logit for a 2-class task)."""
    if config.segment == "dual_convlstm":
        return UNet11ConvLSTM(num_classes=1 if num_classes == 2 else num_classes, num_filters=config.model.num_filters, convlstm_layers=config.convlstm.layers)
    return unet11_method.build_model(config, num_classes)


def segment(config, workdir, seq, d_r, d_c, num_classes: int, mesh):
    """Stage 4; returns (apply_fn for single frames or clips, params, training-set sizes)."""
    d_l = LabelledFrames(seq)
    sets = [d_r] if config.segment == "single" else [d_r, d_c]
    a = config.augment
    augment = pipeline.Augment(
        resize=None, crop=tuple(config.image_size), hflip=a.hflip, vflip=a.vflip, brightness=a.brightness,
        contrast=a.contrast, saturation=a.saturation, hue_degrees=a.hue_degrees,
        squeeze_time=config.segment != "dual_convlstm",
    )
    h, w = config.image_size
    if config.segment == "dual_convlstm":
        cl = config.convlstm
        items = convlstm_clips(rebuilt_sequence(d_l, sets), cl.clip_length)
        if not items:
            raise ValueError(f"the rebuilt sequence has no {cl.clip_length} consecutive entries for config.segment='dual_convlstm'")
        model = build_network(config, num_classes)
        params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), jnp.zeros((1, cl.clip_length, h, w, 3)))["params"]
        if cl.init_from:
            params = {**params, **load_segment_params(config, cl.init_from, num_classes, mesh)}
        # The paper's two learning rates (REFERENCE.md): the logged one is the base's.
        tx = optax.multi_transform({"convlstm": optax.adam(cl.lr_convlstm), "base": optax.adam(cl.lr_base)}, param_labels(params))
        state = step_lib.put_replicated(TrainState.create(params, tx, schedule=optax.constant_schedule(cl.lr_base)), mesh)
        step = make_convlstm_step(model, config.model.jaccard_weight, mesh)
    else:
        items = [[(d_l, i)] for i in range(len(d_l))] + [[(ds, i)] for ds in sets for i in range(len(ds))]
        model = build_network(config, num_classes)
        state = unet11_method.init_state(config, model, mesh)
        step = unet11_method.make_train_step(model, config.model.jaccard_weight, mesh)
    examples = generated.FrameExamples(items)
    state = stage.train("segment", config, config, workdir, state, step, examples, augment, mesh)
    sizes = {"D_L": len(d_l), "D_R": len(d_r), "D_C": len(d_c) if d_c is not None else 0, "examples": len(examples)}
    return model, state.params, sizes


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
