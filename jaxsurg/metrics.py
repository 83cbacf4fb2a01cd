"""Per-frame IoU and Dice, the TernausNet / MF-TAPNet / Dual MF evaluation protocol.

The protocol (REFERENCE.md, "Evaluation protocol"): IoU and Dice are computed per frame and
then averaged (mean ± std over frames).

- Binary: the instrument probability is thresholded at 0.5;
  ``IoU = (|P∩G| + ε) / (|P∪G| + ε)``, ``Dice = (2|P∩G| + ε) / (|P| + |G| + ε)``, ε = 1e-15,
  so an empty ground truth with an empty prediction scores 1 and with any false positive
  scores about 0.
- Multi-class (parts, type, ...): per frame, the mean of the per-class scores over the
  classes present in the ground truth, background (class 0) excluded; a frame whose ground
  truth has no foreground scores 1 if the prediction has no foreground, else 0.

Pixels labelled 255 (ignore) are left out of every count. Counting runs on device
(``confusion_counts``, jit-friendly); scores are computed on the host in float64.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255
EPS = 1e-15
CONVENTION = (
    "TernausNet: per-frame scores, mean±std over all evaluated frames; binary threshold 0.5; "
    "multi-class frames average the foreground classes present in the ground truth; a frame "
    "with no foreground in the ground truth scores 1 if the prediction has none, else 0; "
    "eps=1e-15; pixels labelled 255 ignored. per_class: mean over the frames whose ground "
    "truth contains that class."
)


def predict_classes(logits: jax.Array) -> jax.Array:
    """Class map from logits: sigmoid > 0.5 (i.e. logit > 0) for C == 1, argmax for C > 1.

    Args:
      logits: float (B, H, W, C).

    Returns:
      int32 (B, H, W).
    """
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion_counts(pred: jax.Array, target: jax.Array, num_classes: int) -> dict[str, jax.Array]:
    """Per-frame, per-class pixel counts.

    Args:
      pred: int (B, H, W) predicted classes in [0, num_classes).
      target: int (B, H, W) ground-truth classes in [0, num_classes) or 255 (ignored).
      num_classes: number of classes including background (2 for the binary task).

    Returns:
      dict of int32 (B, num_classes): ``intersection`` |P_c ∩ G_c|, ``pred`` |P_c|,
      ``target`` |G_c|, each over non-ignored pixels.
    """
    valid = target != IGNORE_INDEX
    classes = jnp.arange(num_classes)
    p = (pred[..., None] == classes) & valid[..., None]
    g = target[..., None] == classes
    axes = (1, 2)
    return {
        "intersection": jnp.sum(p & g, axis=axes, dtype=jnp.int32),
        "pred": jnp.sum(p, axis=axes, dtype=jnp.int32),
        "target": jnp.sum(g, axis=axes, dtype=jnp.int32),
    }


def _scores(inter: np.ndarray, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    union = pred + target - inter
    iou = (inter + EPS) / (union + EPS)
    dice = (2 * inter + EPS) / (pred + target + EPS)
    return iou, dice


def frame_scores(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame IoU and Dice from ``confusion_counts`` under the TernausNet convention.

    Args:
      counts: dict of int arrays (N, C), C ≥ 2, class 0 = background.

    Returns:
      dict with float64 (N,) ``iou`` and ``dice`` per frame, and float64 (N, C)
      ``class_iou``/``class_dice`` with NaN where the class is absent from the ground truth.
    """
    inter = np.asarray(counts["intersection"], np.float64)
    pred = np.asarray(counts["pred"], np.float64)
    target = np.asarray(counts["target"], np.float64)
    class_iou, class_dice = _scores(inter, pred, target)
    in_gt = target > 0
    present = in_gt.copy()
    present[:, 0] = False
    fg_present = present.any(axis=1)
    empty_score = np.where(pred[:, 1:].sum(axis=1) == 0, 1.0, 0.0)
    if inter.shape[1] == 2:
        # Binary: the raw ε-ratio gives exactly the 1-or-≈0 empty-frame convention.
        iou, dice = class_iou[:, 1], class_dice[:, 1]
    else:
        n_present = np.maximum(present.sum(axis=1), 1)
        iou = np.where(fg_present, np.where(present, class_iou, 0).sum(axis=1) / n_present, empty_score)
        dice = np.where(fg_present, np.where(present, class_dice, 0).sum(axis=1) / n_present, empty_score)
    return {
        "iou": iou,
        "dice": dice,
        "class_iou": np.where(in_gt, class_iou, np.nan),
        "class_dice": np.where(in_gt, class_dice, np.nan),
    }


@dataclasses.dataclass
class SegmentationSummary:
    """Mean ± std of per-frame IoU/Dice and per-class means, as written to summary.json."""

    num_frames: int
    iou_mean: float
    iou_std: float
    dice_mean: float
    dice_std: float
    per_class: dict[str, dict[str, float | None]]
    convention: str = CONVENTION

    def to_json(self) -> dict:
        """The summary.json fields (DESIGN.md, workdir contract) this object owns."""
        return dataclasses.asdict(self)


def summarize(counts: dict[str, np.ndarray], class_names: tuple[str, ...]) -> SegmentationSummary:
    """Aggregates per-frame counts into the tables' mean ± std and per-class figures.

    Args:
      counts: dict of int arrays (N, C) from ``confusion_counts`` over all N frames.
      class_names: C names, index 0 = background.

    Returns:
      SegmentationSummary. Per-class scores average the frames whose ground truth contains
      the class (None when no frame does); the background class is reported too.

    Raises:
      ValueError: if there are no frames or ``class_names`` does not match C.
    """
    n, c = np.asarray(counts["target"]).shape
    if n == 0:
        raise ValueError("summarize: no frames to evaluate")
    if len(class_names) != c:
        raise ValueError(f"summarize: {len(class_names)} class names for {c} classes: {class_names}")
    s = frame_scores(counts)
    per_class = {}
    for k, name in enumerate(class_names):
        col_iou, col_dice = s["class_iou"][:, k], s["class_dice"][:, k]
        has = ~np.isnan(col_iou)
        per_class[name] = {
            "iou": float(col_iou[has].mean()) if has.any() else None,
            "dice": float(col_dice[has].mean()) if has.any() else None,
            "frames": int(has.sum()),
        }
    return SegmentationSummary(
        num_frames=int(n),
        iou_mean=float(s["iou"].mean()),
        iou_std=float(s["iou"].std()),
        dice_mean=float(s["dice"].mean()),
        dice_std=float(s["dice"].std()),
        per_class=per_class,
    )
