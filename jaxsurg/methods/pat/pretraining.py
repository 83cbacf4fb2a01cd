"""PAT stage 1, the recolourisation GAN pretraining (Ross et al. 2018, sec. 2.2.1, Fig. 3).

- Data: the unlabelled frames of ``config.pretrain.sources`` — "train", every frame of the
  dataset's training part (labelled or not; labels unused; the test part never), and/or
  "video", the ``surgical_video`` build of ``config.pretrain.video_dir`` (as Laparoflow-SSL's
  pretraining sources) — resized to ``config.resize`` (whole frames, no crop), flipped
  left-right at random when ``pretrain.hflip``.
- Before training, the a*, b* histograms of the pretraining frames (grid size 1,
  ``colour_rebalancing.ab_histograms``) and the rebalancing weights P^c of Eq. 3
  (``pretrain.rebalancing``: "rarity", Zhang et al.'s, the text's intent; "literal", the
  relative frequency of Eq. 3 as written) are computed once and stored in
  ``WORKDIR/pretrain/histograms.npz`` / ``histograms.json``; a resumed run reads them back.
- G (``Recolorizer``): jaxsurg's U-Net11 with a one-channel input (L/50 − 1) and two
  outputs through tanh ((a, b)/110), so that the pretrained network is the segmentation
  network of the fine-tuning. D: ``pretrain.discriminator`` = "resnet18" (the paper's,
  from scratch, sigmoid output) or "patchgan" (pix2pix's 70×70).
- Training: ``recolorization.make_gan_step`` (D's update on L_D, Eq. 5, then G's on L_G,
  Eq. 1, against the updated D; γ, λ, φ from ``bound_loss_weights``), each network its own
  Adam (``gan_optimizer``: pix2pix's 2e-4, β1 = 0.5 by default — the paper gives no
  optimiser), run by ``stage.train`` (both states checkpointed and resumed together).
- Afterwards ``WORKDIR/pretrain/recolor.png`` (L | real | recoloured for a few test frames)
  and ``WORKDIR/pretrain/histograms.png`` (the a*, b* histograms with their weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg import evaluate, visualize
from jaxsurg.data import pipeline, transforms, unlabelled
from jaxsurg.methods.pat import colour_rebalancing, recolorization
from jaxsurg.models.discriminators import PatchGAN, ResNet18Discriminator
from jaxsurg.models.unet11 import unet11_layers
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import adam_with_step_decay
from jaxsurg.train.writers import write_json

__all__ = [
    "DISCRIMINATORS",
    "SOURCES",
    "Recolorizer",
    "build_discriminator",
    "build_generator",
    "colour_histograms",
    "gan_optimizer",
    "histogram_figure",
    "make_pretrain_step",
    "pretrain",
    "pretraining_examples",
    "recolor_figure",
]

DISCRIMINATORS = ("resnet18", "patchgan")
SOURCES = ("train", "video")
HISTOGRAMS_NPZ = "histograms.npz"
HISTOGRAMS_JSON = "histograms.json"
_HIST_BATCH = 16  # frames per jitted Lab conversion when counting


# ----------------------------------------------------------------------------- networks


class Recolorizer(nn.Module):
    """PAT's generator G: U-Net11 from the L channel to (a, b), tanh output.

    ``apply({'params': p}, L)``: L float32 (N, H, W, 1), L/50 − 1 ∈ [−1, 1]
    (``recolorization.to_lab_input``), H and W multiples of 32 → float32 (N, H, W, 2),
    tanh(U-Net11 logits) ∈ (−1, 1), the predicted (a, b)/110.

    The body is ``unet11_layers`` with ``normalize=False``: the parameter tree is exactly
    that of ``UNet11(num_classes=2, input_channels=1)`` (``encoder``, ``center``, ``dec5`` …
    ``dec2``, ``dec1``, ``final``), so the fine-tuning loads every layer but ``final``
    into ``UNet11(num_classes=1, input_channels=1)``. Ross et al. use "a U-Net" without its
    widths; this is TernausNet's (VGG11 encoder 64…512, decoder nf·16 … nf).

    Attributes:
      num_filters: TernausNet's nf (32).
      dtype: computation dtype; params float32.

    Raises:
      ValueError: L not (N, H, W, 1) or H, W not multiples of 32.
    """

    num_filters: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, L: jax.Array) -> jax.Array:
        if L.ndim != 4 or L.shape[-1] != 1:
            raise ValueError(f"Recolorizer expects the L channel (N, H, W, 1), got shape {L.shape}")
        if L.shape[1] % 32 or L.shape[2] % 32:
            raise ValueError(f"Recolorizer (U-Net11) needs H and W that are multiples of 32, got shape {L.shape}")
        logits = unet11_layers(L, num_classes=2, num_filters=self.num_filters, dtype=self.dtype, normalize=False)
        return jnp.tanh(logits)


def build_generator(config: ml_collections.ConfigDict) -> Recolorizer:
    """G of ``config.model`` (num_filters, dtype)."""
    return Recolorizer(num_filters=int(config.model.num_filters), dtype=jnp.dtype(config.model.dtype))


def build_discriminator(config: ml_collections.ConfigDict) -> nn.Module:
    """D of ``config.pretrain.discriminator``: "resnet18" (Ross et al.: ResNet18 from scratch,
    one sigmoid probability per image) or "patchgan" (pix2pix's 70×70 PatchGAN with
    ``pretrain.patchgan_ndf`` first-layer channels, one probability per patch).

    Raises:
      ValueError: an unknown name.
    """
    name, dtype = config.pretrain.discriminator, jnp.dtype(config.model.dtype)
    if name == "resnet18":
        return ResNet18Discriminator(dtype=dtype)
    if name == "patchgan":
        return PatchGAN(ndf=int(config.pretrain.patchgan_ndf), dtype=dtype)
    raise ValueError(f"config.pretrain.discriminator={name!r} is unknown; known: {DISCRIMINATORS}")


def gan_optimizer(block: ml_collections.ConfigDict, learning_rate: float) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with β1 = ``block.beta1``, β2 = ``block.beta2`` (pix2pix: 0.5, 0.999; torch's
    eps 1e-8), PyTorch-style L2 ``block.weight_decay`` and the step schedule of the block
    (× ``lr_decay_factor`` every ``lr_decay_every`` steps; constant by default) at peak
    ``learning_rate``. ``check_config`` has checked the block (optimizer "adam",
    lr_schedule "step", no warm-up).

    Returns:
      (optimiser, schedule: step → learning rate).
    """
    return adam_with_step_decay(
        float(learning_rate), weight_decay=float(block.weight_decay), decay_factor=float(block.lr_decay_factor),
        decay_every=int(block.lr_decay_every), b1=float(block.beta1), b2=float(block.beta2),
    )


# ----------------------------------------------------------------------------- data


def pretraining_examples(config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> pipeline.ConcatFrames:
    """The unlabelled pretraining frames of ``config.pretrain.sources``: examples
    {"image": uint8 (1, H, W, 3)} at their stored size ("train": every record of the
    training part, ``data.train_all_rows``; "video": every frame of the ``surgical_video``
    build of ``pretrain.video_dir``, built on first use into ``config.tfds_dir``).

    Raises:
      ValueError: an unknown source, "video" without ``pretrain.video_dir`` (both checked
        by ``check_config`` too), or no frame at all.
      FileNotFoundError: from the video builder, for a missing or empty ``video_dir``.
    """
    p, parts = config.pretrain, []
    for source in p.sources:
        if source == "train":
            parts.append(pipeline.Frames(data.train_source, data.train_all_rows, config.task, ("image",)))
        elif source == "video":
            if not p.video_dir:
                raise ValueError("config.pretrain.sources has 'video' but config.pretrain.video_dir is empty")
            src, _ = unlabelled.video_source(config.tfds_dir, p.video_dir, p.video_builder_config)
            parts.append(pipeline.Frames(src, np.arange(len(src)), config.task, ("image",)))
        else:
            raise ValueError(f"config.pretrain.sources: unknown source {source!r}; known: {SOURCES}")
    frames = pipeline.ConcatFrames(parts)
    if len(frames) == 0:
        raise ValueError(f"no pretraining frame in sources {list(p.sources)}")
    return frames


def pretrain_transform(config: ml_collections.ConfigDict) -> pipeline.Augment:
    """Whole frames at ``config.resize`` (no crop), a random left-right flip when
    ``pretrain.hflip``; no colour jitter (it would change the colours G learns)."""
    size = tuple(config.resize)
    return pipeline.Augment(resize=size, crop=size, hflip=bool(config.pretrain.hflip))


# ----------------------------------------------------------------------------- histograms


def colour_histograms(
    config: ml_collections.ConfigDict, examples: Sequence[dict[str, np.ndarray]], directory: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The a*, b* histograms of the pretraining set and the rebalancing weights P^c (Eq. 3),
    computed before training and stored; read back when ``directory`` has them.

    Every pretraining frame (or ``pretrain.histogram_frames`` > 0 of them, drawn with
    ``config.seed``) is resized to ``config.resize`` as training sees it, and every pixel is
    counted (the loss weighs every pixel, the black endoscope border included).

    Args:
      config: the resolved config (``resize``, ``seed``, ``pretrain.histogram_frames``,
        ``rebalancing``, ``rebalancing_mix``, ``rebalancing_sigma``).
      examples: ``pretraining_examples``.
      directory: ``WORKDIR/pretrain``; gets ``histograms.npz`` (``counts`` int64 (2, 256),
        row 0 a*, row 1 b*, bin q = value + 128; ``weights`` float32 (2, 256)) and
        ``histograms.json`` (frames, pixels, form, γ, λ, φ of ``bound_loss_weights``).

    Returns:
      (counts int64 (2, 256), weights float32 (2, 256), the JSON record as a dict).

    Raises:
      ValueError: from ``rebalancing_weights`` (e.g. an empty histogram).
    """
    npz, record_path = os.path.join(directory, HISTOGRAMS_NPZ), os.path.join(directory, HISTOGRAMS_JSON)
    if os.path.exists(npz) and os.path.exists(record_path):
        with np.load(npz) as f:
            counts, weights = f["counts"].astype(np.int64), f["weights"].astype(np.float32)
        with open(record_path, encoding="utf-8") as f:
            return counts, weights, json.load(f)
    p = config.pretrain
    n = len(examples)
    pick = np.arange(n)
    if 0 < p.histogram_frames < n:
        pick = np.sort(np.random.default_rng(config.seed).choice(n, size=int(p.histogram_frames), replace=False))
    counts, size = None, tuple(config.resize)
    for start in range(0, len(pick), _HIST_BATCH):
        batch = np.stack([transforms.resize(examples[int(i)], size)["image"][0] for i in pick[start : start + _HIST_BATCH]])
        counts = colour_rebalancing.accumulate_ab_histograms(counts, batch)
    weights = colour_rebalancing.rebalancing_weights(counts, p.rebalancing, mix=p.rebalancing_mix, sigma=p.rebalancing_sigma)
    lw = recolorization.bound_loss_weights(weights)
    record = {
        "frames": int(len(pick)), "pixels_per_channel": int(counts[0].sum()), "size": list(size),
        "form": p.rebalancing, "mix": p.rebalancing_mix, "sigma": p.rebalancing_sigma,
        "weight_max": float(weights.max()), "weight_min": float(weights.min()),
        "loss_weights": {"gamma": lw.gamma, "lambda": lw.lam, "phi": lw.phi},
        "note": "counts[c, q]: pixels whose a* (c = 0) or b* (c = 1) rounds to q - 128; weights: P^c of Eq. 3",
    }

    def write():
        os.makedirs(directory, exist_ok=True)
        np.savez(npz + ".tmp.npz", counts=counts, weights=weights)
        os.replace(npz + ".tmp.npz", npz)
        write_json(record_path, record)

    stage.on_host0(write, "colour histograms")
    return counts, weights, record


# ----------------------------------------------------------------------------- training


def make_pretrain_step(generator: nn.Module, discriminator: nn.Module, weights: np.ndarray, config: ml_collections.ConfigDict, mesh):
    """``step(states, batch) -> (states, metrics)`` for ``stage.train``: the batch's uint8
    RGB ``image`` (B, H, W, 3) → (L/50 − 1, (a, b)/110) on the devices (jitted, batch
    sharding kept), then ``recolorization.make_gan_step`` (D, then G; metrics ``d_loss``,
    ``d_real``, ``d_fake``, ``g_loss``, ``g_adv``, ``g_rebalanced``, ``g_plain``, ``loss``)."""
    gan = recolorization.make_gan_step(
        generator, discriminator, weights, mesh, discriminator_mode=config.pretrain.discriminator_mode, seed=config.seed + 5,
    )
    data = mesh_lib.batch_sharding(mesh)

    @jax.jit
    def lab(image):
        L, ab = recolorization.to_lab_input(image)
        return {"L": jax.lax.with_sharding_constraint(L, data), "ab": jax.lax.with_sharding_constraint(ab, data)}

    def step(states, batch):
        return gan(states, lab(batch["image"]))

    return step


def init_gan_states(config: ml_collections.ConfigDict, generator: nn.Module, discriminator: nn.Module, mesh) -> dict[str, Any]:
    """Fresh {"generator", "discriminator"} states from ``config.seed``, each with its own
    ``gan_optimizer`` (G at ``pretrain.learning_rate``, D at
    ``pretrain.discriminator_learning_rate``), replicated on the mesh."""
    p = config.pretrain
    g_tx, g_schedule = gan_optimizer(p, p.learning_rate)
    d_tx, d_schedule = gan_optimizer(p, p.discriminator_learning_rate)
    states = recolorization.create_gan_states(
        generator, discriminator, jax.random.PRNGKey(config.seed), (1, *config.resize), g_tx, d_tx,
        generator_schedule=g_schedule, discriminator_schedule=d_schedule,
    )
    return step_lib.put_replicated(states, mesh)


def pretrain(
    config: ml_collections.ConfigDict, workdir: str, data: pipeline.LoadedDataset, examples: Sequence[dict[str, np.ndarray]], mesh
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 1: histograms, then ``pretrain.total_steps`` GAN steps (resumed, or skipped when
    complete), then the pictures (each written once).

    Returns:
      (G's variables {"params", "batch_stats"} on the host — the U-Net11 tree of
      ``Recolorizer`` —, a summary record: frames, discriminator, rebalancing, the
      histograms' JSON record).
    """
    p = config.pretrain
    directory = os.path.join(workdir, "pretrain")
    counts, weights, hist_record = colour_histograms(config, examples, directory)
    generator, discriminator = build_generator(config), build_discriminator(config)
    states = init_gan_states(config, generator, discriminator, mesh)
    step = make_pretrain_step(generator, discriminator, weights, config, mesh)
    states = stage.train("pretrain", p, config, workdir, states, step, examples, pretrain_transform(config), mesh)
    g = states[recolorization.GENERATOR]
    variables = jax.device_get({"params": g.params, "batch_stats": g.batch_stats})
    recolor_path, hist_path = os.path.join(directory, "recolor.png"), os.path.join(directory, "histograms.png")
    if p.picture_frames > 0 and not os.path.exists(recolor_path):
        stage.on_host0(lambda: _write_png(recolor_path, recolor_figure(generator, variables, config, data)), "recolor picture")
    if not os.path.exists(hist_path):
        stage.on_host0(lambda: _write_png(hist_path, histogram_figure(counts, weights, p.rebalancing)), "histogram picture")
    record = {
        "frames": int(len(examples)), "sources": list(p.sources), "discriminator": p.discriminator, "rebalancing": p.rebalancing,
        "steps": int(p.total_steps), "histograms": hist_record,
    }
    return variables, record


# ----------------------------------------------------------------------------- pictures


def _write_png(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


def recolor_images(generator: nn.Module, variables: dict[str, Any], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L shown as grey, recoloured) uint8 (N, H, W, 3) for uint8 RGB ``images`` (N, H, W, 3):
    padded to multiples of 32 (edge replication) for G, cropped back."""
    h, w = images.shape[1:3]
    L, _ = recolorization.to_lab_input(evaluate.pad_to_multiple(jnp.asarray(images), 32))
    ab = jax.jit(lambda v, x: generator.apply(v, x))(variables, L)
    grey = recolorization.to_rgb(L, jnp.zeros_like(ab))
    recoloured = recolorization.to_rgb(L, ab)
    to8 = lambda x: np.asarray(jnp.round(x * 255.0)).astype(np.uint8)[:, :h, :w]  # noqa: E731
    return to8(grey), to8(recoloured)


def recolor_figure(generator: nn.Module, variables: dict[str, Any], config: ml_collections.ConfigDict, data: pipeline.LoadedDataset) -> np.ndarray:
    """``pretrain/recolor.png``: for ``pretrain.picture_frames`` test frames evenly spaced in
    time (at ``config.resize``), a row "L (G's input)" | "real" | "recoloured by G"
    (``visualize.compose``). Returns uint8 RGB (H', W', 3)."""
    n = min(int(config.pretrain.picture_frames), len(data.test_rows))
    pick = np.unique(np.linspace(0, len(data.test_rows) - 1, n).round().astype(int))
    frames = pipeline.Frames(data.test_source, data.test_rows[pick], config.task, ("image",))
    images = np.stack([transforms.resize(frames[i], tuple(config.resize))["image"][0] for i in range(len(pick))])
    grey, recoloured = recolor_images(generator, variables, images)
    panels, titles = [], []
    for k, rec in enumerate(data.test_rows[pick]):
        panels += [grey[k], images[k], recoloured[k]]
        titles += [f"L (input), test record {int(rec)}", "real", "recoloured by G"]
    caption = (
        f"PAT pretraining: G (U-Net11, 1 -> 2 channels) after {int(config.pretrain.total_steps)} GAN steps against a "
        f"{config.pretrain.discriminator} discriminator, {config.pretrain.rebalancing} colour rebalancing; test frames never seen in pretraining"
    )
    return visualize.compose(panels, titles, columns=3, caption=caption)


_FREQ_COLOUR, _WEIGHT_COLOUR = (80, 200, 255), (255, 160, 40)


def histogram_plot(counts: np.ndarray, weights: np.ndarray, *, width: int = 560, height: int = 280) -> np.ndarray:
    """A line plot of one channel: log10 of the relative frequency (``_FREQ_COLOUR``, left
    scale from the smallest non-zero frequency to 1) and the rebalancing weight (``_WEIGHT_COLOUR``,
    linear from 0 to its maximum), over the 256 bins (values −128 … 127, ticks every 50).

    Args:
      counts: (256,) counts of the channel. weights: (256,) its weights P.

    Returns:
      uint8 RGB (height, width, 3).
    """
    img = np.empty((height, width, 3), np.uint8)
    img[:] = visualize.BACKGROUND
    left, right, top, bottom = 48, 48, 12, 30
    pw, ph = width - left - right, height - top - bottom
    q = len(counts)
    xs = left + np.arange(q) * (pw - 1) / max(q - 1, 1)
    p = counts / max(counts.sum(), 1)
    floor = np.log10(p[p > 0].min()) if np.any(p > 0) else -6.0
    floor = min(floor, -1.0)
    logp = np.where(p > 0, np.log10(np.maximum(p, 1e-300)), floor)
    yf = top + (0.0 - logp) / (0.0 - floor) * (ph - 1)
    wmax = float(max(weights.max(), 1e-12))
    yw = top + (1.0 - weights / wmax) * (ph - 1)
    cv2.rectangle(img, (left, top), (left + pw - 1, top + ph - 1), (110, 110, 110), 1)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for v in range(-100, 101, 50):
        x = int(round(left + (v + 128) * (pw - 1) / max(q - 1, 1)))
        cv2.line(img, (x, top + ph - 1), (x, top + ph + 3), (200, 200, 200), 1)
        cv2.putText(img, str(v), (x - 10, top + ph + 16), font, scale, visualize.TEXT_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(img, "1", (left - 14, top + 8), font, scale, _FREQ_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(img, f"1e{floor:.0f}", (2, top + ph - 2), font, scale, _FREQ_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(img, f"{wmax:.3g}", (left + pw + 3, top + 8), font, scale, _WEIGHT_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(img, "0", (left + pw + 3, top + ph - 2), font, scale, _WEIGHT_COLOUR, 1, cv2.LINE_AA)
    for ys, colour in ((yf, _FREQ_COLOUR), (yw, _WEIGHT_COLOUR)):
        pts = np.stack([xs, ys], -1).round().astype(np.int32)[:, None]
        cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA)
    return img


def histogram_figure(counts: np.ndarray, weights: np.ndarray, form: str) -> np.ndarray:
    """``pretrain/histograms.png``: the a* and b* panels of ``histogram_plot`` under each
    other, titled, with a legend. counts int (2, 256), weights (2, 256). Returns uint8 RGB."""
    counts, weights = np.asarray(counts), np.asarray(weights, np.float64)
    panels = [histogram_plot(counts[c], weights[c]) for c in range(2)]
    titles = [
        f"{name}*: {int((counts[c] > 0).sum())} of 256 bins used; weight {weights[c].min():.3g} .. {weights[c].max():.3g}"
        for c, name in enumerate(colour_rebalancing.CHANNELS)
    ]
    what = "rarity (Zhang et al. 2016: grows with rarity)" if form == "rarity" else "literal (Eq. 3 as written: the relative frequency)"
    legend = [("log10 relative frequency (left scale)", _FREQ_COLOUR), (f"weight P, {form} (right scale)", _WEIGHT_COLOUR)]
    return visualize.compose(panels, titles, columns=1, caption=f"colour histograms of the pretraining frames, grid size 1; weights: {what}", legend=legend)
