"""Differentiable image warps and sampling: forward bilinear splatting, backward sampling.

Conventions (DESIGN.md): arrays are batch-first NHWC; optical flow ``flow[b, y, x] = (dx, dy)``
in pixels, from the frame the flow is defined on to the frame it points at; pixel ``p = (x, y)``
is the integer pixel centre, so ``x`` runs over ``0 … W−1`` and ``y`` over ``0 … H−1``.

- ``forward_warp(src, flow)`` moves content: ``src[p]`` is splatted to ``p + flow[p]``
  (the warp T of Dual Motion Flow, Zhao et al. MICCAI 2020, Eq. 1, 2 and 5, "a forward
  warping function which is differentiable and implemented with bilinear interpolation").
- ``backward_warp(src, flow)`` samples ``src`` at ``p + flow[p]`` (what the Dual Motion Flow
  reference code does: bilinear sampling with the sample coordinates clamped to the image;
  label maps with nearest sampling).
- ``sample_bilinear(src, coords)`` / ``sample_nearest(src, coords)``: the samplers behind
  ``backward_warp``, at arbitrary (B, h, w, 2) float pixel coordinates ``(x, y)``; the one
  implementation of image sampling in jaxsurg (``jaxsurg.methods.laparoflow.views`` uses them too).

Both are pure ``jnp`` and the public functions are ``jax.jit``-compiled (their keyword
options and ``num_classes`` are static arguments; they also trace inside an outer jit),
with no Python loops over pixels, differentiable with respect to ``src`` and ``flow``
(piecewise: the bilinear weights have kinks where a coordinate crosses an integer).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255
FORWARD_EPS = 1e-3  # Splatted weight at or below which a forward-warp target is a hole.

_MODES = ("bilinear", "nearest")
_BORDERS = ("clamp", "zeros")


# --------------------------------------------------------------------------------------
# Argument checks (shapes are static, so these run at trace time).


def _check_image_and_flow(src: jax.Array, flow: jax.Array, src_name: str = "src") -> None:
    if src.ndim != 4:
        raise ValueError(f"{src_name} must be a (B, H, W, C) array, got shape {tuple(src.shape)}")
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be a (B, H, W, 2) array of (dx, dy), got shape {tuple(flow.shape)}")
    if tuple(flow.shape[:3]) != tuple(src.shape[:3]):
        raise ValueError(
            f"flow must have the batch and spatial shape of {src_name}: "
            f"{src_name} (B, H, W) = {tuple(src.shape[:3])}, flow (B, H, W) = {tuple(flow.shape[:3])}"
        )


def _check_labels(labels: jax.Array, flow: jax.Array, num_classes: int, ignore_index: int) -> None:
    if labels.ndim != 3:
        raise ValueError(f"labels must be a (B, H, W) class map, got shape {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype (uint8/int32), got {labels.dtype}")
    if flow.ndim != 4 or flow.shape[-1] != 2 or tuple(flow.shape[:3]) != tuple(labels.shape):
        raise ValueError(
            f"flow must be (B, H, W, 2) with (B, H, W) = labels.shape {tuple(labels.shape)}, "
            f"got flow shape {tuple(flow.shape)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index must lie outside the class range [0, num_classes={num_classes}), got {ignore_index}"
        )


def _float_dtype(*arrays: jax.Array):
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _pixel_grid(h: int, w: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Integer pixel-centre coordinates, each (1, H, W)."""
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype), indexing="ij")
    return xs[None], ys[None]


# --------------------------------------------------------------------------------------
# Forward warp (splatting).


def _splat(values: jax.Array, flow: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unnormalised bilinear splat.

    Returns ``(acc (B, H, W, C), weight (B, H, W))``: ``acc[q] = Σ_p w(p→q)·values[p]`` and
    ``weight[q] = Σ_p w(p→q)``, with ``w`` the bilinear weight of ``p + flow[p]`` at target
    pixel ``q``; targets outside the image are dropped.
    """
    b, h, w, c = values.shape
    dtype = values.dtype
    xs, ys = _pixel_grid(h, w, dtype)
    # Clip far-out targets before floor() so the int cast cannot overflow; they are dropped
    # anyway (every corner of a clipped target lies outside), and clipping there has zero
    # gradient, which is what a dropped target has.
    tx = jnp.clip(xs + flow[..., 0].astype(dtype), -2.0, w + 1.0)
    ty = jnp.clip(ys + flow[..., 1].astype(dtype), -2.0, h + 1.0)
    x0f = jnp.floor(tx)
    y0f = jnp.floor(ty)
    fx = tx - x0f  # in [0, 1); carries the gradient w.r.t. flow
    fy = ty - y0f
    x0 = x0f.astype(jnp.int32)
    y0 = y0f.astype(jnp.int32)
    batch = jnp.arange(b, dtype=jnp.int32)[:, None, None]

    # One scatter-add over the 4 corners, the weight riding along as an extra channel.
    ones = jnp.ones((b, h, w, 1), dtype)
    payload = jnp.concatenate([values, ones], axis=-1).reshape(1, b * h * w, c + 1)
    cx = x0[None] + jnp.array([0, 1, 0, 1], jnp.int32)[:, None, None, None]
    cy = y0[None] + jnp.array([0, 0, 1, 1], jnp.int32)[:, None, None, None]
    wx = jnp.stack([1.0 - fx, fx, 1.0 - fx, fx])
    wy = jnp.stack([1.0 - fy, 1.0 - fy, fy, fy])
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    wc = jnp.where(inside, wx * wy, 0.0).reshape(4, b * h * w, 1)
    idx = ((batch[None] * h + jnp.clip(cy, 0, h - 1)) * w + jnp.clip(cx, 0, w - 1)).reshape(-1)
    out = jnp.zeros((b * h * w, c + 1), dtype).at[idx].add((payload * wc).reshape(4 * b * h * w, c + 1))
    out = out.reshape(b, h, w, c + 1)
    return out[..., :c], out[..., c]


@functools.partial(jax.jit, static_argnames=("return_weights", "eps"))
def forward_warp(
    src: jax.Array,
    flow: jax.Array,
    *,
    return_weights: bool = False,
    eps: float = FORWARD_EPS,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Forward-warps (splats) ``src`` along ``flow`` with normalised bilinear weights.

    The differentiable forward warp T of Dual Motion Flow (Zhao et al., MICCAI 2020, Eq. 1,
    2, 5). Each source pixel ``p`` is moved to ``p + flow[p]`` and distributed over the 4
    target pixels around that point with bilinear weights; targets outside the image are
    dropped. Every target pixel ``q`` then holds the weighted average

        out[q] = Σ_p w(p→q)·src[p] / Σ_p w(p→q)       where Σ_p w(p→q) > eps,
        out[q] = 0                                    elsewhere (a hole).

    Several sources landing on one target are averaged by their bilinear weights; there is
    no z-buffer or occlusion reasoning (the paper's T has none), so at occlusions the
    foreground and background mix. For a constant translation ``v`` the result in the
    covered interior equals bilinear sampling of ``src`` at ``q − v``.

    Gradients: w.r.t. ``src`` and ``flow`` everywhere, including the normalisation; the
    division uses a guarded denominator so holes (weight 0) give zero, finite gradients.
    The output jumps to 0 where the weight crosses ``eps`` (a hole is a hole), and the
    bilinear weights have kinks where ``p + flow[p]`` crosses integer coordinates.

    Args:
      src: float (B, H, W, C) image or features (any value range; images in [0, 1]).
      flow: float (B, H, W, 2), ``(dx, dy)`` in pixels from ``src``'s frame to the target.
      return_weights: also return the splatted weight sum.
      eps: weight sum at or below which a target pixel is a hole (output exactly 0).

    Returns:
      ``out`` (B, H, W, C) in the float dtype of ``src``/``flow``; with ``return_weights``
      also ``weights`` (B, H, W) ≥ 0, the splatted bilinear weight sum (≈ 1 where exactly one
      source covers a pixel, 0 in holes, > 1 where sources pile up).

    Raises:
      ValueError: ``src`` is not 4-D, ``flow`` is not (B, H, W, 2) or their (B, H, W) differ.
    """
    _check_image_and_flow(src, flow)
    dtype = _float_dtype(src, flow)
    acc, weight = _splat(src.astype(dtype), flow.astype(dtype))
    covered = weight > eps
    safe = jnp.where(covered, weight, 1.0)
    out = jnp.where(covered[..., None], acc / safe[..., None], 0.0).astype(dtype)
    if return_weights:
        return out, weight
    return out


# --------------------------------------------------------------------------------------
# Sampling at float pixel coordinates, and the backward warp built on it.


def _check_sampling_args(src: jax.Array, coords: jax.Array) -> None:
    if src.ndim != 4:
        raise ValueError(f"src must be a (B, H, W, C) array, got shape {tuple(src.shape)}")
    if coords.ndim != 4 or coords.shape[-1] != 2 or coords.shape[0] != src.shape[0]:
        raise ValueError(
            f"coords must be a (B, h, w, 2) array of (x, y) pixel coordinates with "
            f"B = {src.shape[0]} (src's batch), got shape {tuple(coords.shape)}"
        )


def _check_border(border: str) -> None:
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")


def _prepare_points(sx: jax.Array, sy: jax.Array, h: int, w: int, border: str):
    # Keep far-out points finite and small before floor()/int casts (both corners of a
    # point clipped here lie outside the image, so the result is unchanged).
    sx = jnp.clip(sx, -2.0, w + 1.0)
    sy = jnp.clip(sy, -2.0, h + 1.0)
    if border == "clamp":
        sx = jnp.clip(sx, 0.0, w - 1.0)
        sy = jnp.clip(sy, 0.0, h - 1.0)
    return sx, sy


def _bilinear(src: jax.Array, sx: jax.Array, sy: jax.Array, border: str) -> jax.Array:
    """Bilinear sample of float ``src`` (B, H, W, C) at points (B, h, w) → (B, h, w, C)."""
    b, h, w, c = src.shape
    sx, sy = _prepare_points(sx, sy, h, w, border)
    x0f = jnp.floor(sx)
    y0f = jnp.floor(sy)
    fx = sx - x0f
    fy = sy - y0f
    # One gather over the 4 corners (stacked on a leading axis).
    cx = x0f.astype(jnp.int32)[None] + jnp.array([0, 1, 0, 1], jnp.int32)[:, None, None, None]
    cy = y0f.astype(jnp.int32)[None] + jnp.array([0, 0, 1, 1], jnp.int32)[:, None, None, None]
    wx = jnp.stack([1.0 - fx, fx, 1.0 - fx, fx])
    wy = jnp.stack([1.0 - fy, 1.0 - fy, fy, fy])
    # With 'clamp' a corner can only be outside when its weight is exactly 0.
    ok = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    wc = jnp.where(ok, wx * wy, 0.0)[..., None]  # (4, B, h, w, 1)
    batch = jnp.arange(b, dtype=jnp.int32)[None, :, None, None]
    idx = (batch * h + jnp.clip(cy, 0, h - 1)) * w + jnp.clip(cx, 0, w - 1)
    vals = src.reshape(b * h * w, c)[idx.reshape(-1)].reshape(*idx.shape, c)
    return jnp.sum(wc * vals, axis=0)


def _nearest(src: jax.Array, sx: jax.Array, sy: jax.Array, border: str) -> jax.Array:
    """Nearest sample (halves round up) of ``src`` (B, H, W, C) at points (B, h, w)."""
    b, h, w, c = src.shape
    sx, sy = _prepare_points(sx, sy, h, w, border)
    xi = jnp.floor(sx + 0.5).astype(jnp.int32)
    yi = jnp.floor(sy + 0.5).astype(jnp.int32)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    batch = jnp.arange(b, dtype=jnp.int32)[:, None, None]
    idx = (batch * h + jnp.clip(yi, 0, h - 1)) * w + jnp.clip(xi, 0, w - 1)
    vals = src.reshape(b * h * w, c)[idx.reshape(-1)].reshape(*idx.shape, c)
    return jnp.where(ok[..., None], vals, jnp.zeros((), src.dtype))


def _inside_points(sx: jax.Array, sy: jax.Array, h: int, w: int) -> jax.Array:
    """True where a sample POINT lies in [0, W−1] × [0, H−1] (between the outer pixel centres)."""
    return (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)


@functools.partial(jax.jit, static_argnames=("border",))
def sample_bilinear(
    src: jax.Array, coords: jax.Array, *, border: Literal["clamp", "zeros"] = "clamp"
) -> jax.Array:
    """Bilinear sampling of ``src`` at float pixel coordinates: ``out[b, i, j] = src(coords[b, i, j])``.

    Pixel ``(row y, column x)`` of ``src`` has its centre at the point ``(x, y)``; the output
    grid (h, w) is independent of ``src``'s (H, W). This is the sampler behind
    :func:`backward_warp` (``coords = p + flow[p]``) and the Laparoflow-SSL view resampling
    (``jaxsurg.methods.laparoflow.views``, affine ``coords``).

    Borders (as :func:`backward_warp`):
      - ``'clamp'``: the point is clamped to ``[0, W−1] × [0, H−1]``, which replicates the
        edge pixels (``cv2.remap`` with ``BORDER_REPLICATE``; ``scipy.ndimage.map_coordinates``
        with ``order=1, mode='nearest'``); no gradient w.r.t. ``coords`` flows through a
        clamped coordinate.
      - ``'zeros'``: corners outside the image contribute 0
        (``torch.nn.functional.grid_sample``, ``padding_mode='zeros'``, ``align_corners=True``).

    Differentiable w.r.t. ``src`` and ``coords`` (with kinks where a coordinate crosses an
    integer). No ``inside`` mask is returned: callers define the one they need
    (:func:`backward_warp`'s sample points in ``[0, W−1]``; ``views``' pixel area
    ``[−0.5, W−0.5]``).

    Args:
      src: (B, H, W, C) float image/features.
      coords: float (B, h, w, 2), ``(x, y)`` in ``src`` pixels.
      border: ``'clamp'`` or ``'zeros'``.

    Returns:
      (B, h, w, C) in the float dtype of ``src``/``coords`` (float32 if neither is float).

    Raises:
      ValueError: ``src`` not 4-D, ``coords`` not (B, h, w, 2) with ``src``'s B, unknown ``border``.
    """
    _check_sampling_args(src, coords)
    _check_border(border)
    dtype = _float_dtype(src, coords)
    coords = coords.astype(dtype)
    return _bilinear(src.astype(dtype), coords[..., 0], coords[..., 1], border)


@functools.partial(jax.jit, static_argnames=("border",))
def sample_nearest(
    src: jax.Array, coords: jax.Array, *, border: Literal["clamp", "zeros"] = "clamp"
) -> jax.Array:
    """Nearest-neighbour sampling of ``src`` at float pixel coordinates (masks, label maps).

    Same geometry and borders as :func:`sample_bilinear`; the point ``(x, y)`` reads pixel
    ``(floor(y + 0.5), floor(x + 0.5))`` (halves round up, to the right/lower pixel). With
    ``'clamp'`` the point is clamped to the image first (edge replicated); with ``'zeros'``
    a point whose rounded pixel is outside reads 0. Zero gradient w.r.t. ``coords``.

    Args:
      src: (B, H, W, C) array of any dtype (float, integer, bool).
      coords: float (B, h, w, 2), ``(x, y)`` in ``src`` pixels.
      border: ``'clamp'`` or ``'zeros'``.

    Returns:
      (B, h, w, C) in ``src.dtype``.

    Raises:
      ValueError: as :func:`sample_bilinear`.
    """
    _check_sampling_args(src, coords)
    _check_border(border)
    coords = coords.astype(_float_dtype(coords))
    return _nearest(src, coords[..., 0], coords[..., 1], border)


@functools.partial(jax.jit, static_argnames=("mode", "border", "return_inside"))
def backward_warp(
    src: jax.Array,
    flow: jax.Array,
    *,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    border: Literal["clamp", "zeros"] = "clamp",
    return_inside: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Backward-warps ``src``: ``out[p] = src(p + flow[p])``.

    The warp of the Dual Motion Flow reference code (which departs from the paper's forward
    splatting, see REFERENCE.md): bilinear sampling with the sample point clamped to the
    image; label maps with nearest sampling. It is :func:`sample_bilinear` /
    :func:`sample_nearest` at the points ``p + flow[p]``. With ``border='clamp'`` and
    ``mode='bilinear'`` this equals ``cv2.remap(src, x + dx, y + dy, INTER_LINEAR,
    BORDER_REPLICATE)`` (up to OpenCV's 1/32-pixel quantisation of the sample position).

    Borders:
      - ``'clamp'``: the sample point is clamped to ``[0, W−1] × [0, H−1]`` (replicates the
        edge pixels); no gradient w.r.t. ``flow`` flows through a clamped coordinate.
      - ``'zeros'``: pixels outside the image read as 0; bilinear corners outside the image
        contribute 0 (``torch.nn.functional.grid_sample`` with ``padding_mode='zeros'``,
        ``align_corners=True``); in nearest mode a sample whose rounded position is outside
        gives 0.

    Nearest mode rounds halves up (``floor(s + 0.5)``); it has zero gradient w.r.t. ``flow``.

    Args:
      src: (B, H, W, C) float image/features (nearest mode also takes integer maps).
      flow: float (B, H, W, 2), ``(dx, dy)`` in pixels from the output frame to ``src``'s.
      mode: ``'bilinear'`` or ``'nearest'``.
      border: ``'clamp'`` or ``'zeros'``.
      return_inside: also return ``inside`` (B, H, W) bool, True where the unclamped sample
        POINT lies in ``[0, W−1] × [0, H−1]`` (between the outer pixel centres, where every
        bilinear corner is a real pixel; ``views`` uses the wider pixel AREA instead).

    Returns:
      ``out`` (B, H, W, C): bilinear mode in the float dtype of ``src``/``flow``; nearest mode
      in ``src.dtype``. With ``return_inside`` also the ``inside`` mask.

    Raises:
      ValueError: bad shapes (see ``forward_warp``), unknown ``mode`` or ``border``.
    """
    _check_image_and_flow(src, flow)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    _check_border(border)
    _, h, w, _ = src.shape
    dtype = _float_dtype(src, flow) if mode == "bilinear" else _float_dtype(flow)
    xs, ys = _pixel_grid(h, w, dtype)
    sx = xs + flow[..., 0].astype(dtype)
    sy = ys + flow[..., 1].astype(dtype)
    if mode == "bilinear":
        out = _bilinear(src.astype(dtype), sx, sy, border)
    else:
        out = _nearest(src, sx, sy, border)
    if return_inside:
        return out, _inside_points(sx, sy, h, w)
    return out


# --------------------------------------------------------------------------------------
# Label maps.


def _label_votes(labels: jax.Array, num_classes: int, ignore_index: int, dtype) -> jax.Array:
    """One-hot (B, H, W, K+1): channels 0…K−1 the classes, channel K 'ignore'.

    Pixels equal to ``ignore_index`` (or otherwise outside [0, K)) vote only for 'ignore'.
    """
    labels = labels.astype(jnp.int32)
    is_class = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    target = jnp.where(is_class, labels, num_classes)
    return jax.nn.one_hot(target, num_classes + 1, dtype=dtype)


def _votes_to_labels(votes: jax.Array, total: jax.Array, eps: float, ignore_index: int, dtype) -> jax.Array:
    """argmax over class and ignore votes; ignore where the winner is 'ignore' or ``total ≤ eps``."""
    k = votes.shape[-1] - 1
    winner = jnp.argmax(votes, axis=-1)
    keep = (winner < k) & (total > eps)
    return jnp.where(keep, winner, ignore_index).astype(dtype)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index", "eps"))
def forward_warp_labels(
    labels: jax.Array,
    flow: jax.Array,
    num_classes: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    eps: float = FORWARD_EPS,
) -> jax.Array:
    """Forward-warps a class map: per-class bilinear splatting, then argmax.

    The label propagation ``L̂_{t+1} = T(L_t, F̂_{t→t+1})`` of Dual Motion Flow (Zhao et al.,
    MICCAI 2020, Eq. 2). Each class is splatted as a one-hot channel (``forward_warp``
    weights), and every target pixel takes the class with the largest splatted weight, so
    the output contains only class ids and ``ignore_index``. Source pixels equal to
    ``ignore_index`` add weight to no class: they vote for 'ignore', so a target whose
    largest share comes from ignored sources becomes ``ignore_index`` (ties go to the
    lowest class id). Targets where nothing lands (weight sum ≤ ``eps``, the holes of
    ``forward_warp``) become ``ignore_index``.

    Args:
      labels: integer (B, H, W) class map with values in [0, num_classes) or ``ignore_index``
        (other values are treated as ignored).
      flow: float (B, H, W, 2), ``(dx, dy)`` in pixels.
      num_classes: number of classes K (a static Python int).
      ignore_index: the ignore value (default 255); must not be a class id.
      eps: hole threshold on the splatted weight sum.

    Returns:
      (B, H, W) class map in ``labels.dtype``.

    Raises:
      ValueError / TypeError: bad shapes, non-integer ``labels``, bad ``num_classes`` or an
        ``ignore_index`` inside [0, num_classes).
    """
    _check_labels(labels, flow, num_classes, ignore_index)
    dtype = _float_dtype(flow)
    votes, total = _splat(_label_votes(labels, num_classes, ignore_index, dtype), flow.astype(dtype))
    return _votes_to_labels(votes, total, eps, ignore_index, labels.dtype)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index", "mode", "border"))
def backward_warp_labels(
    labels: jax.Array,
    flow: jax.Array,
    num_classes: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    mode: Literal["nearest", "bilinear"] = "nearest",
    border: Literal["clamp", "zeros"] = "clamp",
) -> jax.Array:
    """Backward-warps a class map: ``out[p] = labels(p + flow[p])``.

    ``mode='nearest'`` (default; the Dual Motion Flow reference code) reads the nearest
    pixel's label directly. ``mode='bilinear'`` samples the one-hot votes bilinearly and
    takes the argmax (ignored pixels vote for 'ignore', as in ``forward_warp_labels``).
    With ``border='zeros'`` samples outside the image become ``ignore_index`` (in bilinear
    mode, the weight of out-of-image corners votes for 'ignore').

    Args:
      labels: integer (B, H, W) class map with values in [0, num_classes) or ``ignore_index``.
      flow: float (B, H, W, 2), ``(dx, dy)`` in pixels from the output frame to ``labels``'.
      num_classes: number of classes K (a static Python int).
      ignore_index: the ignore value (default 255); must not be a class id.
      mode: ``'nearest'`` or ``'bilinear'``.
      border: ``'clamp'`` or ``'zeros'``.

    Returns:
      (B, H, W) class map in ``labels.dtype``; values in [0, num_classes) ∪ {ignore_index}.

    Raises:
      ValueError / TypeError: as ``forward_warp_labels``, and for an unknown mode/border.
    """
    _check_labels(labels, flow, num_classes, ignore_index)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
    if mode == "nearest":
        lab = labels.astype(jnp.int32)
        lab = jnp.where((lab >= 0) & (lab < num_classes), lab, ignore_index)
        # Pad with ignore so out-of-image samples ('zeros' border) read as ignore.
        shifted = (lab - ignore_index)[..., None]  # ignore → 0, the warp's fill value
        out = backward_warp(shifted, flow, mode="nearest", border=border)[..., 0] + ignore_index
        return out.astype(labels.dtype)
    dtype = _float_dtype(flow)
    votes = backward_warp(
        _label_votes(labels, num_classes, ignore_index, dtype), flow.astype(dtype), mode="bilinear", border=border
    )
    # Weight of corners outside the image ('zeros' border) votes for 'ignore'.
    missing = 1.0 - jnp.sum(votes, axis=-1)
    votes = votes.at[..., num_classes].add(jnp.maximum(missing, 0.0))
    total = jnp.ones(votes.shape[:-1], dtype)
    return _votes_to_labels(votes, total, 0.0, ignore_index, labels.dtype)
