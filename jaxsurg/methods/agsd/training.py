"""AGSD's training (Liu et al. 2020, Eq. 5): on a batch of consecutive pairs (x_t, x_t+1),
L_full = L_anc(x_t) + L_anc(x_t+1) + L_dif^fg(x_t, x_t+1) + L_dif^bg(x_t, x_t+1), averaged
over the pairs; ``config.loss.terms`` keeps a subset (the arms of the paper's Table 1).

A pair shares one crop and flip (cut here, on the device, from the whole-frame maps:
``frames.crop_resize``) and its frames were colour-jittered apart on the host. The
prediction p = σ(z) and the frozen features meet at ``diffusion_scale`` of the frame size:
features bicubic-upsampled from their own resolution, p bicubic-resized (the code's).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxsurg.methods.agsd.anchor_loss import anchor_loss
from jaxsurg.methods.agsd.frames import crop_resize
from jaxsurg.methods.agsd.semantic_diffusion import semantic_diffusion_loss
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, make_optimizer

TERMS = ("anchor", "fg", "bg")


def parse_terms(terms: str) -> frozenset[str]:
    """``"anchor+fg+bg"`` → {"anchor", "fg", "bg"}.

    Raises:
      ValueError: an unknown term, or no term at all (naming config.loss.terms).
    """
    parts = frozenset(t.strip() for t in terms.split("+") if t.strip())
    unknown = sorted(parts - set(TERMS))
    if unknown or not parts:
        raise ValueError(f"config.loss.terms={terms!r}: expected a '+'-joined subset of {TERMS} (e.g. 'anchor+fg+bg', 'anchor')")
    return parts


def diffusion_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(H, W) at which predictions and features meet: ``diffusion_scale`` × ``resize``, ≥ 1 px."""
    return tuple(max(1, round(s * config.diffusion_scale)) for s in config.resize)


def init_state(config: ml_collections.ConfigDict, model: nn.Module, mesh) -> TrainState:
    """The network's variables from ``config.seed`` (the ResNet18 encoder from
    ``config.model.resnet18_weights`` when given) with Adam, replicated on the mesh."""
    h, w = config.resize
    tx, schedule = make_optimizer(config)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, h, w, 3)), train=False))()
    variables = jax.device_get(variables)
    if config.model.arch == "resnet18_unet" and config.model.resnet18_weights:
        from jaxsurg.weights.resnet import resnet18_variables

        encoder = {k: variables[k]["encoder"] for k in ("params", "batch_stats")}
        loaded = resnet18_variables(config.model.resnet18_weights, encoder)
        variables = {k: {**variables[k], "encoder": loaded[k]} for k in ("params", "batch_stats")}
    state = TrainState.create(variables["params"], tx, variables.get("batch_stats"), schedule)
    return step_lib.put_replicated(state, mesh)


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict, mesh):
    """The jitted step on a batch of ``frames.Pairs`` examples (after ``PairAugment``):
    returns ``(state, metrics)`` with ``loss``, ``anchor`` (L_anc(t) + L_anc(t+1)),
    ``fg``, ``bg`` (weighted hinges; 0 when not trained) and ``p_mean``."""
    terms = parse_terms(config.loss.terms)
    diffusion = bool(terms & {"fg", "bg"})
    size = tuple(config.resize)
    dsize = diffusion_size(config)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        b = batch["image"].shape[0]
        box = jnp.repeat(batch["box"], 2, axis=0)
        flip = jnp.repeat(batch["flip"], 2, axis=0)
        x = crop_resize(batch["image"].reshape(2 * b, *size, 3).astype(jnp.float32) / 255.0, box, flip, size)
        anchors = jnp.stack([batch["a_pos"], batch["a_neg"]], -1).reshape(2 * b, *size, 2)
        anchors = jnp.clip(crop_resize(anchors, box, flip, size), 0.0, 1.0)
        features = view = None
        if diffusion:
            f = batch["features"]
            features = crop_resize(f.reshape(2 * b, *f.shape[2:]), box, flip, dsize, "cubic").reshape(b, 2, *dsize, -1)
            if "view" in batch:
                view = crop_resize(batch["view"].reshape(2 * b, *size, 1), box, flip, dsize).reshape(b, 2, *dsize)

        def loss_fn(params):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
                logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            else:
                logits, updates = model.apply(variables, x, train=True), None
            z = logits[..., 0]
            l_anc = anchor_loss(z, anchors[..., 0], anchors[..., 1], config.loss.anchor).reshape(b, 2).sum(1)
            zero = jnp.zeros((b,), jnp.float32)
            l_fg = l_bg = zero
            if diffusion:
                p = jax.image.resize(jax.nn.sigmoid(z), (2 * b, *dsize), "cubic").clip(0.0, 1.0).reshape(b, 2, *dsize)
                valid = (None, None) if view is None else (view[:, 0], view[:, 1])
                l_fg, l_bg = semantic_diffusion_loss(p[:, 0], p[:, 1], features[:, 0], features[:, 1], config.loss.margins, *valid)
            total = (l_anc if "anchor" in terms else zero) + (l_fg if "fg" in terms else zero) + (l_bg if "bg" in terms else zero)
            aux: dict[str, Any] = {"anchor": l_anc.mean(), "fg": l_fg.mean(), "bg": l_bg.mean(), "p_mean": jax.nn.sigmoid(z).mean()}
            if updates is not None:
                aux["batch_stats"] = updates["batch_stats"]
            return total.mean(), aux

        state, loss, aux, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss, **aux}

    return step_lib.jit_step(step, mesh)
