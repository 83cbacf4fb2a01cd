"""Flow-guided and view-contrastive pixel InfoNCE losses of Laparoflow-SSL.

Source: B. Moens et al., "Laparoflow-SSL: Image Analysis From a Tiny Dataset Through
Self-Supervised Transformers Leveraging Unlabeled Surgical Video" (2024): Eq. (1) (weighted
sum of pixel triplets), (5) (similarity), (6)–(9) (flow-guided positive/negative sets and
weights), Appendix C.1 (s^(1,1) variant), C.2 / Eq. (10)–(11) (view-contrastive term) and
C.3 (balancing two terms by their total weights). The temperatures τ_P, τ_N of Eq. (9) are
estimated in ``temperatures``.

Everything lives on one common grid of N = h·w representation pixels, flattened row-major
(the 1/4-resolution grid of view 2). Inputs per batch element b:

  * ``z_anchor`` (B, N, D), ``z_other`` (B, N, D): unit vectors; the similarity of anchor a
    with pixel l is s_al = exp(⟨z_anchor[a], z_other[l]⟩ / τ0) (Eq. (5)). For the paper's
    s^(2,3), z_anchor = z2 and z_other = z3 = G2(z1), so pixel a of z_other is the exact
    cross-view counterpart of anchor a.
  * ``flow`` (B, N, 2): optical flow in pixels at each grid pixel (after G1).
  * ``valid`` (B, N) bool: pixels allowed in the loss at all.
  * ``anchors`` (B, A) int32 pixel indices and ``anchor_mask`` (B, A) bool (from
    ``sample_anchors``). An anchor counts only if its mask is set and its pixel is valid.

Each triplet (a, p, n) contributes w_p·w_n·(−log(s_ap / (s_ap + λ·s_an))) with λ = 10,
computed stably as w_p·w_n·softplus(log λ + (⟨z_a, z_n⟩ − ⟨z_a, z_p⟩)/τ0).

Normalisation (a design decision; the paper writes E_images Σ_a Σ_p w_p Σ_n w_n): the
losses returned are the weighted MEAN over all triplets of the batch, i.e. the weighted sum
divided by the total triplet weight T = Σ_b Σ_a (Σ_p w_p)(Σ_n w_n). A flow-guided anchor has
~N²/4 weighted triplets (16.7 M / 4 for a 64×64 grid) and T changes from batch to batch
with the flows, the temperatures and the number of qualifying anchors; the mean keeps the
loss on the scale of one InfoNCE term (log(1 + λ) at random init) so one learning rate fits
every grid size and the flow and view terms are comparable. The unnormalised sum and T are
returned in ``aux`` (``loss_sum``, ``total_weight``) for the C.3 balancing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_FLOW_EPS = 1e-6  # guards the division by the anchor flow norm (masked anchors may not move)


# ----------------------------------------------------------------------------- validation


def _is_concrete_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating))


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if _is_concrete_number(value) and (not math.isfinite(float(value)) or (value < 0 if allow_zero else value <= 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


def _check_common(z_anchor, z_other, valid, anchors, anchor_mask) -> tuple[int, int, int, int]:
    if z_anchor.ndim != 3:
        raise ValueError(f"z_anchor must be (B, N, D) unit vectors, got shape {z_anchor.shape}")
    b, n, d = z_anchor.shape
    if z_other.shape != (b, n, d):
        raise ValueError(f"z_other must have the shape of z_anchor {(b, n, d)}, got {z_other.shape}")
    if valid.shape != (b, n):
        raise ValueError(f"valid must be (B, N) = {(b, n)} bool, got shape {valid.shape}")
    if anchors.ndim != 2 or anchors.shape[0] != b:
        raise ValueError(f"anchors must be (B, A) = ({b}, A) int pixel indices, got shape {anchors.shape}")
    if not jnp.issubdtype(anchors.dtype, jnp.integer):
        raise ValueError(f"anchors must be integer pixel indices, got dtype {anchors.dtype}")
    if anchor_mask.shape != anchors.shape:
        raise ValueError(f"anchor_mask must have the shape of anchors {anchors.shape}, got {anchor_mask.shape}")
    return b, n, d, anchors.shape[1]


def _effective_anchor_mask(valid: jax.Array, anchors: jax.Array, anchor_mask: jax.Array) -> jax.Array:
    """anchor_mask & valid[b, anchors[b, a]] as bool (B, A)."""
    return anchor_mask.astype(bool) & jnp.take_along_axis(valid.astype(bool), anchors, axis=1)


# ----------------------------------------------------------------------------- anchors and weights


def sample_anchors(
    key: jax.Array, flow: jax.Array, valid: jax.Array, num_anchors: int = 16, min_flow: float = 1.0 / 3.0
) -> tuple[jax.Array, jax.Array]:
    """Draws anchor pixels uniformly, without replacement, among the moving valid pixels.

    Candidates are the pixels with ``valid`` set and flow norm ‖f‖ ≥ ``min_flow`` (Moens et
    al. 2024, Sec. 2.3: quasi-stationary pixels are skipped as anchors because Eq. (8)
    divides by ‖f_a‖; 16 anchors per image, Appendix D.2). Fixed shape: each candidate gets
    an i.i.d. uniform key and the ``num_anchors`` smallest keys win; when an image has fewer
    candidates than ``num_anchors``, the extra slots point at non-candidate pixels and are
    masked out.

    Args:
      key: a JAX PRNG key.
      flow: float (B, N, 2) optical flow in pixels.
      valid: bool (B, N).
      num_anchors: A, 1 ≤ A ≤ N.
      min_flow: minimum flow norm of an anchor in pixels (0 accepts every valid pixel).

    Returns:
      (indices int32 (B, A), anchor_mask bool (B, A)).

    Raises:
      ValueError: on shape mismatches or num_anchors outside [1, N].
    """
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (B, N, 2) in pixels, got shape {flow.shape}")
    b, n, _ = flow.shape
    if valid.shape != (b, n):
        raise ValueError(f"valid must be (B, N) = {(b, n)}, got shape {valid.shape}")
    if not 1 <= int(num_anchors) <= n:
        raise ValueError(f"num_anchors must lie in [1, N = {n}], got {num_anchors}")
    _check_positive("min_flow", min_flow, allow_zero=True)
    norm = jnp.linalg.norm(flow.astype(jnp.float32), axis=-1)
    candidate = valid.astype(bool) & (norm >= min_flow)
    u = jax.random.uniform(key, (b, n))
    score = jnp.where(candidate, u, 2.0)
    _, idx = jax.lax.top_k(-score, int(num_anchors))
    idx = idx.astype(jnp.int32)
    return idx, jnp.take_along_axis(candidate, idx, axis=1)


def relative_flow_distance(flow_anchor: jax.Array, flow: jax.Array) -> jax.Array:
    """Relative flow distance Δf_{a,l} = ‖f_a − f_l‖₂ / ‖f_a‖₂ (Moens et al. 2024, Eq. (8)).

    Args:
      flow_anchor: float (B, A, 2) flow of the anchor pixels, in pixels.
      flow: float (B, N, 2) flow of all grid pixels, in pixels.

    Returns:
      float32 (B, A, N), dimensionless, ≥ 0. The anchor norm is clamped at 1e-6 px, so a
      non-moving (masked) anchor gives large but finite distances.

    Raises:
      ValueError: on shape mismatches.
    """
    if flow_anchor.ndim != 3 or flow_anchor.shape[-1] != 2:
        raise ValueError(f"flow_anchor must be (B, A, 2), got shape {flow_anchor.shape}")
    if flow.ndim != 3 or flow.shape[-1] != 2 or flow.shape[0] != flow_anchor.shape[0]:
        raise ValueError(f"flow must be (B, N, 2) with B = {flow_anchor.shape[0]}, got shape {flow.shape}")
    fa = flow_anchor.astype(jnp.float32)
    diff = fa[:, :, None, :] - flow.astype(jnp.float32)[:, None, :, :]
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    norm = jnp.sqrt(jnp.sum(fa * fa, axis=-1))
    return dist / jnp.maximum(norm, _FLOW_EPS)[..., None]


def _median_split(dist: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positive / negative sets of Eq. (6), (7): Δf ≤ per-anchor median over valid pixels.

    The median is NumPy's (mean of the two middle values for an even count).
    """
    valid = valid.astype(bool)[:, None, :]  # (B, 1, N)
    n = dist.shape[-1]
    count = jnp.sum(valid, axis=-1, keepdims=True).astype(jnp.int32)  # (B, 1, 1)
    s = jnp.sort(jnp.where(valid, dist, jnp.inf), axis=-1)
    lo = jnp.clip((count - 1) // 2, 0, n - 1)
    hi = jnp.clip(count // 2, 0, n - 1)
    lo = jnp.broadcast_to(lo, dist.shape[:-1] + (1,))
    hi = jnp.broadcast_to(hi, dist.shape[:-1] + (1,))
    median = 0.5 * (jnp.take_along_axis(s, lo, axis=-1) + jnp.take_along_axis(s, hi, axis=-1))
    return valid & (dist <= median), valid & (dist > median)


def flow_pair_weights(dist: jax.Array, valid: jax.Array, tau_p, tau_n) -> tuple[jax.Array, jax.Array]:
    """Positive and negative pair weights of Moens et al. 2024, Eq. (6), (7), (9).

    For each anchor, the valid pixels with Δf ≤ the median of Δf over the valid pixels
    (NumPy median) are positives with w_p = exp(−Δf/τ_P); those above are negatives with
    w_n = 1 − exp(−Δf/τ_N). Every other entry is 0. The anchor's own pixel (Δf = 0) is a
    positive with weight 1; ``flow_guided_infonce`` overrides it.

    Args:
      dist: float (B, A, N) relative flow distances (``relative_flow_distance``).
      valid: bool (B, N).
      tau_p, tau_n: temperatures τ_P, τ_N > 0 (the 25 % / 75 % quantiles of Δf,
        ``temperatures.relative_distance_quantiles``).

    Returns:
      (w_pos, w_neg), float32 (B, A, N) in [0, 1], disjoint supports.

    Raises:
      ValueError: on shape mismatches or non-positive temperatures.
    """
    if dist.ndim != 3 or valid.shape != (dist.shape[0], dist.shape[2]):
        raise ValueError(f"dist must be (B, A, N) and valid (B, N); got {dist.shape} and {valid.shape}")
    _check_positive("tau_p", tau_p)
    _check_positive("tau_n", tau_n)
    dist = dist.astype(jnp.float32)
    pos, neg = _median_split(dist, valid)
    safe = jnp.where(pos | neg, dist, 0.0)
    w_pos = jnp.where(pos, jnp.exp(-safe / tau_p), 0.0)
    w_neg = jnp.where(neg, -jnp.expm1(-safe / tau_n), 0.0)
    return w_pos, w_neg


# ----------------------------------------------------------------------------- triplet sums


def _sample_subset(key, candidate, forced, k):
    """k indices among ``candidate`` (N,) uniformly without replacement, ``forced`` (N,) bool
    always first; returns (idx (k,), taken bool (k,), inclusion probability (k,))."""
    u = jax.random.uniform(key, candidate.shape)
    score = jnp.where(forced, -1.0, jnp.where(candidate, u, 2.0))
    _, idx = jax.lax.top_k(-score, k)
    taken = candidate[idx]
    num_forced = jnp.sum(forced & candidate).astype(jnp.float32)
    rest = jnp.sum(candidate & ~forced).astype(jnp.float32)
    prob_rest = jnp.minimum(1.0, (k - num_forced) / jnp.maximum(rest, 1.0))
    prob = jnp.where(forced[idx], 1.0, prob_rest)
    return idx, taken, prob


def _triplet_sum(t, w_pos, w_neg, log_lambda, num_pairs, key, forced):
    """Σ_p Σ_n w_p w_n softplus(log λ + t_n − t_p) for one anchor (exact, or a
    Horvitz–Thompson estimate from ``num_pairs`` sampled positives and negatives)."""
    if num_pairs is None:
        m = jax.nn.softplus(log_lambda + t[None, :] - t[:, None])  # rows p, columns n
        return w_pos @ (m @ w_neg)
    kp, kn = jax.random.split(key)
    ip, tp_, pp = _sample_subset(kp, w_pos > 0, forced, num_pairs)
    in_, tn_, pn = _sample_subset(kn, w_neg > 0, jnp.zeros_like(forced), num_pairs)
    a = jnp.where(tp_, w_pos[ip] / pp, 0.0)
    c = jnp.where(tn_, w_neg[in_] / pn, 0.0)
    m = jax.nn.softplus(log_lambda + t[in_][None, :] - t[ip][:, None])
    return a @ (m @ c)


def flow_guided_infonce(
    z_anchor: jax.Array,
    z_other: jax.Array,
    flow: jax.Array,
    valid: jax.Array,
    anchors: jax.Array,
    anchor_mask: jax.Array,
    *,
    tau_p,
    tau_n,
    tau0: float = 0.07,
    negative_weight: float = 10.0,
    counterpart_weight: float = 4.0,
    exclude_self: bool = False,
    num_pairs: int | None = None,
    key: jax.Array | None = None,
    anchors_per_step: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Optical-flow-guided pixel InfoNCE (Moens et al. 2024, Eq. (1), (5)–(9); App. C.1).

    For every counted anchor a (``anchor_mask`` set and pixel valid), positives p and
    negatives n are the valid pixels of the median split of Δf (Eq. (6)–(8)) with weights of
    Eq. (9); the exact counterpart, pixel a of ``z_other``, is a positive with weight
    ``counterpart_weight`` (4 in the paper) instead of exp(0) = 1. With ``exclude_self``
    (Appendix C.1, s^(1,1): ``z_other`` is ``z_anchor``'s own view) pixel a is dropped from the
    positives instead. The loss is the weighted mean over all triplets of the batch:

      L = Σ_{b,a,p,n} w_p w_n softplus(log λ + (⟨z_a, z_n⟩ − ⟨z_a, z_p⟩)/τ0) / T,
      T = Σ_{b,a} (Σ_p w_p)(Σ_n w_n),   λ = ``negative_weight``,

    where z_a comes from ``z_anchor`` and z_p, z_n from ``z_other``; L = 0 when T = 0.

    Memory: the (N × N) triplet matrix of ONE anchor at a time (``jax.lax.map`` over the
    B·A anchors, ``anchors_per_step`` of them vectorised, each rematerialised in the
    backward pass), never (B, A, N, N). ``num_pairs`` = k samples k positives and k
    negatives per anchor uniformly without replacement (the counterpart always kept) and
    uses the Horvitz–Thompson estimate of the triplet sum (unbiased), divided by the exact
    T; cost k² instead of N² per anchor.

    Args:
      z_anchor, z_other: float (B, N, D) unit vectors (not re-normalised here).
      flow: float (B, N, 2) optical flow in pixels.
      valid: bool (B, N).
      anchors: int (B, A) pixel indices in [0, N); anchor_mask: bool (B, A).
      tau_p, tau_n: τ_P, τ_N of Eq. (9), > 0.
      tau0: similarity temperature τ0 of Eq. (5).
      negative_weight: λ, the factor on negative similarities in Eq. (1) (10).
      counterpart_weight: positive weight of the exact cross-view counterpart (4).
      exclude_self: drop pixel a from the positives (Appendix C.1).
      num_pairs: None for the exact sum over all pairs, or k ≥ 1 sampled pairs per side.
      key: PRNG key, required when ``num_pairs`` is set.
      anchors_per_step: anchors vectorised per ``lax.map`` step (memory ~ this × N²).

    Returns:
      (loss float32 scalar, aux) with aux float32 scalars: ``total_weight`` (T),
      ``loss_sum`` (the unnormalised weighted sum, L·T), ``mean_positive_weight`` and
      ``mean_negative_weight`` (mean flow weight over the members of the positive / negative
      sets of the counted anchors, counterpart override excluded), ``positives_per_anchor``,
      ``negatives_per_anchor`` and ``anchors`` (counted anchors per image).

    Raises:
      ValueError: on shape mismatches, non-positive temperatures, num_pairs < 1, or
        num_pairs without key.
    """
    b, n, _, a = _check_common(z_anchor, z_other, valid, anchors, anchor_mask)
    if flow.shape != (b, n, 2):
        raise ValueError(f"flow must be (B, N, 2) = {(b, n, 2)} in pixels, got shape {flow.shape}")
    _check_positive("tau0", tau0)
    _check_positive("negative_weight", negative_weight)
    _check_positive("counterpart_weight", counterpart_weight, allow_zero=True)
    if num_pairs is not None:
        if int(num_pairs) < 1:
            raise ValueError(f"num_pairs must be None or >= 1, got {num_pairs}")
        if key is None:
            raise ValueError("key is required when num_pairs is set (pairs are sampled)")
        num_pairs = min(int(num_pairs), n)
    if int(anchors_per_step) < 1:
        raise ValueError(f"anchors_per_step must be >= 1, got {anchors_per_step}")

    valid = valid.astype(bool)
    amask = _effective_anchor_mask(valid, anchors, anchor_mask)  # (B, A)
    flow = flow.astype(jnp.float32)
    flow_anchor = jnp.take_along_axis(flow, anchors[..., None], axis=1)
    dist = relative_flow_distance(flow_anchor, flow)
    w_pos_flow, w_neg = flow_pair_weights(dist, valid, tau_p, tau_n)
    w_pos_flow = w_pos_flow * amask[..., None]
    w_neg = w_neg * amask[..., None]
    self_hot = jax.nn.one_hot(anchors, n, dtype=bool) & amask[..., None]  # (B, A, N)
    w_pos = jnp.where(self_hot, 0.0 if exclude_self else float(counterpart_weight), w_pos_flow)

    dtype = jnp.promote_types(z_anchor.dtype, jnp.float32)  # float64 stays float64 (tests)
    z_anchor = z_anchor.astype(dtype)
    z_other = z_other.astype(dtype)
    za = jnp.take_along_axis(z_anchor, anchors[..., None], axis=1)  # (B, A, D)
    log_lambda = math.log(float(negative_weight))
    if num_pairs is not None:
        keys = jax.random.split(key, b * a)  # (B·A,) typed keys or (B·A, 2) raw keys
    else:
        keys = jnp.zeros((b * a,), jnp.uint32)  # unused
    forced = self_hot if not exclude_self else jnp.zeros_like(self_hot)

    def per_anchor(args):
        bi, z_a, wp, wn, k, forced_a = args
        t = (z_other[bi] @ z_a) / tau0  # (N,) scaled cosine similarities ⟨z_a, z'_l⟩/τ0
        return _triplet_sum(t, wp, wn, log_lambda, num_pairs, k, forced_a)

    flat = lambda x: x.reshape((b * a,) + x.shape[2:])
    batch_index = jnp.repeat(jnp.arange(b, dtype=jnp.int32), a)
    sums = jax.lax.map(
        jax.checkpoint(per_anchor),
        (batch_index, flat(za), flat(w_pos), flat(w_neg), keys, flat(forced)),
        batch_size=int(anchors_per_step) if int(anchors_per_step) > 1 else None,
    )
    loss_sum = jnp.sum(sums)
    total = jnp.sum(jnp.sum(w_pos, axis=-1) * jnp.sum(w_neg, axis=-1))
    loss = jnp.where(total > 0, loss_sum / jnp.where(total > 0, total, 1.0), 0.0)

    pos_members = (w_pos_flow > 0) & ~self_hot
    neg_members = w_neg > 0
    counted = jnp.maximum(jnp.sum(amask), 1).astype(jnp.float32)
    aux = {
        "total_weight": total,
        "loss_sum": loss_sum,
        "mean_positive_weight": jnp.sum(jnp.where(pos_members, w_pos_flow, 0.0)) / jnp.maximum(jnp.sum(pos_members), 1),
        "mean_negative_weight": jnp.sum(w_neg) / jnp.maximum(jnp.sum(neg_members), 1),
        "positives_per_anchor": jnp.sum(w_pos > 0).astype(jnp.float32) / counted,
        "negatives_per_anchor": jnp.sum(neg_members).astype(jnp.float32) / counted,
        "anchors": jnp.sum(amask).astype(jnp.float32) / b,
    }
    return loss, aux


def view_contrastive_infonce(
    z_anchor: jax.Array,
    z_other: jax.Array,
    coords: jax.Array,
    valid: jax.Array,
    anchors: jax.Array,
    anchor_mask: jax.Array,
    *,
    radius,
    tau0: float = 0.07,
    negative_weight: float = 10.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """View-contrastive pixel InfoNCE (Moens et al. 2024, Appendix C.2, Eq. (10), (11), (1)).

    The only positive of anchor a is its counterpart, pixel a of ``z_other`` (weight 1);
    the negatives are the valid pixels n with Euclidean distance ‖coords[n] − coords[a]‖ >
    ``radius`` (weight 1). Returns the mean over the (a, n) pairs of the batch,

      L = Σ_{b,a,n} softplus(log λ + (⟨z_a, z'_n⟩ − ⟨z_a, z'_a⟩)/τ0) / T,   T = #pairs,

    0 when T = 0 (same normalisation convention as ``flow_guided_infonce``).

    Args:
      z_anchor, z_other: float (B, N, D) unit vectors (view 2 and the view-1 representation
        resampled onto view 2's grid).
      coords: float (N, 2) or (B, N, 2) pixel positions of the grid pixels in the view-2
        image, in pixels.
      valid: bool (B, N); anchors int (B, A); anchor_mask bool (B, A).
      radius: R in pixels of the view-2 image (the paper: 1/3 of the image width), ≥ 0.
      tau0: similarity temperature τ0; negative_weight: λ (10).

    Returns:
      (loss float32 scalar, aux) with ``total_weight`` (T), ``loss_sum`` (L·T),
      ``mean_positive_weight`` (1), ``mean_negative_weight`` (1),
      ``negatives_per_anchor`` and ``anchors`` (counted anchors per image).

    Raises:
      ValueError: on shape mismatches or a negative radius.
    """
    b, n, _, _ = _check_common(z_anchor, z_other, valid, anchors, anchor_mask)
    if coords.shape not in ((n, 2), (b, n, 2)):
        raise ValueError(f"coords must be (N, 2) or (B, N, 2) pixel positions with N = {n}, got {coords.shape}")
    _check_positive("radius", radius, allow_zero=True)
    _check_positive("tau0", tau0)
    _check_positive("negative_weight", negative_weight)
    valid = valid.astype(bool)
    amask = _effective_anchor_mask(valid, anchors, anchor_mask)
    coords = jnp.broadcast_to(coords.astype(jnp.float32), (b, n, 2))
    ca = jnp.take_along_axis(coords, anchors[..., None], axis=1)  # (B, A, 2)
    diff = ca[:, :, None, :] - coords[:, None, :, :]
    far = jnp.sum(diff * diff, axis=-1) > jnp.square(jnp.asarray(radius, jnp.float32))
    neg = far & valid[:, None, :] & amask[..., None]  # (B, A, N)

    dtype = jnp.promote_types(z_anchor.dtype, jnp.float32)
    za = jnp.take_along_axis(z_anchor.astype(dtype), anchors[..., None], axis=1)
    t = jnp.einsum("bad,bnd->ban", za, z_other.astype(dtype)) / tau0
    t_pos = jnp.take_along_axis(t, anchors[..., None], axis=2)  # (B, A, 1)
    terms = jax.nn.softplus(math.log(float(negative_weight)) + t - t_pos)
    loss_sum = jnp.sum(jnp.where(neg, terms, 0.0))
    total = jnp.sum(neg).astype(jnp.float32)
    loss = jnp.where(total > 0, loss_sum / jnp.maximum(total, 1.0), 0.0)
    counted = jnp.maximum(jnp.sum(amask), 1).astype(jnp.float32)
    one = jnp.ones((), jnp.float32)
    aux = {
        "total_weight": total,
        "loss_sum": loss_sum,
        "mean_positive_weight": one,
        "mean_negative_weight": one,
        "negatives_per_anchor": total / counted,
        "anchors": jnp.sum(amask).astype(jnp.float32) / b,
    }
    return loss, aux


def balanced_sum(loss_a: jax.Array, total_a: jax.Array, loss_b: jax.Array, total_b: jax.Array) -> jax.Array:
    """Balance two contrastive terms by their total triplet weights (Moens et al. 2024, App. C.3).

    ``loss_a · T_b / (T_a + T_b) + loss_b · T_a / (T_a + T_b)`` with the totals T under
    ``stop_gradient`` — the weighted average of the terms with weights 1/T. The paper applies
    it to the UNNORMALISED triplet sums: pass ``aux["loss_sum"]`` of this module's losses
    (the result then equals T_a·T_b/(T_a + T_b) · (mean_a + mean_b), both terms with the
    same factor; an Adam-type optimiser absorbs the scale). Passing the normalised means
    instead would give the term with the larger total (the flow term, ~N²/4 weighted pairs
    per anchor against ~N for the view term) a factor of nearly 0. If both totals are 0 the
    result is 0.

    Args:
      loss_a, loss_b: float scalars, the two loss terms.
      total_a, total_b: float scalars ≥ 0, their total triplet weights (``aux["total_weight"]``).

    Returns:
      float32 scalar.
    """
    ta = jax.lax.stop_gradient(jnp.asarray(total_a, jnp.float32))
    tb = jax.lax.stop_gradient(jnp.asarray(total_b, jnp.float32))
    s = ta + tb
    safe = jnp.where(s > 0, s, 1.0)
    return jnp.where(s > 0, (loss_a * tb + loss_b * ta) / safe, 0.0)
