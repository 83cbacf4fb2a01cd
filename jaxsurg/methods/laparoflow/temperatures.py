"""τ_P and τ_N, the temperatures of the flow weights of Laparoflow-SSL's Eq. (9) (Moens et
al. 2024, Sec. 2.3): by the median heuristic (Gretton et al. 2012), the 25 % and 75 %
quantiles of the relative flow distances of Eq. (8) over the unlabelled pretraining set.
Host NumPy, run once before pretraining.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import jax
import ml_collections
import numpy as np

from jaxsurg.data import unlabelled
from jaxsurg.train.writers import write_json


def relative_distance_quantiles(
    flows: Iterable[np.ndarray],
    valids: Iterable[np.ndarray],
    *,
    quantiles: tuple[float, ...] = (0.25, 0.75),
    num_anchors: int = 16,
    min_flow: float = 1.0 / 3.0,
    seed: int = 0,
    pixels_per_anchor: int | None = 1024,
) -> tuple[float, ...]:
    """Estimates τ_P, τ_N: quantiles of the relative flow distance Δf over a set of flows.

    Moens et al. 2024, Sec. 2.3 (median heuristic, Gretton et al. 2012): τ_P and τ_N are the
    25 % and 75 % quantiles of Eq. (8) over the pretraining set. Anchors are drawn as in
    training: per flow field, up to ``num_anchors`` pixels uniformly without replacement
    among the valid pixels with ‖f‖ ≥ ``min_flow``; Δf is taken to the other valid pixels of
    that field (the anchor itself excluded), or to ``pixels_per_anchor`` of them drawn
    uniformly (bounds host memory; None = all). Host NumPy, run once before pretraining.

    Args:
      flows: iterable of float (H, W, 2) flow fields in pixels (any (..., 2) shape works).
      valids: iterable of bool (H, W) masks, same length and pixel shapes as ``flows``.
      quantiles: the quantile levels in [0, 1].
      num_anchors: anchors per flow field; min_flow: anchor threshold in pixels.
      seed: NumPy random seed; pixels_per_anchor: see above.

    Returns:
      tuple of Python floats, one per quantile level (default (τ_P, τ_N)).

    Raises:
      ValueError: if no anchor qualifies in any field, on mismatching shapes or lengths, or
        on quantile levels outside [0, 1].
    """
    qs = tuple(float(q) for q in quantiles)
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must be levels in [0, 1], got {quantiles}")
    if int(num_anchors) < 1:
        raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
    rng = np.random.default_rng(seed)
    flows, valids = list(flows), list(valids)
    if len(flows) != len(valids):
        raise ValueError(f"flows and valids must have the same length, got {len(flows)} and {len(valids)}")
    samples = []
    for i, (f, v) in enumerate(zip(flows, valids)):
        f = np.asarray(f, np.float64)
        v = np.asarray(v, bool)
        if f.shape[-1] != 2 or f.shape[:-1] != v.shape:
            raise ValueError(f"flows[{i}] must be (H, W, 2) and valids[{i}] (H, W); got {f.shape} and {v.shape}")
        f = f.reshape(-1, 2)
        v = v.reshape(-1)
        norm = np.linalg.norm(f, axis=-1)
        candidates = np.flatnonzero(v & (norm >= min_flow))
        if candidates.size == 0:
            continue
        chosen = rng.choice(candidates, size=min(int(num_anchors), candidates.size), replace=False)
        valid_idx = np.flatnonzero(v)
        for a in chosen:
            others = valid_idx[valid_idx != a]
            if others.size == 0:
                continue
            if pixels_per_anchor is not None and others.size > pixels_per_anchor:
                others = rng.choice(others, size=int(pixels_per_anchor), replace=False)
            samples.append(np.linalg.norm(f[others] - f[a], axis=-1) / norm[a])
    if not samples:
        raise ValueError(
            f"no anchor qualifies: no valid pixel with flow norm >= min_flow = {min_flow} px "
            "(and another valid pixel) in any of the flow fields"
        )
    values = np.quantile(np.concatenate(samples), qs)
    return tuple(float(x) for x in values)


def estimate_temperatures(config: ml_collections.ConfigDict, frames: unlabelled.FlowFrames, out_path: str) -> tuple[float, float]:
    """τ_P, τ_N (paper Eq. (9)): quantiles ``pretrain.tau_quantiles`` of the relative flow
    distances over up to ``pretrain.quantile_frames`` pretraining frames; cached in
    ``out_path`` so a resumed run uses the same values."""
    p = config.pretrain
    if p.tau_p > 0 and p.tau_n > 0:
        return float(p.tau_p), float(p.tau_n)
    if os.path.exists(out_path):
        with open(out_path, encoding="utf-8") as f:
            cached = json.load(f)
        return float(cached["tau_p"]), float(cached["tau_n"])
    prepare = unlabelled.PretrainPrepare(tuple(p.resize), p.fov_threshold)
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(frames), size=min(p.quantile_frames, len(frames)), replace=False)
    examples = [prepare.prepare(frames[int(i)]) for i in pick]
    tau_p, tau_n = relative_distance_quantiles(
        [e["flow"] for e in examples], [e["valid"] for e in examples],
        quantiles=tuple(p.tau_quantiles), num_anchors=p.num_anchors, min_flow=p.min_flow, seed=config.seed,
    )
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        write_json(out_path, {"tau_p": float(tau_p), "tau_n": float(tau_n), "frames": len(examples), "quantiles": list(p.tau_quantiles)})
    return float(tau_p), float(tau_n)
