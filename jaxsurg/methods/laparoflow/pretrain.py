"""Laparoflow-SSL stage 1, pretraining (Moens et al. 2024, Sec. 2.2–2.4, App. C and D.2).

The SegFormer-B0 backbone (256-d unit-norm pixel representations at 1/4 resolution,
Sec. 2.4) trained on unlabelled frames and their optical flow: both views of Eq. (2)–(4)
(``views.make_views``) through the backbone, z3 = G2(z1) resampled on view 2's grid, and
the loss of ``config.pretrain.loss`` — the flow-guided pixel InfoNCE of Eq. (1), (5)–(9)
with s^(2,3) (``flow``), s^(1,1) (``flow_only``, App. C.1), the view-contrastive term
(``view``, App. C.2) or both balanced (``flow+view``, App. C.3); AdamW (the paper gives no
optimiser); afterwards ``WORKDIR/pretrain/pca.png``, three principal components of the
representations as colours (Fig. 1b).

``config.pretrain.keep_steps`` keeps the backbone at those steps of the one run
(``WORKDIR/pretrain/kept/step_<8 digits>.msgpack``, params and BatchNorm statistics, no
optimiser), for fine-tuning from a chosen pretraining length (``config.pretrain.use_step``,
``backbone_for_downstream``): the effect of pretraining length measured on one run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import cv2
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsurg import progress, visualize
from jaxsurg.data import pipeline, transforms, unlabelled
from jaxsurg.methods.laparoflow import contrastive, view_geometry, views
from jaxsurg.methods.laparoflow.config import STRIDE
from jaxsurg.methods.laparoflow.segformer import SegFormer
from jaxsurg.methods.laparoflow.temperatures import estimate_temperatures
from jaxsurg.train import stage
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, make_optimizer


# ----------------------------------------------------------------------------- backbone


def build_backbone(config: ml_collections.ConfigDict) -> SegFormer:
    """The SegFormer backbone of ``config.model`` (MiT-B0, 256-d unit-norm representations)."""
    if config.model.variant != "b0":
        raise ValueError(f"config.model.variant={config.model.variant!r}: only 'b0' is implemented")
    return SegFormer(
        out_dim=config.model.out_dim, drop_path=config.model.drop_path, dropout=config.model.dropout,
        dtype=jnp.dtype(config.model.dtype),
    )


def _init_variables(model: nn.Module, seed: int, shape: tuple[int, int]) -> dict[str, Any]:
    x = jnp.zeros((1, *shape, 3), jnp.float32)
    keys = {"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}
    return jax.jit(lambda: model.init(keys, x, train=False))()


def _l2_normalize(z: jax.Array) -> jax.Array:
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- pretrain


def pretrain_loss(
    z1: jax.Array, z2: jax.Array, v: dict[str, jax.Array], key: jax.Array, p: ml_collections.ConfigDict, tau_p: float, tau_n: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The pretraining loss of ``p.loss`` on one batch of views.

    z3 = z1 bilinearly sampled at ``v["grid2to1"]`` (each view-2 representation pixel's
    receptive centre in view 1), renormalised; a view-2 pixel counts where ``v["valid3"]``
    holds and its point lies in view 1's representation grid (within half a cell of a
    view-1 cell centre: ``view_geometry.sample_bilinear``'s ``inside``). The s^(1,1) ablation uses
    view 1's own grid: ``v["flow_rep1"]`` and ``v["valid_rep1"]``.

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
    z3, inside = view_geometry.sample_bilinear(z1, v["grid2to1"])
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
    elif p.loss == "flow_only":  # Appendix C.1: s^(1,1) on view 1's own grid, flow at its receptive centres
        loss, _ = flow_term(flat(z1), flat(z1), flat(v["flow_rep1"]), flat(v["valid_rep1"]), True)
    elif p.loss == "view":
        loss, _ = view_term()
    else:  # flow+view (Appendix C.3): the triplet sums, each weighted by the other's total
        lf, af = flow_term(flat(z2), flat(z3), flow3, valid3, False)
        lv, av = view_term()
        metrics.update(loss_flow=lf, loss_view=lv)
        loss = contrastive.balanced_sum(af["loss_sum"], af["total_weight"], av["loss_sum"], av["total_weight"])
    return loss, metrics


def make_pretrain_step(model: SegFormer, config: ml_collections.ConfigDict, tau_p: float, tau_n: float, mesh):
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
            max_zoom=p.max_zoom, rotate=p.rotate, flip=p.flip, grid_offset=float(p.grid_offset),
            valid_radius=int(p.valid_radius),
        )
        b = image.shape[0]

        def loss_fn(params):
            x = jnp.concatenate([v["view1"], v["view2"]], axis=0)
            z, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"dropout": k_drop}, mutable=["batch_stats"],
            )
            loss, metrics = pretrain_loss(z[:b], z[b:], v, k_loss, p, tau_p, tau_n)
            return loss, {**metrics, "batch_stats": updates["batch_stats"]}

        new, loss, metrics, grads = step_lib.gradient_step(state, loss_fn)
        return new, {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}

    return step_lib.jit_step(step, mesh)


def initial_backbone(config: ml_collections.ConfigDict) -> tuple[SegFormer, dict[str, Any]]:
    """The backbone the pretraining starts from (its step 0): the config's SegFormer
    randomly initialised with ``config.seed`` at ``pretrain.view_size``, or the user's
    Hugging Face weights (``config.model.pretrained_segformer``). Returns (model, variables
    {"params", "batch_stats"} on the host)."""
    model = build_backbone(config)
    variables = _init_variables(model, config.seed, tuple(config.pretrain.view_size))
    if config.model.pretrained_segformer:  # start from the user's Hugging Face SegFormer weights
        from jaxsurg.methods.laparoflow.hf_segformer import load_segformer

        variables = load_segformer(config.model.pretrained_segformer, variables)
    return model, jax.device_get({"params": variables["params"], "batch_stats": variables["batch_stats"]})


def kept_path(workdir: str, step: int) -> str:
    """``WORKDIR/pretrain/kept/step_<8 digits>.msgpack``: the backbone kept at ``step``."""
    return os.path.join(workdir, "pretrain", "kept", f"step_{int(step):08d}.msgpack")


def save_variables(path: str, variables: dict[str, Any]) -> None:
    """Writes host ``variables`` (a pytree of arrays) to ``path`` as Flax msgpack, atomically
    (a temporary file renamed), creating the folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(variables)))
    os.replace(tmp, path)


def load_variables(path: str, template: dict[str, Any]) -> dict[str, Any]:
    """The variables ``save_variables`` wrote to ``path``, in the structure of ``template``.

    ``template`` may hold arrays or ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``).

    Raises:
      ValueError: ``path`` is missing, or holds variables of another structure or shape
        (the message names the file).
    """
    if not os.path.exists(path):
        raise ValueError(f"{path} is missing")
    with open(path, "rb") as f:
        data = f.read()
    try:
        restored = flax.serialization.from_bytes(template, data)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} does not fit this run's network ({type(e).__name__}: {str(e)[:200]})") from None
    shapes = lambda t: jax.tree.map(lambda a: tuple(np.shape(a) if isinstance(a, np.ndarray) else a.shape), t)  # noqa: E731
    if shapes(restored) != shapes(template):
        raise ValueError(f"{path} holds variables of other shapes than this run's network")
    return restored


def train_keeping(
    name: str, block: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str, state: TrainState,
    step, examples, transform, mesh, keep_steps: Sequence[int], path_of,
) -> TrainState:
    """``stage.train`` of ``block`` that also keeps the variables ({"params", "batch_stats"})
    at each of ``keep_steps`` (below ``block.total_steps``) in the file ``path_of(step)``.

    The stage runs in segments, each ending at the next step to keep (the loop saves a
    checkpoint at a segment's end), so the run is the same as without segments (batch s and
    its randomness depend on the seed and s only; the optimiser and its schedule are
    ``block``'s, for ``block.total_steps``); a resumed run skips the steps already kept.

    Raises:
      ValueError: a step to keep has no file while the stage's checkpoints are past it (the
        run went past it without keeping it: start a new workdir).
    """
    kept = sorted({int(k) for k in keep_steps if 0 < int(k) < int(block.total_steps)})
    missing = [k for k in kept if not os.path.exists(path_of(k))]
    if missing:
        progress.say(f"{name}: keeping the variables at steps {', '.join(map(str, missing))} ({os.path.dirname(path_of(missing[0]))})")
    for k in missing:
        segment = ml_collections.ConfigDict(block.to_dict())
        segment.total_steps = k
        state = stage.train(name, segment, config, workdir, state, step, examples, transform, mesh)
        at = int(jax.device_get(state.step))
        if at != k:
            raise ValueError(
                f"stage '{name}': its checkpoints are at step {at}, past step {k} to keep, and {path_of(k)} was never "
                "written; keep_steps changed after the stage began: start a new --workdir (or --overwrite)"
            )
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        stage.on_host0(lambda v=variables, k=k: save_variables(path_of(k), v), f"{name} step {k} kept")
    return stage.train(name, block, config, workdir, state, step, examples, transform, mesh)


def pretraining_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` as the pretraining reads it: a copy whose ``seed`` is the pretraining's own,
    ``config.pretrain.seed`` (the run's ``seed`` where that is negative). Everything random in
    the pretraining (initialisation, τ's frames, batches, views, anchors) follows it, so runs
    of several seeds can share one pretraining (``stages_from``, a sweep's cells) while each
    draws its own labelled frames and downstream initialisation from ``config.seed``."""
    copy = ml_collections.ConfigDict(config.to_dict())
    if int(config.pretrain.seed) >= 0:
        copy.seed = int(config.pretrain.seed)
    return copy


def pretrain(
    config: ml_collections.ConfigDict, workdir: str, data: pipeline.LoadedDataset, frames: unlabelled.FlowFrames, mesh
) -> dict[str, Any]:
    """Stage 1 on the pretraining ``frames`` (``unlabelled.pretraining_frames``): returns the
    backbone's variables ({"params", "batch_stats"}) after ``config.pretrain.total_steps``
    (resumed, or skipped when complete: also when taken from another run by
    ``config.stages_from``), keeping those of ``config.pretrain.keep_steps`` on the way
    (``kept_path``). Its randomness follows ``pretraining_config``'s seed."""
    config = pretraining_config(config)
    p = config.pretrain
    model, variables = initial_backbone(config)
    tx, schedule = make_optimizer(p)
    state = step_lib.put_replicated(TrainState.create(variables["params"], tx, variables["batch_stats"], schedule), mesh)
    tau_p, tau_n = estimate_temperatures(config, frames, os.path.join(workdir, "pretrain", "tau.json"))
    logging.info("pretraining on %d frames, tau_p=%.4g tau_n=%.4g", len(frames), tau_p, tau_n)
    prepare = unlabelled.PretrainPrepare(tuple(p.resize), p.fov_threshold)
    step = make_pretrain_step(model, config, tau_p, tau_n, mesh)
    state = train_keeping(
        "pretrain", p, config, workdir, state, step, frames, prepare, mesh, tuple(p.keep_steps), lambda k: kept_path(workdir, k),
    )
    # On the host: each downstream stage puts its own copy on the devices (and donates it).
    backbone = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    pca_path = os.path.join(workdir, "pretrain", "pca.png")
    if config.pretrain.pca_frames > 0 and not os.path.exists(pca_path):
        stage.on_host0(lambda: write_pca_picture(model, backbone, config, data, pca_path), "pca picture")
    return backbone


def backbone_for_downstream(config: ml_collections.ConfigDict, workdir: str, final: dict[str, Any] | None) -> dict[str, Any]:
    """The backbone the downstream stages read, by ``config.pretrain.use_step``: −1 (or
    ``pretrain.total_steps``) the finished pretraining (``final``, as ``pretrain`` returns
    it); 0 the pretraining's starting point (``initial_backbone``: random features, frozen
    like any other); k the backbone kept at step k (``pretrain.keep_steps``).

    Raises:
      ValueError: step k was not kept (its file is missing: the message names it).
    """
    use, total = int(config.pretrain.use_step), int(config.pretrain.total_steps)
    if use == 0:
        return initial_backbone(pretraining_config(config))[1]
    if use in (-1, total):
        if final is None:
            raise ValueError("the finished pretraining's backbone is needed (config.pretrain.use_step = -1)")
        return final
    path = kept_path(workdir, use)
    if not os.path.exists(path):
        raise ValueError(f"config.pretrain.use_step={use}: {path} is missing (the pretraining kept steps {tuple(config.pretrain.keep_steps)})")
    model = build_backbone(config)
    template = jax.eval_shape(lambda: _init_variables(model, config.seed, tuple(config.pretrain.view_size)))
    return load_variables(path, {"params": template["params"], "batch_stats": template["batch_stats"]})


def load_pretrained_backbone(workdir: str) -> tuple[SegFormer, dict[str, Any]]:
    """The backbone of a finished Laparoflow-SSL run, for another method to use as frozen
    features (AGSD's ``--config.features=laparoflow:DIR``).

    Args:
      workdir: the run's workdir (its ``config.json`` and ``pretrain/checkpoints``).

    Returns:
      (SegFormer model, variables {"params", "batch_stats"} on the host). ``model.apply(
      variables, x, train=False)`` maps float32 (B, H, W, 3) RGB in [0, 1] (H, W multiples
      of 32) to unit-norm 256-d representations (B, H/4, W/4, 256).

    Raises:
      ValueError: ``workdir`` has no config.json, was made by another method, is a "No SSL"
        run, or its pretrain stage has not finished (the message says which).
    """
    import json

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{workdir!r}: no config.json there (not a finished jaxsurg run)")
    with open(path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.get("method") != "laparoflow" or config.get("baseline") == "nossl":
        raise ValueError(f"{workdir!r} is a {config.get('method')!r} run (baseline {config.get('baseline')!r}), not a Laparoflow-SSL pretraining")
    p = config.pretrain
    model = build_backbone(config)
    tx, schedule = make_optimizer(p)
    variables = _init_variables(model, config.seed, tuple(p.view_size))
    template = TrainState.create(variables["params"], tx, variables["batch_stats"], schedule)
    state = stage.restore_finished(workdir, "pretrain", template, int(p.total_steps), "features")
    return model, jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def write_pca_picture(model: SegFormer, backbone: dict[str, Any], config: ml_collections.ConfigDict, data: pipeline.LoadedDataset, path: str) -> None:
    """``pretrain/pca.png``: test frames beside the first three principal components of
    their representations as colours (paper Fig. 1b / 5c), titled and captioned
    (``visualize.pca_figure``)."""
    n = min(config.pretrain.pca_frames, len(data.test_rows))
    pick = np.linspace(0, len(data.test_rows) - 1, n).round().astype(int)
    frames = pipeline.Frames(data.test_source, data.test_rows[pick], config.task, ("image",))
    size = tuple(config.pretrain.resize)
    images = np.stack([transforms.resize(frames[i], size)["image"][0] for i in range(n)])
    reps = jax.jit(lambda x: model.apply(backbone, x, train=False))(jnp.asarray(images, jnp.float32) / 255.0)
    reps = np.asarray(jax.device_get(reps))
    fov = np.stack([unlabelled.field_of_view(im, threshold=config.pretrain.fov_threshold) for im in images])
    fov_small = np.stack([cv2.resize(f.astype(np.uint8), reps.shape[2:0:-1], interpolation=cv2.INTER_NEAREST) for f in fov]).astype(bool)
    panel = visualize.pca_figure(images, reps, valid=fov_small if fov_small.any() else None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, panel[..., ::-1])
