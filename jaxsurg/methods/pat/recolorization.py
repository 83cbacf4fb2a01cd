"""PAT's auxiliary task, re-colourisation (Ross et al. 2018, sec. 2.2.1, Fig. 3, Eqs. 1–5):
the L → ab scaling, the generator's and discriminator's losses and one jitted GAN step.

A U-Net generator G maps the L channel of a CIE L*a*b* frame to its (a, b) channels; a
discriminator D tells real frames I = {L, a, b} from recoloured ones Î = {L, â, b̂}.

Scaling (pix2pix's colourisation, Isola et al. 2017, ``colorization_dataset.py``): the input
is L/50 − 1 ∈ [−1, 1] (L ∈ [0, 100]), the target (a, b)/110 (a*, b* ∈ about [−108, 98] over
the sRGB gamut, so |target| < 1); a generator ending in tanh predicts the same range. D sees
the concatenation (L/50 − 1, a/110, b/110), real or with G's (â, b̂).

Losses (every mean is over the batch; for a patch discriminator over every patch too):

- L1 (Eq. 2): mean (D(Î) − 1)², the least-squares GAN generator term (Mao et al. 2017).
- L2 (Eq. 3): per image (2/(h·w)) Σ_{c=a,b} Σ_{h,w} ((Î^c − I^c)·P^c)², P^c the weight of the
  pixel's true colour (``colour_rebalancing``), as written: the weight enters squared.
- L3 (Eq. 4): per image (1/(h·w)) Σ_{h,w} ‖Î_{h,w} − I_{h,w}‖² (over a and b; L is the same).
- L_G (Eq. 1) = γ·L1 + λ·L2 + φ·L3.
- L_D (Eq. 5) = mean (D(I) − 1)² + mean D(Î)², Y_real = 1, Y_fake = 0 (no ½ as pix2pix's).

γ, λ, φ (the paper sets them "in a way that the scale of L1, L2 and L3 is between the range
[0, 1]" and gives no values): ``bound_loss_weights`` divides each term by its largest possible
value, assuming D ∈ [0, 1] (a sigmoid) and â, a ∈ [−1, 1] (so |â − a| ≤ 2): L1 ≤ 1 → γ = 1;
L3 ≤ 2·2² = 8 → φ = 1/8; L2 ≤ 2·2·2²·P_max² = 16·P_max² → λ = 1/(16·P_max²), P_max the
largest entry of the weight table. Each scaled term is then in [0, 1] (L_G in [0, 3]).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsurg.methods.pat.colour_rebalancing import NUM_BINS, weight_map
from jaxsurg.ops.color import lab_to_rgb, rgb_to_lab
from jaxsurg.train.state import TrainState
from jaxsurg.train.step import gradient_step, jit_step

Array = jax.Array

__all__ = [
    "AB_SCALE",
    "L_SCALE",
    "LossWeights",
    "bound_loss_weights",
    "create_gan_states",
    "discriminator_loss",
    "generator_loss",
    "lsgan_generator_loss",
    "make_gan_step",
    "plain_loss",
    "rebalanced_loss",
    "to_lab_input",
    "to_rgb",
]

L_SCALE = 50.0  # input = L / 50 − 1
AB_SCALE = 110.0  # target = (a, b) / 110
GENERATOR, DISCRIMINATOR = "generator", "discriminator"
D_MODES = ("train", "eval")


# ----------------------------------------------------------------------------- scaling


def to_lab_input(rgb: Array) -> tuple[Array, Array]:
    """RGB frames → (G's input, G's target): (L/50 − 1, (a, b)/110).

    Args:
      rgb: uint8 (N, H, W, 3) (values / 255) or float (N, H, W, 3) in [0, 1], sRGB.

    Returns:
      (L float32 (N, H, W, 1) in [−1, 1], ab float32 (N, H, W, 2), |ab| < 1 over the sRGB
      gamut), from ``jaxsurg.ops.color.rgb_to_lab`` (D65).

    Raises:
      ValueError: ``rgb`` not (N, H, W, 3).
    """
    rgb = jnp.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (N, H, W, 3), got {rgb.shape}")
    x = rgb.astype(jnp.float32) / 255.0 if rgb.dtype == jnp.uint8 else rgb.astype(jnp.float32)
    lab = rgb_to_lab(x)
    return lab[..., :1] / L_SCALE - 1.0, lab[..., 1:] / AB_SCALE


def to_rgb(L: Array, ab: Array, *, clip: bool = True) -> Array:
    """The inverse of ``to_lab_input``, for pictures: (L/50 − 1, (a, b)/110) → sRGB.

    Args:
      L: float (N, H, W, 1), the scaled L channel.
      ab: float (N, H, W, 2), scaled a, b (a target or G's prediction).
      clip: clip to [0, 1] (predicted colours may leave the sRGB gamut).

    Returns:
      float32 (N, H, W, 3) sRGB in [0, 1] (when ``clip``); × 255 for 8-bit.

    Raises:
      ValueError: L's last axis not 1, ab's not 2, or their other axes differ.
    """
    L, ab = jnp.asarray(L, jnp.float32), jnp.asarray(ab, jnp.float32)
    if L.shape[-1:] != (1,) or ab.shape[-1:] != (2,) or L.shape[:-1] != ab.shape[:-1]:
        raise ValueError(f"L must be (..., 1) and ab (..., 2) over the same pixels, got {L.shape} and {ab.shape}")
    lab = jnp.concatenate([(L + 1.0) * L_SCALE, ab * AB_SCALE], axis=-1)
    return lab_to_rgb(lab, clip=clip)


# ----------------------------------------------------------------------------- losses


def lsgan_generator_loss(d_fake: Array) -> Array:
    """L1 of Ross et al. 2018 (Eq. 2): mean (D(Î) − Y_real)², Y_real = 1 (least-squares GAN).

    Args:
      d_fake: float (N,) or (N, h, w) (one value per image or per patch): D's probabilities
        "real" for recoloured frames.

    Returns:
      float32 scalar, the mean over every element; in [0, 1] for D ∈ [0, 1].
    """
    d_fake = jnp.asarray(d_fake, jnp.float32)
    return jnp.mean(jnp.square(d_fake - 1.0))


def discriminator_loss(d_real: Array, d_fake: Array) -> Array:
    """L_D of Ross et al. 2018 (Eq. 5): MSE(D(I), Y_real = 1) + MSE(D(Î), Y_fake = 0).

    Args:
      d_real: float (N,) or (N, h, w), D on real frames I.
      d_fake: float, D on recoloured frames Î (any shape; its own mean).

    Returns:
      float32 scalar in [0, 2] for D ∈ [0, 1].
    """
    d_real, d_fake = jnp.asarray(d_real, jnp.float32), jnp.asarray(d_fake, jnp.float32)
    return jnp.mean(jnp.square(d_real - 1.0)) + jnp.mean(jnp.square(d_fake))


def _check_ab(ab_pred: Array, ab_true: Array) -> None:
    if ab_pred.shape != ab_true.shape or ab_pred.ndim != 4 or ab_pred.shape[-1] != 2:
        raise ValueError(f"ab_pred and ab_true must both be (N, H, W, 2), got {ab_pred.shape} and {ab_true.shape}")


def rebalanced_loss(ab_pred: Array, ab_true: Array, weights: Array) -> Array:
    """L2 of Ross et al. 2018 (Eq. 3), the colour-rebalanced squared error.

    Per image (2/(h·w)) Σ_{c=a,b} Σ_{h,w} ((Î^c_{h,w} − I^c_{h,w})·P^c_{h,w})², averaged over
    the batch. The weight is inside the squared norm, as Eq. 3 (Zhang et al. 2016 weigh the
    loss by w, not w²).

    Args:
      ab_pred: float (N, H, W, 2), G's (â, b̂) in the scaled units of ``to_lab_input``.
      ab_true: float (N, H, W, 2), the true (a, b), same units.
      weights: float (N, H, W, 2), P^c per pixel (``colour_rebalancing.weight_map`` of the
        true a*, b*).

    Returns:
      float32 scalar ≥ 0; ≤ 16·max(P)² when |â − a| ≤ 2.

    Raises:
      ValueError: the shapes differ or are not (N, H, W, 2).
    """
    ab_pred, ab_true, weights = (jnp.asarray(x, jnp.float32) for x in (ab_pred, ab_true, weights))
    _check_ab(ab_pred, ab_true)
    if weights.shape != ab_true.shape:
        raise ValueError(f"weights must have the shape of ab_true {ab_true.shape}, got {weights.shape}")
    return 2.0 * jnp.mean(jnp.sum(jnp.square((ab_pred - ab_true) * weights), axis=-1))


def plain_loss(ab_pred: Array, ab_true: Array) -> Array:
    """L3 of Ross et al. 2018 (Eq. 4): per image (1/(h·w)) Σ_{h,w} ‖Î_{h,w} − I_{h,w}‖², the
    squared norm over a and b (Î and I share L), averaged over the batch.

    Args:
      ab_pred, ab_true: float (N, H, W, 2), scaled units (``to_lab_input``).

    Returns:
      float32 scalar ≥ 0; ≤ 8 when |â − a| ≤ 2.

    Raises:
      ValueError: the shapes differ or are not (N, H, W, 2).
    """
    ab_pred, ab_true = jnp.asarray(ab_pred, jnp.float32), jnp.asarray(ab_true, jnp.float32)
    _check_ab(ab_pred, ab_true)
    return jnp.mean(jnp.sum(jnp.square(ab_pred - ab_true), axis=-1))


class LossWeights(NamedTuple):
    """γ, λ, φ of L_G = γ·L1 + λ·L2 + φ·L3 (Ross et al. 2018, Eq. 1)."""

    gamma: float
    lam: float
    phi: float


def bound_loss_weights(weights_table: Any) -> LossWeights:
    """γ, λ, φ that scale each term of L_G into [0, 1] by its largest possible value.

    Assumes D ∈ [0, 1] and â, a ∈ [−1, 1] (G ending in tanh; the targets of ``to_lab_input``):
    γ = 1 (L1 ≤ 1), λ = 1/(16·P_max²) (L2 ≤ 2·2·2²·P_max², two channels, |â − a| ≤ 2),
    φ = 1/8 (L3 ≤ 2·2²). Typical values are far below the bounds: the scaled terms are
    small, L2's most (P_max is the weight of the rarest bin).

    Args:
      weights_table: (2, 256) from ``colour_rebalancing.rebalancing_weights``.

    Returns:
      ``LossWeights(gamma, lam, phi)`` of Python floats.

    Raises:
      ValueError: the table's largest entry is not positive and finite.
    """
    p_max = float(np.max(np.asarray(weights_table)))
    if not np.isfinite(p_max) or p_max <= 0:
        raise ValueError(f"the weight table's largest entry must be positive and finite, got {p_max}")
    return LossWeights(gamma=1.0, lam=1.0 / (16.0 * p_max**2), phi=1.0 / 8.0)


def generator_loss(
    d_fake: Array, ab_pred: Array, ab_true: Array, weights: Array, loss_weights: LossWeights
) -> tuple[Array, dict[str, Array]]:
    """L_G of Ross et al. 2018 (Eq. 1) = γ·L1 + λ·L2 + φ·L3.

    Args:
      d_fake: D's probabilities for Î (``lsgan_generator_loss``).
      ab_pred, ab_true, weights: (N, H, W, 2) as ``rebalanced_loss``.
      loss_weights: γ, λ, φ (``bound_loss_weights`` for the documented bounds).

    Returns:
      (L_G float32 scalar, {"g_adv": L1, "g_rebalanced": L2, "g_plain": L3}, unweighted).

    Raises:
      ValueError: as ``rebalanced_loss``.
    """
    terms = {
        "g_adv": lsgan_generator_loss(d_fake),
        "g_rebalanced": rebalanced_loss(ab_pred, ab_true, weights),
        "g_plain": plain_loss(ab_pred, ab_true),
    }
    g, lam, phi = loss_weights
    return g * terms["g_adv"] + lam * terms["g_rebalanced"] + phi * terms["g_plain"], terms


# ----------------------------------------------------------------------------- GAN step


def _takes_train(module: nn.Module) -> bool:
    return "train" in inspect.signature(module.__call__).parameters


def _apply(
    module: nn.Module, params: Any, batch_stats: Any, x: Array, *, train: bool, rng: Array | None = None
) -> tuple[Array, Any]:
    """``module(x)`` (with ``train=`` when its ``__call__`` takes it) → (output, batch_stats):
    the updated statistics in train mode for a module with BatchNorm, else unchanged."""
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    kwargs = {"train": train} if _takes_train(module) else {}
    rngs = {"dropout": rng} if rng is not None else None
    if train and batch_stats:
        out, updates = module.apply(variables, x, rngs=rngs, mutable=["batch_stats"], **kwargs)
        return out, updates["batch_stats"]
    return module.apply(variables, x, rngs=rngs, **kwargs), batch_stats


def create_gan_states(
    generator: nn.Module,
    discriminator: nn.Module,
    key: Array,
    image_shape: Sequence[int],
    generator_tx: optax.GradientTransformation,
    discriminator_tx: optax.GradientTransformation,
    *,
    generator_schedule: Callable | None = None,
    discriminator_schedule: Callable | None = None,
) -> dict[str, TrainState]:
    """Fresh ``{"generator": TrainState, "discriminator": TrainState}`` (step 0).

    Args:
      generator: Linen module G: (N, H, W, 1) → (N, H, W, 2), optionally with ``train``.
      discriminator: Linen module D: (N, H, W, 3) → probabilities (N, ...), optionally with
        ``train``.
      key: PRNG key; split into one key per network.
      image_shape: (N, H, W) of the example batch the modules are initialised on.
      generator_tx, discriminator_tx: their optimisers (pix2pix: Adam 2e-4, β1 = 0.5).
      generator_schedule, discriminator_schedule: step → learning rate, for logging.

    Returns:
      the states (on the host's default device; ``jaxsurg.train.step.put_replicated`` them).
    """
    n, h, w = image_shape
    kg, kd = jax.random.split(key)

    def init(module, k, channels):
        kwargs = {"train": False} if _takes_train(module) else {}
        variables = jax.jit(lambda k, x: module.init(k, x, **kwargs))(k, jnp.zeros((n, h, w, channels), jnp.float32))
        return variables["params"], variables.get("batch_stats", {})

    g_params, g_stats = init(generator, kg, 1)
    d_params, d_stats = init(discriminator, kd, 3)
    return {
        GENERATOR: TrainState.create(g_params, generator_tx, g_stats, generator_schedule),
        DISCRIMINATOR: TrainState.create(d_params, discriminator_tx, d_stats, discriminator_schedule),
    }


def make_gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    weights_table: Any,
    mesh: jax.sharding.Mesh,
    *,
    loss_weights: LossWeights | None = None,
    updates: Sequence[str] = (DISCRIMINATOR, GENERATOR),
    discriminator_mode: str = "train",
    seed: int = 0,
):
    """One jitted PAT GAN step (Ross et al. 2018, sec. 2.2.1) over the mesh.

    ``step(states, batch) -> (states, metrics)``:

    1. fake = G(L) (G in train mode, ``stop_gradient``): Î = {L, â, b̂}, I = {L, a, b}.
    2. D's update on L_D (Eq. 5): D(Î) and D(I) in train mode as two separate passes (fake
       first, as pix2pix, so BatchNorm never mixes real and fake frames; the running
       statistics are updated by both), D's own optimiser.
    3. G's update on L_G (Eq. 1) against the UPDATED D: G in train mode (its BatchNorm
       statistics updated), D by default in TRAIN mode (``discriminator_mode="train"``: D
       normalises the fake batch with its statistics, as pix2pix's generator pass and as D
       saw Î in step 2); D's statistics changed by this pass are discarded, so only D's own
       update moves them. "eval": D's running statistics. P^c from ``weights_table``.

    BatchNorm statistics go through ``gradient_step``'s aux ``"batch_stats"``; a module
    without BatchNorm (empty ``batch_stats``) or without a ``train`` argument works too.
    Both networks get the same dropout key per step (``fold_in(key(seed), G.step)``, passed
    as ``rngs={"dropout": …}``), so G's two passes are the same forward. Batch statistics
    are those of the global batch (the step is one program over the mesh).

    Args:
      generator: Linen G: float32 (N, H, W, 1) scaled L → (N, H, W, 2) scaled (â, b̂)
        (should end in tanh for ``bound_loss_weights``' bounds).
      discriminator: Linen D: (N, H, W, 3) scaled Lab → probabilities (N,) or (N, h, w)
        (``jaxsurg.models.discriminators``).
      weights_table: (2, 256) ``rebalancing_weights``; the step looks up each pixel's
        weight from its true a*, b* = ab · 110 (``weight_map``), replicated on the mesh.
        (ab · 110 in float32 gives back a* to ~1e-5, so a pixel's bin can differ from the
        one ``ab_histograms`` counted only for values that close to a half-integer.)
      mesh: the device mesh; states replicated, the batch split along its leading axis.
      loss_weights: γ, λ, φ; None = ``bound_loss_weights(weights_table)``.
      updates: which networks the step updates, a non-empty subset of ("discriminator",
        "generator"); the other's state is returned unchanged, its metrics still computed
        (forward only). E.g. ("discriminator",) trains D against a fixed G.
      discriminator_mode: "train" or "eval": D's BatchNorm mode in G's pass (above).
      seed: of the dropout keys.

    ``states``: ``{"generator": TrainState, "discriminator": TrainState}``
    (``create_gan_states``; donated). ``batch``: {"L": float32 (N, H, W, 1), "ab": float32
    (N, H, W, 2)} (``to_lab_input``), N a multiple of the mesh size.
    ``metrics`` (float32 scalars): ``d_loss`` (L_D before D's update), ``d_real`` (mean D(I)),
    ``d_fake`` (mean D(Î)), both before D's update; ``g_loss`` (L_G before G's update, with
    the updated D), ``g_adv`` (L1), ``g_rebalanced`` (L2), ``g_plain`` (L3), unweighted;
    ``loss`` = ``g_loss``.

    Raises:
      ValueError: ``updates`` empty or with an unknown name; unknown ``discriminator_mode``;
        ``weights_table`` not (2, 256) (here, or ``weight_map`` when tracing).
    """
    updates = tuple(updates)
    if not updates or set(updates) - {GENERATOR, DISCRIMINATOR}:
        raise ValueError(f"updates must be a non-empty subset of ({DISCRIMINATOR!r}, {GENERATOR!r}), got {updates}")
    if discriminator_mode not in D_MODES:
        raise ValueError(f"discriminator_mode must be one of {D_MODES}, got {discriminator_mode!r}")
    table = np.asarray(weights_table, np.float32)
    if table.shape != (2, NUM_BINS):
        raise ValueError(f"weights_table must have shape (2, {NUM_BINS}) (rebalancing_weights), got {table.shape}")
    lw = bound_loss_weights(table) if loss_weights is None else LossWeights(*loss_weights)
    d_train_for_g = discriminator_mode == "train"
    base_key = jax.random.key(seed)

    def step(states, batch, table):
        g_state, d_state = states[GENERATOR], states[DISCRIMINATOR]
        L, ab = batch["L"], batch["ab"]
        pixel_weights = weight_map(ab * AB_SCALE, table)
        rng = jax.random.fold_in(base_key, g_state.step)
        real = jnp.concatenate([L, ab], axis=-1)
        fake_ab, _ = _apply(generator, g_state.params, g_state.batch_stats, L, train=True, rng=rng)
        fake = jnp.concatenate([L, jax.lax.stop_gradient(fake_ab).astype(L.dtype)], axis=-1)

        def d_loss_fn(params):
            p_fake, stats = _apply(discriminator, params, d_state.batch_stats, fake, train=True, rng=rng)
            p_real, stats = _apply(discriminator, params, stats, real, train=True, rng=rng)
            aux = {"d_real": jnp.mean(p_real.astype(jnp.float32)), "d_fake": jnp.mean(p_fake.astype(jnp.float32))}
            if d_state.batch_stats:
                aux["batch_stats"] = stats
            return discriminator_loss(p_real, p_fake), aux

        if DISCRIMINATOR in updates:
            d_state, d_loss, d_aux, _ = gradient_step(d_state, d_loss_fn)
        else:
            d_loss, d_aux = d_loss_fn(d_state.params)
            d_aux.pop("batch_stats", None)

        def g_loss_fn(params):
            pred, stats = _apply(generator, params, g_state.batch_stats, L, train=True, rng=rng)
            pred = pred.astype(jnp.float32)
            p_fake, _ = _apply(
                discriminator, d_state.params, d_state.batch_stats, jnp.concatenate([L, pred.astype(L.dtype)], -1),
                train=d_train_for_g, rng=rng,
            )
            loss, aux = generator_loss(p_fake, pred, ab, pixel_weights, lw)
            if g_state.batch_stats:
                aux["batch_stats"] = stats
            return loss, aux

        if GENERATOR in updates:
            g_state, g_loss, g_aux, _ = gradient_step(g_state, g_loss_fn)
        else:
            g_loss, g_aux = g_loss_fn(g_state.params)
            g_aux.pop("batch_stats", None)

        metrics = {"loss": g_loss, "d_loss": d_loss, **d_aux, "g_loss": g_loss, **g_aux}
        return {GENERATOR: g_state, DISCRIMINATOR: d_state}, metrics

    return jit_step(step, mesh, frozen=jnp.asarray(table))
