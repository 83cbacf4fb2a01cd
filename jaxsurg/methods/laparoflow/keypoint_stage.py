"""Laparoflow-SSL stage 4, key points (Moens et al. 2024, Sec. 3.1.3, App. D.1 and D.3),
on datasets with key points.

The narrow key-point head on the frozen backbone trained on ``config.keypoints.num_labelled``
frames with Gaussian targets and the mean of binary Lovász and cross-entropy
(``keypoints.keypoint_loss``), then scored on the test frames as Du et al. (2018)
(``keypoints.match_keypoints``; ``eval/keypoints.json``, ``eval/keypoint_overlays/``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg import evaluate, inference, visualize
from jaxsurg.data import datasets, pipeline
from jaxsurg.methods.laparoflow import keypoints as kp
from jaxsurg.methods.laparoflow.finetune import BackboneWithHead, choose_labelled, init_downstream, make_downstream_step
from jaxsurg.methods.laparoflow.heads import KeypointHead
from jaxsurg.methods.laparoflow.pretrain import build_backbone
from jaxsurg.train import stage
from jaxsurg.train.checkpoint import restore_final_variables
from jaxsurg.train.writers import write_json


@dataclasses.dataclass(frozen=True)
class KeypointExample(grain.transforms.RandomMap):
    """A frame resized to ``size`` with its Gaussian key-point heatmaps (no other
    augmentation: a mirror would swap left and right clasper tips)."""

    size: tuple[int, int]
    sigma: float

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng
        image, points = resize_with_keypoints(element["image"][0], element["keypoints"][0], self.size)
        heat = kp.gaussian_heatmaps(points, element["keypoints_visible"][0], self.size, self.sigma)
        return {"image": image, "heatmap": heat.astype(np.float32)}


def resize_with_keypoints(image: np.ndarray, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resizes uint8 (H, W, 3) ``image`` to ``size`` = (h, w) and scales (x, y) ``points`` (…, 2)
    in pixel-centre coordinates to match."""
    h, w = image.shape[:2]
    sx, sy = size[1] / w, size[0] / h
    out = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR)
    scaled = (points + 0.5) * np.array([sx, sy], np.float32) - 0.5
    return out, scaled.astype(np.float32)


def keypoint_stage(config, workdir, data, backbone_vars, mesh) -> dict[str, Any] | None:
    """Stage 4 on datasets with key points: trains the key-point head on
    ``config.keypoints.num_labelled`` frames and scores it on the test frames (Du et al.
    2018: a true positive lies within ``match_radius`` px at 256×256); returns the scores
    written to ``eval/keypoints.json`` (None when the dataset has no key points)."""
    k = config.keypoints
    if not k.enabled:
        return None
    if k.dataset:
        data = keypoint_data(config)
    elif "keypoints" not in data.train_source[0]:
        return None
    rows = choose_labelled(keypoint_rows(data), k.num_labelled, config.seed + 1)
    model, state = init_downstream(config, KeypointHead(), backbone_vars, tuple(k.image_size), mesh, k)
    examples = pipeline.Frames(data.train_source, rows, config.task, ("image", "keypoints", "keypoints_visible"))

    def loss_fn(logits, heat):
        return kp.keypoint_loss(logits, heat), {}

    step = make_downstream_step(model, loss_fn, "heatmap", config.seed, mesh)
    state = stage.train("keypoints", k, config, workdir, state, step, examples, KeypointExample(tuple(k.image_size), k.sigma), mesh)
    return evaluate_keypoints(config, model, state, data, os.path.join(workdir, "eval"))


def keypoint_data(config) -> pipeline.LoadedDataset:
    """The key-point dataset ``config.keypoints.dataset`` (the paper's EndoVis 2015 with Du et
    al.'s key points, ``endovis15_keypoints``, beside the segmentation dataset): its train
    split trains the head, its annotated test frames score it.

    Raises:
      ValueError: a dataset without key points, or one that needs
        ``config.keypoints.data_dir`` when it is empty.
    """
    k = config.keypoints
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.dataset, c.data_dir, c.task, c.label_interval, c.test_dataset, c.resize = k.dataset, k.data_dir, "", 1, "", None
    if datasets.get_spec(k.dataset, "config.keypoints.dataset").needs_manual_dir and not k.data_dir:
        raise ValueError(f"config.keypoints.dataset={k.dataset!r} needs --config.keypoints.data_dir=<folder with its raw files>")
    data = pipeline.load(c)
    if "keypoints" not in data.train_source[0]:
        raise ValueError(f"config.keypoints.dataset={k.dataset!r} has no key points; datasets with key points: synthetic, endovis15_keypoints")
    return data


def keypoint_rows(data) -> np.ndarray:
    """The training records the key-point head may be trained on: every record of the
    training part (whatever ``config.label_interval``) with ground truth (``has_label``;
    on ``endovis15_keypoints``, which has no masks, the frames Du et al. annotated — its
    other frames' empty key points are "not annotated", not "no instrument")."""
    rows = np.asarray(data.train_all_rows)
    return rows[data.train_index.has_label[rows]]


def evaluate_keypoints(config, model, state, data, out_dir: str) -> dict[str, Any]:
    """Scores the key-point head on every test frame with a visible key point."""
    k = config.keypoints
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    heat_fn = jax.jit(lambda x: jax.nn.sigmoid(model.apply(variables, x, train=False)))
    frames = pipeline.Frames(data.test_source, data.test_rows, config.task, ("image", "keypoints", "keypoints_visible"))
    counts, shown = [], 0
    os.makedirs(os.path.join(out_dir, "keypoint_overlays"), exist_ok=True)
    for i in range(len(frames)):
        ex = {key: v[0] for key, v in frames[i].items()}
        if not ex["keypoints_visible"].any():
            continue
        h, w = ex["image"].shape[:2]
        small, _ = resize_with_keypoints(ex["image"], ex["keypoints"], tuple(k.image_size))
        heat = np.asarray(heat_fn(jnp.asarray(small[None], jnp.float32) / 255.0))[0]
        peaks = kp.find_peaks(heat, threshold=k.threshold, nms_radius=k.nms_radius)
        sx, sy = w / k.image_size[1], h / k.image_size[0]
        peaks = [(np.asarray(pt, np.float32).reshape(-1, 2) + 0.5) * np.array([sx, sy], np.float32) - 0.5 for pt, _ in peaks]
        truth = [ex["keypoints"][ex["keypoints_visible"][:, t], t] for t in range(ex["keypoints"].shape[1])]
        counts.append(kp.match_keypoints(peaks, truth, radius=k.match_radius, scale=(256.0 / w, 256.0 / h)))
        if shown < config.num_overlays and i % max(1, len(frames) // max(config.num_overlays, 1)) == 0:
            c = counts[-1]
            caption = (
                f"test record {int(data.test_rows[i])}:   TP {int(c.tp.sum())}   FP {int(c.fp.sum())}   FN {int(c.fn.sum())}"
                f"   (a prediction within {k.match_radius:g} px at 256x256 of a true point is a TP)"
            )
            picture = _keypoint_overlay(ex["image"], peaks, truth, caption)
            cv2.imwrite(os.path.join(out_dir, "keypoint_overlays", f"{shown:04d}_record{int(data.test_rows[i])}.png"), picture[..., ::-1])
            shown += 1
    if not counts:
        raise ValueError("key-point evaluation found no test frame with a visible key point")
    summary = kp.summarize_keypoints(counts)
    stage.on_host0(lambda: write_json(os.path.join(out_dir, "keypoints.json"), summary), "keypoints.json written")
    return summary


# RGB colour of each key-point type (in the type order of the data) in the overlays.
_KEYPOINT_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 220, 120))


def _keypoint_overlay(image: np.ndarray, peaks: list[np.ndarray], truth: list[np.ndarray], caption: str = "") -> np.ndarray:
    """The ``eval/keypoint_overlays/*.png`` picture: "frame" | "key points" (ground truth
    as rings, predictions as filled dots, one colour per key-point type), scaled up
    (nearest) to ``visualize.MIN_SIDE`` px on the short side before the marks are drawn,
    titled, with ``caption`` (the frame's counts) and a legend of the type names under it.

    Args:
      image: uint8 (H, W, 3) RGB frame.
      peaks, truth: per key-point type K, float (n, 2) predicted / true (x, y) in ``image``'s
        pixel-centre coordinates.
      caption: text under the panels.

    Returns:
      uint8 (H', W', 3) RGB.
    """
    scale = visualize.upscale_factor(image.shape)
    big = np.ascontiguousarray(visualize.upscale(image))
    marks = big.copy()
    ring, dot = max(6, round(2.5 * scale)), max(3, round(1.5 * scale))
    line = max(1, min(big.shape[:2]) // 200)

    def at(x, y):  # pixel-centre coordinates scale as (x + 0.5)·k − 0.5
        return int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5))

    for t, (pred, gt) in enumerate(zip(peaks, truth)):
        c = _KEYPOINT_COLOURS[t % len(_KEYPOINT_COLOURS)]
        for x, y in np.asarray(gt).reshape(-1, 2):
            cv2.circle(marks, at(x, y), ring, c, line + 1, cv2.LINE_AA)
        for x, y in np.asarray(pred).reshape(-1, 2):
            cv2.circle(marks, at(x, y), dot, c, -1, cv2.LINE_AA)
    num = len(truth)
    names = kp.KEYPOINT_NAMES if num == len(kp.KEYPOINT_NAMES) else tuple(f"type_{t}" for t in range(num))
    legend = [(n, _KEYPOINT_COLOURS[t % len(_KEYPOINT_COLOURS)]) for t, n in enumerate(names)]
    return visualize.compose([big, marks], ["frame", "key points (ring: ground truth, dot: prediction)"], caption=caption, legend=legend)


def trained_detector(config, workdir: str, summary: dict[str, Any]) -> inference.KeypointDetector:
    """The finished ``keypoints`` stage's head on the backbone, for ``jaxsurg.predict``:
    σ of the heat maps at ``keypoints.image_size``, then ``find_peaks_padded`` with the
    stage's ``threshold`` and ``nms_radius`` (as ``evaluate_keypoints``).

    Raises:
      ValueError: the stage's final checkpoint is missing or of another format.
    """
    k = config.keypoints
    names = tuple(summary["keypoints"]["per_type"])
    model = BackboneWithHead(build_backbone(config), KeypointHead(num_keypoints=len(names)), freeze_backbone=True)

    def detect(variables, images):
        heat = jax.nn.sigmoid(model.apply(variables, evaluate.model_input(variables, images), train=False).astype(jnp.float32))
        return kp.find_peaks_padded(heat, threshold=float(k.threshold), nms_radius=int(k.nms_radius))

    return inference.KeypointDetector(
        detect=detect, variables=restore_final_variables(workdir, "keypoints", k.total_steps),
        frame_size=tuple(int(v) for v in k.image_size), names=names,
    )
