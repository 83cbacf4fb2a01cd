"""Evaluation of a segmentation model on the test frames: per-frame IoU/Dice under the
TernausNet protocol (``jaxsurg.metrics``), ``eval/summary.json``, ``eval/per_frame.jsonl``
and overlay PNGs in ``eval/overlays/`` (DESIGN.md, the workdir contract).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg import metrics, progress, visualize
from jaxsurg.train.writers import write_json


def overlay_panel(
    image: np.ndarray, target: np.ndarray, pred: np.ndarray, caption: str, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """The ``eval/overlays/*.png`` picture: three titled panels, "frame" | "ground truth" |
    "prediction" (with the ground-truth outline in white), scaled up (nearest) to at least
    ``visualize.MIN_SIDE`` px on the short side, the caption in a strip under them and a
    colour legend of the classes (and the outline) under that (``visualize.compose``).

    Args:
      image: uint8 (H, W, 3) RGB. target, pred: int (H, W) class maps (255 = ignore).
      caption: the frame's figures (e.g. record, IoU, Dice).
      class_names: the task's classes, index 0 = background, for the legend; None names
        the classes that occur in ``target`` or ``pred`` "class c".

    Returns:
      uint8 (H', W', 3) RGB, each panel k·H × k·W with k = ``visualize.upscale_factor``.
    """
    image, target, pred = (visualize.upscale(np.asarray(a), visualize.MIN_SIDE) for a in (image, target, pred))
    thickness = max(1, min(image.shape[:2]) // 200)
    pred_view = visualize.colorize(image, pred)
    for c in np.unique(target):
        if c in (0, 255):
            continue
        contours, _ = cv2.findContours((target == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(pred_view, contours, -1, (255, 255, 255), thickness)
    shown = () if class_names is not None else np.union1d(np.unique(target), np.unique(pred)).tolist()
    legend = [*visualize.class_legend(class_names, shown), ("ground-truth outline", (255, 255, 255))]
    return visualize.compose([image, visualize.colorize(image, target), pred_view], ["frame", "ground truth", "prediction"], caption=caption, legend=legend)


def pad_to_multiple(images: jax.Array, multiple: int = 32) -> jax.Array:
    """Pads (..., H, W, C) images at the bottom and right, by edge replication, so that H and
    W become multiples of ``multiple`` (U-Net11 needs 32); crop outputs back to (H, W).
    ``jax.numpy``, so traceable: an exported predictor pads as evaluation does."""
    h, w = images.shape[-3:-1]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return images
    pad = [(0, 0)] * (images.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
    return jnp.pad(images, pad, mode="edge")


def model_input(variables: Any, images: jax.Array) -> jax.Array:
    """uint8 frames → the network's input in [0, 1]: bfloat16 when every floating variable
    is bfloat16 (``jaxsurg.predict --dtype=bfloat16``), else float32."""
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables) if jnp.issubdtype(leaf.dtype, jnp.floating)}
    dtype = jnp.bfloat16 if dtypes == {jnp.dtype(jnp.bfloat16)} else jnp.float32
    return images.astype(dtype) / 255.0


def classes_fn(apply_fn: Callable[[Any, jax.Array], jax.Array], *, pad_multiple: int = 32) -> Callable[[Any, jax.Array], jax.Array]:
    """The pure class-map function of a segmentation network, as evaluation and
    ``jaxsurg.predict`` both run it: ``(variables, uint8 (..., H, W, 3)) → int32 (B, H, W)``.

    Frames are padded at the bottom and right by edge replication to multiples of
    ``pad_multiple`` (32 for U-Net11; 1 = none), scaled to [0, 1] (``model_input``), passed through
    ``apply_fn(variables, x) → logits (B, H', W', C)``, turned into classes
    (``metrics.predict_classes``: logit > 0 for one channel, arg-max otherwise) and cropped
    back to (H, W). Leading axes beyond the batch (Dual MF★'s clips) are the model's to reduce.
    """

    def classes(variables: Any, images: jax.Array) -> jax.Array:
        h, w = images.shape[-3:-1]
        x = pad_to_multiple(images, pad_multiple) if pad_multiple > 1 else images
        logits = apply_fn(variables, model_input(variables, x))
        return metrics.predict_classes(logits)[:, :h, :w]

    return classes


def make_predictor(
    apply_fn: Callable[[Any, jax.Array], jax.Array], variables: Any, *, pad_multiple: int = 32
) -> Callable[[np.ndarray], np.ndarray]:
    """A host-side predictor from a Linen ``apply``: uint8 (B, H, W, 3) → int32 (B, H, W),
    ``classes_fn`` jitted on this process's devices with ``variables``."""
    variables = jax.device_get(variables)
    classes = jax.jit(classes_fn(apply_fn, pad_multiple=pad_multiple))
    return lambda images: np.asarray(classes(variables, images))


def evaluate_segmentation(
    predict: Callable[[np.ndarray], np.ndarray],
    frames: Iterable[tuple[int, dict[str, np.ndarray]]],
    *,
    num_frames: int,
    class_names: tuple[str, ...],
    out_dir: str,
    header: dict[str, Any],
    batch_size: int = 4,
    num_overlays: int = 8,
) -> dict[str, Any]:
    """Scores ``predict`` on ``frames`` and writes the evaluation outputs.

    Args:
      predict: uint8 (B, H, W, 3) → int (B, H, W) class maps.
      frames: (record id, {"image": uint8 (H, W, 3), "mask": uint8 (H, W)}) in time order.
      num_frames: how many ``frames`` yields (for the progress bar and overlay choice).
      class_names: the task's classes, index 0 = background.
      out_dir: ``WORKDIR/eval``; gets ``summary.json``, ``per_frame.jsonl``, ``overlays/``.
      header: fields put first in summary.json (``method``, ``dataset``, ``task``, ...).
      batch_size: frames per forward pass.
      num_overlays: overlay PNGs, for frames evenly spaced in time.

    Returns:
      The summary dict written to ``summary.json``.

    Raises:
      ValueError: if ``frames`` is empty.
    """
    os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)
    overlay_at = set(np.linspace(0, num_frames - 1, min(num_overlays, num_frames)).round().astype(int).tolist()) if num_frames else set()
    counts: list[dict[str, np.ndarray]] = []
    ids: list[int] = []
    start = time.perf_counter()
    buffer: list[tuple[int, dict[str, np.ndarray]]] = []
    frame_sizes: set[tuple[int, int]] = set()

    def flush():
        images = np.stack([ex["image"] for _, ex in buffer])
        frame_sizes.add(images.shape[1:3])
        targets = np.stack([ex["mask"] for _, ex in buffer]).astype(np.int32)
        preds = predict(images)
        c = jax.device_get(metrics.confusion_counts(jnp.asarray(preds), jnp.asarray(targets), len(class_names)))
        counts.append(c)
        for j, (rid, ex) in enumerate(buffer):
            k = len(ids)
            ids.append(rid)
            if k in overlay_at:
                s = metrics.frame_scores({n: v[j : j + 1] for n, v in c.items()})
                caption = f"test frame {k + 1} of {num_frames} (record {rid}):   IoU {s['iou'][0]:.3f}   Dice {s['dice'][0]:.3f}"
                if len(class_names) > 2:
                    caption += "   (mean over the foreground classes present)"
                png = overlay_panel(ex["image"], targets[j], preds[j], caption, class_names)
                cv2.imwrite(os.path.join(out_dir, "overlays", f"{k:04d}_record{rid}.png"), png[..., ::-1])
        buffer.clear()

    for item in progress.bar(frames, total=num_frames, desc="eval", unit="frame"):
        buffer.append(item)
        if len(buffer) == batch_size:
            flush()
    if buffer:
        flush()
    if not ids:
        raise ValueError("evaluation got no labelled test frames")
    all_counts = {k: np.concatenate([c[k] for c in counts]) for k in counts[0]}
    summary = {**header, **metrics.summarize(all_counts, class_names).to_json()}
    # What jaxsurg.predict needs to apply the model to other frames: the size it saw them at.
    summary["class_names"] = list(class_names)
    summary["frame_size"] = list(frame_sizes.pop()) if len(frame_sizes) == 1 else None
    summary["seconds"] = round(time.perf_counter() - start, 3)
    scores = metrics.frame_scores(all_counts)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "per_frame.jsonl"), "w", encoding="utf-8") as f:
            for rid, iou, dice in zip(ids, scores["iou"], scores["dice"]):
                f.write(json.dumps({"record": rid, "iou": float(iou), "dice": float(dice)}) + "\n")
        write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary
