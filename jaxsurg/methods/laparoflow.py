"""Laparoflow-SSL (Moens et al. 2024): optical-flow-guided self-supervised pixel
representations, then tiny-label segmentation and key points.

Stages, each resumable from its own checkpoints (``WORKDIR/<stage>/checkpoints``):

1. ``pretrain``: a SegFormer-B0 backbone (256-d unit-norm pixel representations at 1/4
   resolution) trained on unlabelled frames and their optical flow with the flow-weighted
   pixel InfoNCE of the paper's Eq. (1), (5)–(9) (or the ablations of its Appendix C,
   ``config.pretrain.loss``). τ_P and τ_N are estimated before training from the
   pretraining set (``WORKDIR/pretrain/tau.json``); afterwards ``WORKDIR/pretrain/pca.png``
   shows three principal components of the representations as colours (paper Fig. 1b).
2. ``finetune``: backbone frozen; a side-tune network and the segmentation head trained
   with cross-entropy + Lovász-Softmax on ``config.num_labelled`` frames chosen by
   ``config.seed``.
3. ``eval``: per-frame IoU/Dice with per-class figures (``eval/summary.json``, overlays).
4. ``keypoints`` (datasets with key points): the narrow key-point head on the frozen
   backbone, Gaussian targets, mean of binary Lovász and cross-entropy; scored as Du et al.
   (2018) (``eval/keypoints.json``).

``config.baseline = "nossl"`` is the paper's "No SSL": the same network randomly
initialised, every parameter trained, the same labelled frames and budget.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import cv2
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg import evaluate, keypoints as kp, visualize
from jaxsurg.data import pipeline, transforms, unlabelled
from jaxsurg.losses import contrastive, lovasz
from jaxsurg.losses.segmentation import cross_entropy
from jaxsurg.methods import common
from jaxsurg.models.heads import KeypointHead, SideTuneSegmentationHead
from jaxsurg.models.segformer import SegFormer
from jaxsurg.ops import views
from jaxsurg.train import checkpoint, loop
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train.state import TrainState
from jaxsurg.train.writers import write_json

STRIDE = 4  # SegFormer's representation grid: 1/4 of the input
TASK_FOR_DATASET = {"synthetic": "binary", "cholecseg8k": "laparoflow4"}
LOSSES = ("flow", "flow_only", "view", "flow+view")


# ----------------------------------------------------------------------------- models


class BackboneWithHead(nn.Module):
    """A SegFormer backbone and a head that sees the image and its representation.

    ``apply(variables, image, train=...)``: image float32 (B, H, W, 3) in [0, 1] → the
    head's logits (B, H, W, K). With ``freeze_backbone`` the backbone runs in inference mode
    (BatchNorm statistics, no dropout) under ``stop_gradient``. Params: ``backbone``, ``head``.
    """

    backbone: nn.Module
    head: nn.Module
    freeze_backbone: bool

    def __call__(self, image: jax.Array, *, train: bool = False) -> jax.Array:
        rep = self.backbone(image, train=train and not self.freeze_backbone)
        if self.freeze_backbone:
            rep = jax.lax.stop_gradient(rep)
        return self.head(image, rep)


def build_backbone(config: ml_collections.ConfigDict) -> SegFormer:
    """The SegFormer backbone of ``config.model`` (MiT-B0, 256-d unit-norm representations)."""
    if config.model.variant != "b0":
        raise ValueError(f"config.model.variant={config.model.variant!r}: only 'b0' is implemented")
    return SegFormer(
        out_dim=config.model.out_dim, drop_path=config.model.drop_path, dropout=config.model.dropout,
        dtype=jnp.dtype(config.model.dtype),
    )


def resolve_task(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``task = "auto"`` → the binary task on synthetic data, the paper's 4 classes on
    CholecSeg8k. Returns a copy."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.task == "auto":
        if c.dataset not in TASK_FOR_DATASET:
            raise ValueError(f"config.task='auto' has no default for dataset {c.dataset!r}; set config.task")
        c.task = TASK_FOR_DATASET[c.dataset]
    if c.pretrain.loss not in LOSSES:
        raise ValueError(f"config.pretrain.loss={c.pretrain.loss!r}; known: {LOSSES}")
    if c.baseline not in ("", "nossl"):
        raise ValueError(f"config.baseline={c.baseline!r}; known: '' (Laparoflow-SSL) and 'nossl'")
    for key in ("view_size",):
        h, w = c.pretrain[key]
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"config.pretrain.{key}={tuple(c.pretrain[key])} must be multiples of {STRIDE}")
    return c


def _init_variables(model: nn.Module, seed: int, shape: tuple[int, int]) -> dict[str, Any]:
    x = jnp.zeros((1, *shape, 3), jnp.float32)
    keys = {"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}
    return jax.jit(lambda: model.init(keys, x, train=False))()


def _l2_normalize(z: jax.Array) -> jax.Array:
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- pretrain


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
    tau_p, tau_n = contrastive.relative_distance_quantiles(
        [e["flow"] for e in examples], [e["valid"] for e in examples],
        quantiles=tuple(p.tau_quantiles), num_anchors=p.num_anchors, min_flow=p.min_flow, seed=config.seed,
    )
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        write_json(out_path, {"tau_p": float(tau_p), "tau_n": float(tau_n), "frames": len(examples), "quantiles": list(p.tau_quantiles)})
    return float(tau_p), float(tau_n)


def pretrain_loss(
    z1: jax.Array, z2: jax.Array, v: dict[str, jax.Array], key: jax.Array, p: ml_collections.ConfigDict, tau_p: float, tau_n: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The pretraining loss of ``p.loss`` on one batch of views.

    Args:
      z1, z2: float32 (B, hr, wr, D) unit-norm representations of view 1 and view 2.
      v: the output of ``views.make_views``.
      key: rng for the anchor draw.
      p: ``config.pretrain``.
      tau_p, tau_n: the temperatures of Eq. (9).

    Returns:
      (loss, metrics).
    """
    b, hr, wr, d = z2.shape
    n = hr * wr
    z3, inside = views.sample_bilinear(z1, v["grid2to1"])
    z3 = _l2_normalize(z3)
    flat = lambda a: a.reshape(b, n, *a.shape[3:])  # noqa: E731
    valid3 = flat(v["valid3"] & inside.astype(bool).reshape(v["valid3"].shape))
    flow3 = flat(v["flow3"])
    k_flow, k_view, k_pairs = jax.random.split(key, 3)
    metrics = {}

    def flow_term(za, zb, flow, valid, exclude_self):
        anchors, amask = contrastive.sample_anchors(k_flow, flow, valid, p.num_anchors, p.min_flow)
        loss, aux = contrastive.flow_guided_infonce(
            za, zb, flow, valid, anchors, amask, tau_p=tau_p, tau_n=tau_n, tau0=p.tau0,
            negative_weight=p.negative_weight, counterpart_weight=p.counterpart_weight, exclude_self=exclude_self,
            num_pairs=p.num_pairs or None, key=k_pairs,
        )
        metrics["anchors"] = jnp.mean(jnp.sum(amask, axis=-1).astype(jnp.float32))
        return loss, aux

    def view_term():
        anchors, amask = contrastive.sample_anchors(k_view, flow3, valid3, p.num_anchors, 0.0)
        loss, aux = contrastive.view_contrastive_infonce(
            flat(z2), flat(z3), v["coords3"], valid3, anchors, amask,
            radius=p.radius_fraction * p.view_size[1], tau0=p.tau0, negative_weight=p.negative_weight,
        )
        return loss, aux

    if p.loss == "flow":
        loss, _ = flow_term(flat(z2), flat(z3), flow3, valid3, False)
    elif p.loss == "flow_only":  # Appendix C.1: s^(1,1) on view 1's own grid
        pool = lambda a: a.reshape(b, hr, STRIDE, wr, STRIDE, *a.shape[3:]).mean(axis=(2, 4))  # noqa: E731
        flow1 = pool(v["flow1"])
        valid1 = pool(v["valid1"].astype(jnp.float32)) > 0.999
        loss, _ = flow_term(flat(z1), flat(z1), flat(flow1), flat(valid1), True)
    elif p.loss == "view":
        loss, _ = view_term()
    else:  # flow+view (Appendix C.3): the triplet sums, each weighted by the other's total
        lf, af = flow_term(flat(z2), flat(z3), flow3, valid3, False)
        lv, av = view_term()
        metrics.update(loss_flow=lf, loss_view=lv)
        loss = contrastive.balanced_sum(af["loss_sum"], af["total_weight"], av["loss_sum"], av["total_weight"])
    return loss, metrics


def make_pretrain_step(model: SegFormer, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, tau_p: float, tau_n: float, mesh):
    """The jitted pretraining step: views on device, both views through the backbone in one
    batch, the loss of ``config.pretrain.loss``. Randomness: ``fold_in(seed, step)``."""
    p = config.pretrain
    base_key = jax.random.PRNGKey(config.seed + 7)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(base_key, state.step)
        k_views, k_loss, k_drop = jax.random.split(key, 3)
        image = pipeline.images_to_float(batch["image"])
        v = views.make_views(
            k_views, image, batch["flow"], batch["valid"], tuple(p.view_size), stride=STRIDE,
            max_zoom=p.max_zoom, rotate=p.rotate, flip=p.flip,
        )
        b = image.shape[0]

        def loss_fn(params):
            x = jnp.concatenate([v["view1"], v["view2"]], axis=0)
            z, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"dropout": k_drop}, mutable=["batch_stats"],
            )
            loss, metrics = pretrain_loss(z[:b], z[b:], v, k_loss, p, tau_p, tau_n)
            return loss, (metrics, updates["batch_stats"])

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)
        return new, metrics

    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def pretrain_optimizer(p: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up and cosine decay (the paper gives no optimiser)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, p.learning_rate, warmup_steps=max(1, min(p.warmup_steps, p.total_steps - 1)),
        decay_steps=max(p.total_steps, 2), end_value=p.learning_rate * 0.01,
    )
    return optax.adamw(schedule, weight_decay=p.weight_decay), schedule


def pretrain(config: ml_collections.ConfigDict, workdir: str, data: pipeline.LoadedDataset, mesh) -> dict[str, Any]:
    """Stage 1: returns the backbone's variables ({"params", "batch_stats"}) after
    ``config.pretrain.total_steps`` (resumed or, with ``pretrain.from_workdir``, taken from
    another run)."""
    p = config.pretrain
    model = build_backbone(config)
    tx, schedule = pretrain_optimizer(p)
    variables = _init_variables(model, config.seed, tuple(p.view_size))
    if config.model.pretrained_segformer:  # start from the user's Hugging Face SegFormer weights
        from jaxsurg.weights.hf_segformer import load_segformer

        variables = load_segformer(config.model.pretrained_segformer, variables)
    state = jax.device_put(TrainState.create(variables["params"], tx, variables["batch_stats"]), mesh_lib.replicated(mesh))
    source_dir = p.from_workdir or workdir
    if p.from_workdir:
        manager = checkpoint.make_manager(source_dir, "pretrain", every=p.checkpoint_every, keep=config.keep_checkpoints)
        state, step = checkpoint.restore_latest(manager, state)
        manager.close()
        if step < p.total_steps:
            raise ValueError(f"config.pretrain.from_workdir={p.from_workdir!r} holds a pretraining checkpoint at step {step}, not {p.total_steps}")
    else:
        frames = unlabelled.pretraining_frames(config, data)
        tau_p, tau_n = estimate_temperatures(config, frames, os.path.join(workdir, "pretrain", "tau.json"))
        logging.info("pretraining on %d frames, tau_p=%.4g tau_n=%.4g", len(frames), tau_p, tau_n)
        prepare = unlabelled.PretrainPrepare(tuple(p.resize), p.fov_threshold)

        def batches_from(start):
            return pipeline.global_batches(
                frames, prepare, seed=config.seed, batch_size=p.batch_size, mesh=mesh, start_step=start,
                num_threads=config.data_threads,
            )

        loop_cfg = loop.LoopConfig(
            stage="pretrain", total_steps=p.total_steps, log_every=p.log_every,
            checkpoint_every=p.checkpoint_every, keep_checkpoints=config.keep_checkpoints, examples_per_step=p.batch_size,
        )
        state = loop.train(loop_cfg, workdir, state, make_pretrain_step(model, tx, config, tau_p, tau_n, mesh), batches_from, schedule)
    # On the host: each downstream stage puts its own copy on the devices (and donates it).
    backbone = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    pca_path = os.path.join(workdir, "pretrain", "pca.png")
    if config.pretrain.pca_frames > 0 and not os.path.exists(pca_path) and jax.process_index() == 0:
        write_pca_picture(model, backbone, config, data, pca_path)
    return backbone



def write_pca_picture(model: SegFormer, backbone: dict[str, Any], config: ml_collections.ConfigDict, data: pipeline.LoadedDataset, path: str) -> None:
    """``pretrain/pca.png``: test frames beside the first three principal components of
    their representations as colours (paper Fig. 1b / 5c)."""
    n = min(config.pretrain.pca_frames, len(data.test_rows))
    pick = np.linspace(0, len(data.test_rows) - 1, n).round().astype(int)
    frames = pipeline.Frames(data.test_source, data.test_rows[pick], config.task, ("image",))
    size = tuple(config.pretrain.resize)
    images = np.stack([transforms.resize(frames[i], size)["image"][0] for i in range(n)])
    reps = jax.jit(lambda x: model.apply(backbone, x, train=False))(jnp.asarray(images, jnp.float32) / 255.0)
    reps = np.asarray(jax.device_get(reps))
    fov = np.stack([unlabelled.field_of_view(im, threshold=config.pretrain.fov_threshold) for im in images])
    fov_small = np.stack([cv2.resize(f.astype(np.uint8), reps.shape[2:0:-1], interpolation=cv2.INTER_NEAREST) for f in fov]).astype(bool)
    panel = visualize.pca_panel(images, reps, valid=fov_small if fov_small.any() else None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, panel[..., ::-1])


# ----------------------------------------------------------------------------- downstream


def choose_labelled(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of the labelled ``rows``, drawn without replacement with ``seed``, sorted.

    Raises:
      ValueError: if fewer than ``count`` rows are labelled.
    """
    if count > len(rows):
        raise ValueError(f"config.num_labelled={count} but only {len(rows)} labelled training frames exist")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.asarray(rows), size=count, replace=False))


def head_optimizer(learning_rate: float, freeze_backbone: bool, params: Any) -> optax.GradientTransformation:
    """Adam on the head (and, for No SSL, the backbone); frozen parameters get no update."""
    if not freeze_backbone:
        return optax.adam(learning_rate)
    labels = {k: ("frozen" if k == "backbone" else "train") for k in params}
    return optax.multi_transform({"train": optax.adam(learning_rate), "frozen": optax.set_to_zero()}, labels)


def init_downstream(config, head: nn.Module, backbone_vars: dict[str, Any] | None, shape, mesh, learning_rate):
    """(model, tx, state) for a head on the backbone; ``backbone_vars`` None = No SSL."""
    freeze = backbone_vars is not None
    model = BackboneWithHead(build_backbone(config), head, freeze_backbone=freeze)
    variables = _init_variables(model, config.seed + 100, shape)
    params = dict(variables["params"])
    batch_stats = dict(variables.get("batch_stats", {}))
    if freeze:
        params["backbone"] = backbone_vars["params"]
        batch_stats["backbone"] = backbone_vars["batch_stats"]
    tx = head_optimizer(learning_rate, freeze, params)
    state = jax.device_put(TrainState.create(params, tx, batch_stats), mesh_lib.replicated(mesh))
    return model, tx, state


def make_downstream_step(model: BackboneWithHead, tx, loss_fn: Callable, target_key: str, seed: int, mesh):
    """A jitted step of ``loss_fn(logits, batch[target_key])`` for a head on the backbone."""
    base_key = jax.random.PRNGKey(seed + 11)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(base_key, state.step)
        x = pipeline.images_to_float(batch["image"])

        def objective(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"dropout": key}, mutable=["batch_stats"],
            )
            loss, metrics = loss_fn(logits, batch[target_key])
            return loss, (metrics, updates.get("batch_stats", state.batch_stats))

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)
        return new, {"loss": loss, **metrics}

    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def segmentation_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy + Lovász-Softmax (paper App. D.3); labels uint8 (B, H, W), 255 = ignore."""
    labels = labels.astype(jnp.int32)
    ce = cross_entropy(logits, labels)
    lv = lovasz.lovasz_softmax(jax.nn.softmax(logits, axis=-1), labels, ignore_index=255)
    return ce + lv, {"cross_entropy": ce, "lovasz": lv}


def finetune(config, workdir, data, backbone_vars, mesh):
    """Stage 2: trains the segmentation head (and, for No SSL, everything) on
    ``config.num_labelled`` frames; returns (model, state, labelled rows)."""
    rows = choose_labelled(data.train_rows, config.num_labelled, config.seed)
    head = SideTuneSegmentationHead(num_classes=len(data.class_names))
    model, tx, state = init_downstream(config, head, backbone_vars, tuple(config.image_size), mesh, config.learning_rate)
    examples = pipeline.Frames(data.train_source, rows, config.task, ("image", "mask"))
    augment = pipeline.augment_from_config(config)

    def batches_from(start):
        return pipeline.global_batches(
            examples, augment, seed=config.seed, batch_size=config.batch_size, mesh=mesh, start_step=start,
            num_threads=config.data_threads,
        )

    loop_cfg = loop.LoopConfig(
        stage="finetune", total_steps=config.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints, examples_per_step=config.batch_size,
    )
    step = make_downstream_step(model, tx, segmentation_loss, "mask", config.seed, mesh)
    state = loop.train(loop_cfg, workdir, state, step, batches_from, lambda s: config.learning_rate)
    return model, state, rows


# ----------------------------------------------------------------------------- key points


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
    if not k.enabled or "keypoints" not in data.train_source[0]:
        return None
    rows = choose_labelled(data.train_all_rows, k.num_labelled, config.seed + 1)
    model, tx, state = init_downstream(config, KeypointHead(), backbone_vars, tuple(k.image_size), mesh, k.learning_rate)
    examples = pipeline.Frames(data.train_source, rows, config.task, ("image", "keypoints", "keypoints_visible"))
    transform = KeypointExample(tuple(k.image_size), k.sigma)

    def batches_from(start):
        return pipeline.global_batches(
            examples, transform, seed=config.seed, batch_size=k.batch_size, mesh=mesh, start_step=start,
            num_threads=config.data_threads,
        )

    def loss_fn(logits, heat):
        loss = kp.keypoint_loss(logits, heat)
        return loss, {}

    loop_cfg = loop.LoopConfig(
        stage="keypoints", total_steps=k.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints, examples_per_step=k.batch_size,
    )
    step = make_downstream_step(model, tx, loss_fn, "heatmap", config.seed, mesh)
    state = loop.train(loop_cfg, workdir, state, step, batches_from, lambda s: k.learning_rate)
    return evaluate_keypoints(config, model, state, data, os.path.join(workdir, "eval"))


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
            cv2.imwrite(os.path.join(out_dir, "keypoint_overlays", f"{shown:04d}_record{int(data.test_rows[i])}.png"), _keypoint_overlay(ex["image"], peaks, truth)[..., ::-1])
            shown += 1
    if not counts:
        raise ValueError("key-point evaluation found no test frame with a visible key point")
    summary = kp.summarize_keypoints(counts)
    if jax.process_index() == 0:
        write_json(os.path.join(out_dir, "keypoints.json"), summary)
    return summary


def _keypoint_overlay(image: np.ndarray, peaks: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """Ground truth as rings, predictions as filled dots, one colour per key-point type."""
    colours = [(255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 220, 120)]
    out = np.ascontiguousarray(image.copy())
    for t, (pred, gt) in enumerate(zip(peaks, truth)):
        c = colours[t % len(colours)]
        for x, y in np.asarray(gt).reshape(-1, 2):
            cv2.circle(out, (int(round(x)), int(round(y))), 6, c, 1, cv2.LINE_AA)
        for x, y in np.asarray(pred).reshape(-1, 2):
            cv2.circle(out, (int(round(x)), int(round(y))), 3, c, -1, cv2.LINE_AA)
    return out


# ----------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """All stages; returns the segmentation summary written to ``eval/summary.json`` (with
    the key-point scores under ``"keypoints"`` where the dataset has key points)."""
    config = resolve_task(config)
    mesh = mesh_lib.make_mesh()
    data = pipeline.load(config)
    config = common.resolve_config(config, config.num_labelled)
    common.write_config(config, workdir)
    nossl = config.baseline == "nossl"
    t0 = time.perf_counter()
    backbone = None if nossl else pretrain(config, workdir, data, mesh)
    pretrain_seconds = time.perf_counter() - t0
    if backbone is None and config.model.pretrained_segformer:
        raise ValueError("config.baseline='nossl' is randomly initialised; unset config.model.pretrained_segformer")
    t1 = time.perf_counter()
    model, state, rows = finetune(config, workdir, data, backbone, mesh)
    finetune_seconds = time.perf_counter() - t1
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict = evaluate.make_predictor(lambda v, x: model.apply(v, x, train=False), variables, pad_multiple=1)
    header = {
        "method": "laparoflow_nossl" if nossl else "laparoflow", "dataset": config.dataset, "task": config.task,
        "split": data.split_info, "num_labelled": int(len(rows)), "labelled_records": [int(r) for r in rows],
        "pretrain_loss": config.pretrain.loss if not nossl else None,
        "pretrain_seconds": round(pretrain_seconds, 3), "finetune_seconds": round(finetune_seconds, 3),
    }
    tau_path = os.path.join(workdir, "pretrain", "tau.json")
    if os.path.exists(tau_path):
        with open(tau_path, encoding="utf-8") as f:
            header["tau"] = json.load(f)
    summary = evaluate.evaluate_segmentation(
        predict, pipeline.test_frames(config, data), num_frames=len(data.test_rows),
        class_names=data.class_names, out_dir=os.path.join(workdir, "eval"), header=header,
        batch_size=config.eval_batch_size, num_overlays=config.num_overlays,
    )
    t2 = time.perf_counter()
    scores = keypoint_stage(config, workdir, data, backbone, mesh)
    if scores is not None:
        summary["keypoints"] = scores
        summary["keypoints_seconds"] = round(time.perf_counter() - t2, 3)
        if jax.process_index() == 0:
            write_json(os.path.join(workdir, "eval", "summary.json"), summary)
    return summary
