"""Joint propagation (Dual Motion Flow, Sec. 2.1, Eqs. 1–2) and stage 2, which builds D_R.

From every labelled training frame l, G's motion F̂ is chained step by step in both
directions, for up to k = ``config.propagation_steps`` steps, and the frame and its label
are warped together (Eq. 1: Î_{t+1} = T(I_t, F̂_{t→t+1}); Eq. 2: L̂_{t+1} = T(L_t, F̂_{t→t+1})),
so that the propagated label is paired with the propagated frame, never with the raw one:

- ``history``: G's input at a position, in the direction of travel (``past`` frames, or
  ``reconstruct``: the frame stepped into and its optical flow included, Eq. 1);
- ``propagation_plan`` (from ``training_sets``): which labelled frame, direction and number
  of steps reach each unlabelled frame (the nearest labelled frame);
- ``make_motion_fn`` (G) and ``optical_flow_motion`` (the stored optical flow, an ablation
  of G): the motion models;
- ``warp_pair``: one step (T(Î, F̂), T(L̂, F̂)); ``joint_propagation``: the chains of a plan;
- ``propagation_quality``: D_R scored against the ground truth the run holds back, beside
  the copied label and the stored optical flow's propagation (a diagnostic, not in the
  paper); ``sequence_picture``: the rebuilt sequence (paper Fig. 3);
- ``propagate``: stage 2, writing ``propagate/d_r``, ``sequence.png`` and ``quality.json``;
  ``d_r_by_row`` reads D_R back by training row.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg import metrics, visualize
from jaxsurg.data import datasets, generated, pipeline
from jaxsurg.data.sequences import TrainSequence
from jaxsurg.methods.dual_motion.flow_predictor import MotionFlowPredictor
from jaxsurg.methods.dual_motion.training import _chunks
from jaxsurg.methods.dual_motion.training_sets import propagation_plan  # D_R's rows, re-exported here
from jaxsurg.methods.dual_motion.transform import warp_image, warp_labels
from jaxsurg.train import stage
from jaxsurg.train.writers import write_json


def _travel_flow(seq: TrainSequence, q: int, d: int) -> np.ndarray:
    """F_{q→q+d}: the flow from row q to its neighbour in direction d (on q's grid)."""
    return seq.flow_fwd[q] if d > 0 else seq.flow_bwd[q]


def _back_flow(seq: TrainSequence, q: int, d: int) -> np.ndarray:
    """F_{q+d→q}: the flow from the neighbour in direction d back to row q (on q + d's grid)."""
    return seq.flow_bwd[q + d] if d > 0 else seq.flow_fwd[q + d]


def history(seq: TrainSequence, p: int, d: int, inputs: str = "past", warp: str = "forward") -> tuple[np.ndarray, np.ndarray]:
    """G's input for the step from row ``p`` to p + d (``d`` = +1 forward, −1 backward in
    time), by ``flow_predictor.inputs``:

      - ``past``: the raw frames at p − 2d, p − d, p (the step's target unseen) and the flows
        between them in the direction of travel, F_{q→q+d};
      - ``reconstruct`` (Eq. 1's G(I_{t0:t+1}, F_{t0+1:t+1}), the authors' code): the raw
        frames at p − d, p, p + d — the frame the step moves into included — and the flows
        between them: F_{q→q+d} for a forward warp (on the source grid, where T splats),
        F_{q+d→q} for a backward warp (on the target grid, where T samples), so the last
        one is the optical flow of the very step G refines.

    Returns uint8 (3, H, W, 3) frames, oldest first in the direction of travel, and float32
    (2, H, W, 2) flows (dx, dy) in pixels. Rows outside the video's training part are
    replaced by the nearest one, with zero flow. All are raw frames and their optical
    flows: no held-back label is read, and every unlabelled training frame's image is known.

    Raises:
      ValueError: an unknown ``inputs`` or ``warp``.
    """
    if inputs not in ("past", "reconstruct") or warp not in ("forward", "backward"):
        raise ValueError(f"inputs={inputs!r} must be 'past' or 'reconstruct' and warp={warp!r} 'forward' or 'backward'")
    lo, hi = int(seq.starts[p]), int(seq.ends[p])
    idx = [p - 2 * d, p - d, p] if inputs == "past" else [p - d, p, p + d]
    inside = [lo <= q <= hi for q in idx]
    clamped = [min(max(q, lo), hi) for q in idx]
    frames = seq.frames[clamped]
    flows = np.zeros((2, *seq.frames.shape[1:3], 2), np.float32)
    pick = _back_flow if (inputs == "reconstruct" and warp == "backward") else _travel_flow
    for i in range(2):
        if inside[i] and inside[i + 1]:
            flows[i] = pick(seq, idx[i], d)
    return frames, flows


def optical_flow_motion(seq: TrainSequence, warp: str) -> Callable:
    """The stored optical flow as the motion model of ``joint_propagation``
    (``config.motion='optical_flow'``), float32 (B, H, W, 2) in pixels, for a step from row
    p in direction d: on the source grid for a forward warp (F_{p→p+d}: ``seq.flow_fwd[p]``
    for d = +1, ``seq.flow_bwd[p]`` for −1), on the target grid for a backward warp
    (F_{p+d→p}: ``seq.flow_bwd[p + 1]`` for +1, ``seq.flow_fwd[p − 1]`` for −1). The
    target row p + d is clamped to the video's training part: ``joint_propagation`` steps a
    chain that needs fewer steps than its batch's longest from the clamped edge row, and
    discards those results, so they must only stay inside the video. Frames and history
    flows are unused."""

    def motion(frames, flows, rows, directions):
        out = []
        for r, d in zip(rows, directions):
            if warp == "forward":
                out.append(seq.flow_fwd[r] if d > 0 else seq.flow_bwd[r])
            else:
                q = min(max(int(r) + int(d), int(seq.starts[r])), int(seq.ends[r]))
                out.append(seq.flow_bwd[q] if d > 0 else seq.flow_fwd[q])
        return np.stack(out)

    return motion


def make_motion_fn(model: MotionFlowPredictor, params) -> Callable:
    """G as the motion model of ``joint_propagation``: (frames uint8 (B, 3, H, W, 3), flows
    (B, 2, H, W, 2), rows, directions) → F̂ (B, H, W, 2); rows and directions are unused (G
    sees only the frames and flows)."""
    fn = jax.jit(lambda p, frames, flows: model.apply({"params": p}, pipeline.images_to_float(frames), flows))
    return lambda frames, flows, rows, directions: fn(params, frames, flows)


@functools.partial(jax.jit, static_argnames=("num_classes", "warp"))
def warp_pair(image: jax.Array, labels: jax.Array, flow: jax.Array, *, num_classes: int, warp: str):
    """One joint-propagation step (Eq. 1–2): (T(image, flow), T(labels, flow)) for float
    (B, H, W, 3) images in [0, 1] and int (B, H, W) labels (255 = ignore)."""
    return warp_image(image, flow, warp), warp_labels(labels, flow, num_classes, warp)


def joint_propagation(
    seq: TrainSequence, plan: dict[int, tuple[int, int, int]], motion_fn: Callable, *, num_classes: int, warp: str, batch_size: int,
    inputs: str = "past",
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Runs the chains of ``plan`` (from ``propagation_plan``) and returns
    {unlabelled row: (Î uint8 (H, W, 3), L̂ uint8 (H, W))}.

    ``motion_fn(frames, flows, rows, directions) → F̂`` (B, H, W, 2) gives the motion from
    each chain's current row p to p + d: G via ``make_motion_fn`` (which sees the
    ``history`` frames and flows of G's ``inputs`` mode, 'past' or 'reconstruct', for
    ``warp``), the stored optical flow (``optical_flow_motion``), or the true flow in tests. Each step warps the chain's
    current (Î, L̂) — starting from the labelled (I_l, L_l) — with ``warp_pair``; every
    chain (l, d) runs to its farthest needed step, saving the pairs it passes. Chains are
    processed ``batch_size`` at a time (the last batch padded, so shapes stay fixed).
    """
    need: dict[tuple[int, int], int] = {}
    for l, d, j in plan.values():
        need[(l, d)] = max(need.get((l, d), 0), j)
    chains = sorted(need)
    wanted = {(l, d, j): u for u, (l, d, j) in plan.items()}
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for chunk, padded in _chunks(chains, batch_size):
        image = jnp.asarray(np.stack([seq.frames[l] for l, _ in padded]), jnp.float32) / 255.0
        labels = jnp.asarray(np.stack([seq.masks[l] for l, _ in padded]), jnp.int32)
        for j in range(1, max(need[c] for c in chunk) + 1):
            ps = np.array([min(max(l + d * (j - 1), int(seq.starts[l])), int(seq.ends[l])) for l, d in padded])
            ds = np.array([d for _, d in padded])
            hist = [history(seq, int(p), int(d), inputs, warp) for p, d in zip(ps, ds)]
            flow = motion_fn(np.stack([h[0] for h in hist]), np.stack([h[1] for h in hist]), ps, ds)
            image, labels = warp_pair(image, labels, jnp.asarray(flow, jnp.float32), num_classes=num_classes, warp=warp)
            host_img = np.asarray(jnp.clip(jnp.round(image * 255.0), 0, 255)).astype(np.uint8)
            host_lab = np.asarray(labels).astype(np.uint8)
            for b, (l, d) in enumerate(chunk):
                u = wanted.get((l, d, j))
                if u is not None:
                    out[u] = (host_img[b], host_lab[b])
    return out


def _pair_scores(seq: TrainSequence, truth: np.ndarray, u: int, image: np.ndarray, label: np.ndarray, extra: np.ndarray | None, num_classes: int):
    """Scores of a propagated pair (Î_u, L̂_u) over the pixels L̂_u covers, and of ``extra``
    (a label map, or None) on the same pixels: (iou, dice, extra iou, extra dice, coverage,
    PSNR of Î_u, covered mask, target has truth)."""
    covered = label != metrics.IGNORE_INDEX
    target = np.where(covered, truth[u], metrics.IGNORE_INDEX)
    guesses = [np.where(covered, label, 0)] + ([extra] if extra is not None else [])
    counts = jax.device_get(metrics.confusion_counts(np.stack(guesses).astype(np.int32), np.stack([target] * len(guesses)), num_classes))
    s = metrics.frame_scores(counts)
    psnr = _psnr(image, seq.frames[u], covered)
    extra_iou, extra_dice = (s["iou"][1], s["dice"][1]) if extra is not None else (None, None)
    return s["iou"][0], s["dice"][0], extra_iou, extra_dice, float(covered.mean()), psnr, covered, bool((target != metrics.IGNORE_INDEX).any())


def _psnr(image: np.ndarray, real: np.ndarray, covered: np.ndarray) -> float:
    """PSNR (dB, peak 255) of ``image`` against ``real`` over ``covered``; NaN when nothing is covered."""
    if not covered.any():
        return np.nan
    err = np.mean((image[covered].astype(np.float64) - real[covered].astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(err, 1e-10)))


def propagation_quality(
    seq: TrainSequence,
    pairs: dict[int, tuple[np.ndarray, np.ndarray]],
    plan: dict[int, tuple[int, int, int]],
    num_classes: int,
    optical_flow_pairs: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, dict[str, Any]]:
    """How good D_R is: the propagated pairs scored against what the run held back.

    For every pair (Î_u, L̂_u) of ``joint_propagation`` (propagated ``plan[u]`` = (l, d, k)
    from labelled row l), grouped by the number of steps k ("k=1", "k=2", ...) and over
    all ("all"):
      - ``label_iou`` / ``label_dice``: per-frame IoU/Dice of L̂_u against the true label of
        frame u (``seq.true_masks``, ``metrics.frame_scores``: binary or the mean over the
        foreground classes present), over the pixels L̂_u covers; mean over the frames with
        ground truth, None when none has any.
      - ``zero_motion_iou`` / ``zero_motion_dice``: the same for L_l copied unchanged to
        frame u, on the same pixels: the baseline a motion model has to beat.
      - ``coverage``: the share of L̂_u's pixels that received a label (not 255), in [0, 1].
      - ``psnr_db`` / ``zero_motion_psnr_db``: PSNR (dB, peak 255) of Î_u and of I_l
        against the real frame I_u over the covered pixels; needs no ground truth.
      - with ``optical_flow_pairs`` (the same chains of ``plan`` run with the stored optical
        flow, ``optical_flow_motion``: MFTAPNet-style propagation, the baseline a learned
        motion has to beat): ``optical_flow_iou`` / ``optical_flow_dice`` /
        ``optical_flow_coverage`` / ``optical_flow_psnr_db``, the same scores of those
        pairs, each over the pixels its own label covers (as L̂_u's).
      - ``frames``: pairs in the group; ``labelled_frames``: those with ground truth.

    Not in the paper: a diagnostic of the D_R of Sec. 2.1 (Eq. 2), possible wherever the
    sparse labels are simulated on a fully labelled video (the paper's own setting).

    Raises:
      KeyError: a row of ``pairs`` missing from ``plan`` or from ``optical_flow_pairs``.
    """
    truth = seq.true_masks if seq.true_masks is not None else np.full_like(seq.masks, metrics.IGNORE_INDEX)
    scored = []
    for u in sorted(pairs):
        l, _, k = plan[u]
        image, label = pairs[u]
        iou, dice, copy_iou, copy_dice, coverage, psnr, covered, has_truth = _pair_scores(seq, truth, u, image, label, seq.masks[l], num_classes)
        row = {
            "k": k, "has_truth": has_truth, "label_iou": iou, "label_dice": dice, "zero_motion_iou": copy_iou,
            "zero_motion_dice": copy_dice, "coverage": coverage, "psnr_db": psnr, "zero_motion_psnr_db": _psnr(seq.frames[l], seq.frames[u], covered),
        }
        if optical_flow_pairs is not None:
            of_image, of_label = optical_flow_pairs[u]
            of_iou, of_dice, _, _, of_coverage, of_psnr, _, _ = _pair_scores(seq, truth, u, of_image, of_label, None, num_classes)
            row.update(optical_flow_iou=of_iou, optical_flow_dice=of_dice, optical_flow_coverage=of_coverage, optical_flow_psnr_db=of_psnr)
        scored.append(row)
    scores = ("label_iou", "label_dice", "zero_motion_iou", "zero_motion_dice")
    others = ("coverage", "psnr_db", "zero_motion_psnr_db")
    if optical_flow_pairs is not None:
        scores += ("optical_flow_iou", "optical_flow_dice")
        others += ("optical_flow_coverage", "optical_flow_psnr_db")

    def aggregate(group: list[dict]) -> dict[str, Any]:
        known = [r for r in group if r["has_truth"]]
        out: dict[str, Any] = {"frames": len(group), "labelled_frames": len(known)}
        for key in scores:
            out[key] = float(np.mean([r[key] for r in known])) if known else None
        for key in others:
            values = [r[key] for r in group if not np.isnan(r[key])]
            out[key] = float(np.mean(values)) if values else None
        return out

    out = {f"k={k}": aggregate([r for r in scored if r["k"] == k]) for k in sorted({r["k"] for r in scored})}
    out["all"] = aggregate(scored)
    return out


def sequence_picture(
    seq: TrainSequence,
    d_r: dict[int, tuple[np.ndarray, np.ndarray]],
    rows: np.ndarray,
    class_names: Sequence[str] | None = None,
    caption: str = "",
) -> np.ndarray:
    """Paper Fig. 3, the ``propagate/sequence.png`` picture: the rebuilt training sequence
    for ``rows``, one column per row — the raw frame (top), the frame trained on (raw where
    labelled, propagated Î elsewhere, black where no pair) and its label (bottom) in colour
    (background dark grey, no label black); labelled columns framed in white. Each panel
    is titled with its position in the video and scaled up (nearest) to at least
    ``visualize.MIN_SIDE`` px on the short side; ``caption`` and a class legend go under
    the grid (``visualize.compose``).

    Args:
      seq: the training sequence. d_r: {row: (Î uint8 (H, W, 3), L̂ uint8 (H, W))}.
      rows: int (n,) training rows to show, in order.
      class_names: the task's classes (index 0 = background) for the legend; None names
        the classes shown "class c".
      caption: text under the grid (e.g. D_R's quality).

    Returns:
      uint8 (H', W', 3) RGB.
    """
    h, w = seq.frames.shape[1:3]
    grey = (40, 40, 40)
    k = visualize.upscale_factor((h, w))
    border = max(2, k * min(h, w) // 100)
    rows_of_panels: tuple[list, list, list] = ([], [], [])
    titles: tuple[list, list, list] = ([], [], [])
    shown = set()
    for r in rows:
        t = int(seq.position[r])
        if seq.labelled[r]:
            img, lab, kind = seq.frames[r], seq.masks[r], "labelled"
        elif int(r) in d_r:
            img, lab, kind = *d_r[int(r)], "propagated"
        else:
            img, lab, kind = np.zeros((h, w, 3), np.uint8), np.full((h, w), 255, np.uint8), "no pair"
        base = np.full((h, w, 3), grey, np.uint8)
        base[lab == 255] = 0
        shown.update(np.unique(lab).tolist())
        panels = [visualize.upscale(np.asarray(x), visualize.MIN_SIDE) for x in (seq.frames[r], img, visualize.colorize(base, lab.astype(np.int64), alpha=1.0))]
        for i, (panel, title) in enumerate(zip(panels, (f"t={t}: frame", f"t={t}: trained on ({kind})", f"t={t}: its label"))):
            if seq.labelled[r]:
                panel = np.ascontiguousarray(panel.copy())
                cv2.rectangle(panel, (0, 0), (panel.shape[1] - 1, panel.shape[0] - 1), (255, 255, 255), border)
            rows_of_panels[i].append(panel)
            titles[i].append(title)
    background = "background" if class_names is None else str(class_names[0])
    legend = [(background, grey), ("no label", (0, 0, 0)), *visualize.class_legend(class_names, shown)]
    return visualize.compose(sum(rows_of_panels, []), sum(titles, []), columns=len(rows), caption=caption, legend=legend)


def _sequence_caption(quality: dict[str, Any]) -> str:
    """The caption of ``sequence.png``: what the picture shows and D_R's quality (``all``)."""
    q = quality["all"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    flow = f", optical flow {fmt(q['optical_flow_iou'], '.3f')}" if "optical_flow_iou" in q else ""
    return (
        "Rebuilt training sequence (paper Fig. 3); white frame = labelled frame, other columns are propagated from the "
        f"nearest labelled frame. D_R, {q['frames']} propagated frames: label IoU {fmt(q['label_iou'], '.3f')} "
        f"(zero motion {fmt(q['zero_motion_iou'], '.3f')}{flow}), label Dice {fmt(q['label_dice'], '.3f')}, "
        f"coverage {fmt(q['coverage'], '.0%')}, PSNR {fmt(q['psnr_db'], '.1f')} dB."
    )


def d_r_info(config, num_classes: int) -> dict[str, Any]:
    """The settings a D_R (and the D_C built on it) depends on, recorded in its
    ``meta.json`` and checked by ``generated.reusable`` when a stage would skip it."""
    return {
        "dataset": config.dataset, "task": config.task, "num_classes": num_classes, "resize": list(config.resize),
        "label_interval": config.label_interval, "propagation_steps": config.propagation_steps, "warp": config.warp,
        "motion": config.motion, "g_inputs": config.flow_predictor.inputs if config.motion == "learned" else None,
    }


QUALITY = "quality.json"


def _optical_flow_pairs(config, seq: TrainSequence, plan, num_classes: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The chains of ``plan`` run with the stored optical flow: the baseline of quality.json."""
    return joint_propagation(
        seq, plan, optical_flow_motion(seq, config.warp), num_classes=num_classes, warp=config.warp, batch_size=config.generate_batch,
    )


def propagate(config, workdir, seq: TrainSequence, g_model, g_params, num_classes: int) -> generated.GeneratedDataset:
    """Stage 2: writes D_R (``propagate/d_r``), ``propagate/sequence.png`` and
    ``propagate/quality.json`` (``propagation_quality`` of D_R, with the copied label and
    the stored optical flow's propagation as baselines); skipped when D_R is complete and
    matches the config (``generated.reusable``), writing only a missing ``quality.json``
    from it.

    ``g_model`` / ``g_params``: the trained flow predictor (None with ``config.motion =
    'optical_flow'``), fed the ``history`` of ``config.flow_predictor.inputs``."""
    out_dir = os.path.join(workdir, "propagate")
    path = os.path.join(out_dir, "d_r")
    pic_path = os.path.join(out_dir, "sequence.png")
    quality_path = os.path.join(out_dir, QUALITY)
    info = d_r_info(config, num_classes)
    plan = propagation_plan(seq, config.propagation_steps)
    if generated.reusable(path, info) and os.path.exists(pic_path):
        d_r = generated.GeneratedDataset(path)
        if not os.path.exists(quality_path):  # a D_R from before quality.json
            write_quality = lambda: write_json(
                quality_path, propagation_quality(seq, d_r_by_row(seq, d_r), plan, num_classes, _optical_flow_pairs(config, seq, plan, num_classes))
            )
            stage.on_host0(write_quality, "quality written")
        return d_r
    by_flow = _optical_flow_pairs(config, seq, plan, num_classes)
    if config.motion == "optical_flow":
        pairs = by_flow
    else:
        motion = make_motion_fn(g_model, jax.device_put(g_params))
        pairs = joint_propagation(
            seq, plan, motion, num_classes=num_classes, warp=config.warp, batch_size=config.generate_batch, inputs=config.flow_predictor.inputs,
        )

    def write():
        quality = propagation_quality(seq, pairs, plan, num_classes, by_flow)
        logging.info("dual motion: D_R quality %s", quality["all"])
        if not generated.is_complete(path):
            with generated.GeneratedWriter(path, overwrite=True, info=info) as w:
                for u in sorted(pairs):
                    w.add(pairs[u][0], pairs[u][1], video_id=int(seq.video_id[u]), position=float(seq.position[u]), source="propagated", k=plan[u][2])
        first = np.flatnonzero(seq.starts == seq.starts[0])
        rows = first[: min(len(first), 2 * config.label_interval + 1)]
        os.makedirs(out_dir, exist_ok=True)
        picture = sequence_picture(seq, pairs, rows, datasets.task_classes(config.dataset, config.task), _sequence_caption(quality))
        cv2.imwrite(pic_path, picture[..., ::-1])
        write_json(quality_path, quality)

    stage.on_host0(write, "d_r written")
    return generated.GeneratedDataset(path)


def d_r_by_row(seq: TrainSequence, d_r: generated.GeneratedDataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """D_R as {training row: (Î, L̂)}."""
    key = {(int(v), int(p)): i for i, (v, p) in enumerate(zip(seq.video_id, seq.position))}
    out = {}
    for i in range(len(d_r)):
        r = d_r[i]
        out[key[(r["video_id"], int(round(r["position"])))]] = (r["image"], r["mask"])
    return out
