"""On-device view generation for Laparoflow-SSL pretraining (Moens et al. 2024, §2.2, App. B.2).

Two views of every frame x (Eqs. 2–4):

    view1 = G1(P1(x))          → z1 = f(view1)
    view2 = G2(G1(P2(x)))      → z2 = f(view2)
    z3 = G2(z1)                 (z1 resampled on view 2's representation grid)

P is a random photometric transform (brightness, contrast, saturation, hue; in
``photometric``), G a random geometric one (horizontal flip, rotation, zoomed crop). G2 acts on view 1 and is drawn so
that all of view 2 lies inside view 1 ("the second crop is always taken within the first
crop"), hence z3 exists for every pixel of view 2. The flow and the valid-pixel mask follow
G1 (flow VALUES unchanged by default, App. B.2).

The coordinate conventions (pixel centres, output→input affines, angles, the representation
grid's receptive centres, cell validity) and the geometry that applies them are in
``view_geometry.py``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg.methods.laparoflow.photometric import PhotometricParams, _photometric_from_uniform, apply_photometric
from jaxsurg.methods.laparoflow.view_geometry import (
    DEFAULT_VALID_RADIUS,
    apply_affine,
    cell_validity,
    compose_affine,
    pixel_grid,
    representation_grid,
    representation_map,
    sample_bilinear,
    sample_nearest,
    view_affine,
)

Array = jax.Array

__all__ = [
    "sample_g1",
    "sample_g2",
    "g2_min_zoom",
    "make_views",
]


# ------------------------------------------------------------------------------ random G
# Every random geometric quantity is a function of 5 uniforms in [0, 1): (zoom, centre x,
# centre y, angle, flip); make_views draws all of a batch's uniforms with one PRNG call.
_G_UNIFORMS = 5


def _angle_and_flip(u: Array, rotate: bool, flip: bool) -> tuple[Array, Array]:
    # θ = 180 − 360·u, u ∈ [0, 1): θ ∈ (−180°, 180°].
    angle = 180.0 - 360.0 * u[3] if rotate else jnp.float32(0.0)
    flipped = u[4] < 0.5 if flip else jnp.bool_(False)
    return angle, flipped


def sample_g1(
    key: Array, in_size: tuple[int, int], out_size: tuple[int, int], *, max_zoom: float = 1.5,
    rotate: bool = True, flip: bool = True,
) -> Array:
    """Draws G1: a random flipped, rotated, zoomed crop of the (H, W) input (App. B.2).

    Zoom z ~ U[1, max_zoom]; zoom 1 is the largest axis-aligned crop of the view's aspect
    ratio inside the input (scale s0 = min(H/h, W/w) input px per view px), zoom z shows
    1/z of it (scale s0/z). The crop centre is uniform over the positions where the
    UNROTATED crop lies inside the input; the view is then rotated about that centre by
    θ ~ U(−180°, 180°] (``rotate``) and mirrored with probability 1/2 (``flip``). Parts of
    the rotated view may fall outside the input: these are the rotation holes that
    ``make_views`` masks out.

    Args:
      key: PRNG key. in_size: (H, W) input. out_size: (h, w) view.
      max_zoom, rotate, flip: the ranges.

    Returns:
      float32 (2, 3): view-1 pixels → input pixels.
    """
    u = jax.random.uniform(key, (_G_UNIFORMS,), jnp.float32)
    return _g1_from_uniform(u, in_size, out_size, max_zoom, rotate, flip)


def _g1_from_uniform(u, in_size, out_size, max_zoom, rotate, flip) -> Array:
    hh, ww = in_size
    h, w = out_size
    base = min(hh / h, ww / w)
    zoom = 1.0 + (max_zoom - 1.0) * u[0]
    scale = base / zoom
    slack_x = jnp.maximum(ww / 2.0 - w * scale / 2.0, 0.0)
    slack_y = jnp.maximum(hh / 2.0 - h * scale / 2.0, 0.0)
    centre = jnp.stack([(ww - 1) / 2.0 + slack_x * (2 * u[1] - 1), (hh - 1) / 2.0 + slack_y * (2 * u[2] - 1)])
    angle, flipped = _angle_and_flip(u, rotate, flip)
    return view_affine(angle, scale, flipped, centre, out_size)


def g2_min_zoom(angle_degrees: Array, out_size: tuple[int, int]) -> Array:
    """Smallest zoom at which an (h, w) view rotated by θ fits inside an (h, w) frame.

    The rotated view of scale 1/z has the bounding box (w|cos θ| + h|sin θ|)/z ×
    (w|sin θ| + h|cos θ|)/z, which must fit in w × h:
    z_min(θ) = max((w|cos θ| + h|sin θ|)/w, (w|sin θ| + h|cos θ|)/h): for a square view
    1 at multiples of 90° and √2 at 45°; for w > h, w/h at ±90°.

    Args:
      angle_degrees: float array of angles θ in degrees (any shape).
      out_size: (h, w) of views 1 and 2.

    Returns:
      float32, the shape of ``angle_degrees``.
    """
    h, w = out_size
    theta = jnp.deg2rad(angle_degrees)
    c, s = jnp.abs(jnp.cos(theta)), jnp.abs(jnp.sin(theta))
    return jnp.maximum((w * c + h * s) / w, (w * s + h * c) / h)


def sample_g2(
    key: Array, out_size: tuple[int, int], *, max_zoom: float = 1.5, rotate: bool = True, flip: bool = True
) -> Array:
    """Draws G2, acting on view 1, so that ALL of view 2 lies inside view 1 (App. B.2).

    θ ~ U(−180°, 180°] and the flip as in :func:`sample_g1`. The zoom is then drawn
    z ~ U[z_lo, z_hi] with z_lo = max(1, z_min(θ)) (:func:`g2_min_zoom`, the smallest zoom
    at which the rotated view-2 rectangle fits in view 1's frame) and z_hi = max(max_zoom,
    z_lo); for square views z_min ≤ √2, so with the paper's max_zoom = 1.5 the zoom never
    exceeds 1.5, while for non-square views large rotations force z > max_zoom. Finally the
    centre is uniform over the positions where the rotated rectangle's bounding box stays in
    view 1's area: every view-2 pixel (its whole area, not only its centre) maps inside.

    Args:
      key: PRNG key. out_size: (h, w) of views 1 and 2.
      max_zoom, rotate, flip: the ranges.

    Returns:
      float32 (2, 3): view-2 pixels → view-1 pixels.
    """
    u = jax.random.uniform(key, (_G_UNIFORMS,), jnp.float32)
    return _g2_from_uniform(u, out_size, max_zoom, rotate, flip)


def _g2_from_uniform(u, out_size, max_zoom, rotate, flip) -> Array:
    h, w = out_size
    angle, flipped = _angle_and_flip(u, rotate, flip)
    z_lo = jnp.maximum(1.0, g2_min_zoom(angle, out_size))
    z_hi = jnp.maximum(jnp.float32(max_zoom), z_lo)
    zoom = z_lo + (z_hi - z_lo) * u[0]
    scale = 1.0 / zoom
    theta = jnp.deg2rad(angle)
    c, s = jnp.abs(jnp.cos(theta)), jnp.abs(jnp.sin(theta))
    slack_x = jnp.maximum(w / 2.0 - scale * (w * c + h * s) / 2.0, 0.0)
    slack_y = jnp.maximum(h / 2.0 - scale * (w * s + h * c) / 2.0, 0.0)
    centre = jnp.stack([(w - 1) / 2.0 + slack_x * (2 * u[1] - 1), (h - 1) / 2.0 + slack_y * (2 * u[2] - 1)])
    return view_affine(angle, scale, flipped, centre, out_size)


# ------------------------------------------------------------------------------ the views
def _check_size(value, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
        ok = h > 0 and w > 0 and (h, w) == tuple(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a pair of positive ints (height, width) in pixels, got {value!r}")
    return h, w


@functools.partial(
    jax.jit,
    static_argnames=(
        "out_size", "stride", "photometric", "max_zoom", "rotate", "flip", "rotate_flow_vectors", "grid_offset", "valid_radius",
    ),
)
def make_views(
    key: Array,
    image: Array,
    flow: Array,
    valid: Array,
    out_size: tuple[int, int],
    *,
    stride: int = 4,
    photometric: PhotometricParams | None = PhotometricParams(),
    max_zoom: float = 1.5,
    rotate: bool = True,
    flip: bool = True,
    rotate_flow_vectors: bool = False,
    grid_offset: float | None = None,
    valid_radius: int = DEFAULT_VALID_RADIUS,
) -> dict[str, Array]:
    """The two Laparoflow-SSL views of a batch and their correspondences (Eqs. 2–4, App. B.2).

    P is applied to the input frame before resampling (Eq. 2: G1(P1(x))), then view 1 and
    view 2 are each sampled from it once. Per example (independent draws, batched with
    ``vmap``): P1, P2 ~ ``photometric``;
    G1 ~ :func:`sample_g1`; G2 ~ :func:`sample_g2`. The function is ``jax.jit``-compiled;
    all arguments after ``valid`` are static (hashable Python values: ``out_size`` a tuple),
    and it can be called inside other jitted/vmapped functions.

    Args:
      key: PRNG key.
      image: float (B, H, W, 3) RGB in [0, 1].
      flow: float (B, H, W, 2) optical flow (dx, dy) in pixels, frame t → t+1.
      valid: (B, H, W) bool (or 0/1): pixels allowed in the loss (flow valid, inside the
        endoscope's field of view).
      out_size: (h, w) of both views in pixels (paper: 256 × 256).
      stride: representation stride (SegFormer: 4); the grid is (ceil(h/s), ceil(w/s)).
      photometric: the ranges of P, or None for no photometric change (P = identity).
      max_zoom: largest zoom of a crop (paper: 1.5, "up to 150 % zoom").
      rotate, flip: enable the random rotation and horizontal flip.
      rotate_flow_vectors: map flow vectors into view-1 coordinates with G1's forward
        linear part (rotation, flip and zoom: v_view = A1[:, :2]⁻¹ · v). Off by default: the
        paper keeps the vectors (only their relative differences matter).
      grid_offset: representation-pixel centre offset in pixels (default
        ``view_geometry.RECEPTIVE_OFFSET`` = 0: cell i centred on pixel stride·i; see there).
      valid_radius: support radius r ≥ 0 (pixels, Chebyshev) over which a representation
        pixel's validity is judged (:func:`cell_validity`; default 3).

    Returns:
      dict of
      - ``view1`` float32 (B, h, w, 3) = G1(P1(x)), 0 in rotation holes;
      - ``view2`` float32 (B, h, w, 3) = G2(G1(P2(x))), sampled once through affine12;
      - ``valid1`` bool (B, h, w) = G1(valid) (nearest) ∧ inside the input;
      - ``valid2`` bool (B, h, w) = (G1∘G2)(valid) ∧ inside, the same on view 2;
      - ``flow1`` float32 (B, h, w, 2) = G1(flow) (bilinear), 0 outside the input;
      - ``grid2to1`` float32 (B, hr, wr, 2): (x, y) of each view-2 representation pixel's
        receptive centre in view-1 REPRESENTATION pixels (z3 = sample_bilinear(z1,
        grid2to1)); with the default offset 0 every centre lies in view 2, hence in view 1
        (with another offset a centre past view 2's edge may map outside view 1:
        ``valid3`` is False there);
      - ``flow3`` float32 (B, hr, wr, 2): flow1 bilinearly sampled at those centres (in view-1
        image pixels), i.e. the flow of the physical points that z3 describes;
      - ``valid_rep1``, ``valid_rep2`` bool (B, hr, wr): :func:`cell_validity` of each
        view's own representation pixels (receptive centre and support in valid1 / valid2);
      - ``valid3`` bool (B, hr, wr): the view-2 representation pixel is valid
        (``valid_rep2``), every view-1 representation pixel that z3's bilinear sample reads
        is valid (``valid_rep1``), and the point is inside view 1 (true by construction of G2);
      - ``flow_rep1`` float32 (B, hr, wr, 2): flow1 at view 1's own receptive centres (the
        flow of z1's pixels, for s^(1,1) of App. C.1);
      - ``coords3`` float32 (hr·wr, 2): the view-2 representation pixels' centres in view-2
        IMAGE pixels, (x, y), row-major (for the radius of App. C.2);
      - ``affine1`` (B, 2, 3) view 1 → input, ``affine2`` (B, 2, 3) view 2 → view 1,
        ``affine12`` (B, 2, 3) view 2 → input (``view_geometry``'s convention).

    Raises:
      ValueError: bad shapes/dtypes of image, flow or valid, bad out_size, stride < 1,
        max_zoom < 1, |grid_offset| ≥ stride or a negative valid_radius.
    """
    image = jnp.asarray(image)
    flow = jnp.asarray(flow)
    valid = jnp.asarray(valid)
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be (B, H, W, 3) RGB, got shape {image.shape}")
    if not jnp.issubdtype(image.dtype, jnp.floating):
        raise ValueError(f"image must be floating point in [0, 1], got dtype {image.dtype} (convert uint8 with /255)")
    b, hh, ww, _ = image.shape
    if flow.shape != (b, hh, ww, 2):
        raise ValueError(f"flow must be (B, H, W, 2) = {(b, hh, ww, 2)} (dx, dy) pixels, got shape {flow.shape}")
    if valid.shape != (b, hh, ww):
        raise ValueError(f"valid must be (B, H, W) = {(b, hh, ww)}, got shape {valid.shape}")
    h, w = _check_size(out_size, "out_size")
    if not (isinstance(stride, (int, np.integer)) and stride >= 1):
        raise ValueError(f"stride must be a positive int (representation grid stride in pixels), got {stride!r}")
    if not max_zoom >= 1.0:
        raise ValueError(f"max_zoom must be >= 1 (1.5 = crops up to 150 % zoom), got {max_zoom}")
    if grid_offset is not None and not (math.isfinite(float(grid_offset)) and abs(float(grid_offset)) < stride):
        raise ValueError(f"grid_offset must be None or a number of pixels in (-stride, stride) = (-{stride}, {stride}), got {grid_offset!r}")
    if not (isinstance(valid_radius, (int, np.integer)) and valid_radius >= 0):
        raise ValueError(f"valid_radius must be an int >= 0 (pixels around a representation pixel's centre), got {valid_radius!r}")
    if photometric is not None and not isinstance(photometric, PhotometricParams):
        raise ValueError(f"photometric must be a PhotometricParams or None, got {type(photometric).__name__}")

    image = image.astype(jnp.float32)
    flow = flow.astype(jnp.float32)
    valid = valid.astype(bool)
    # One PRNG call for the whole batch: per example 2 × 4 photometric + 2 × 5 geometric uniforms.
    u = jax.random.uniform(key, (b, 8 + 2 * _G_UNIFORMS), jnp.float32)
    affine1 = jax.vmap(lambda v: _g1_from_uniform(v, (hh, ww), (h, w), max_zoom, rotate, flip))(u[:, 8:13])
    affine2 = jax.vmap(lambda v: _g2_from_uniform(v, (h, w), max_zoom, rotate, flip))(u[:, 13:18])
    affine12 = compose_affine(affine1, affine2)

    if photometric is None:
        x1 = x2 = image
    else:
        x1 = apply_photometric(image, _photometric_from_uniform(u[:, 0:4], photometric))
        x2 = apply_photometric(image, _photometric_from_uniform(u[:, 4:8], photometric))

    grid = pixel_grid((h, w))
    coords1 = apply_affine(affine1, grid)
    coords12 = apply_affine(affine12, grid)
    view1, inside1 = sample_bilinear(x1, coords1)
    view2, inside12 = sample_bilinear(x2, coords12)
    flow1, _ = sample_bilinear(flow, coords1)
    if rotate_flow_vectors:
        flow1 = jnp.einsum("bij,bhwj->bhwi", jnp.linalg.inv(affine1[:, :, :2]), flow1)
    valid1, _ = sample_nearest(valid[..., None], coords1)
    valid2, _ = sample_nearest(valid[..., None], coords12)
    valid1 = valid1[..., 0] & inside1
    valid2 = valid2[..., 0] & inside12
    view1 = jnp.where(inside1[..., None], view1, 0.0)
    view2 = jnp.where(inside12[..., None], view2, 0.0)
    flow1 = jnp.where(inside1[..., None], flow1, 0.0)

    rep = representation_grid((h, w), stride, grid_offset)
    valid_rep1 = cell_validity(valid1, rep, valid_radius)
    valid_rep2 = cell_validity(valid2, rep, valid_radius)
    flow_rep1, _ = sample_bilinear(flow1, jnp.broadcast_to(rep, (b,) + rep.shape))
    grid2to1, points1 = representation_map(affine2, (h, w), stride, grid_offset)
    flow3, inside3 = sample_bilinear(flow1, points1)
    # z3 reads up to four view-1 representation pixels: each must be valid (weight 1 − 1e-4 tolerance).
    read_valid, _ = sample_bilinear(valid_rep1.astype(jnp.float32)[..., None], grid2to1)
    valid3 = valid_rep2 & (read_valid[..., 0] > 1.0 - 1e-4) & inside3
    coords3 = rep.reshape(-1, 2)
    return dict(
        view1=view1, view2=view2, valid1=valid1, valid2=valid2, flow1=flow1, grid2to1=grid2to1,
        flow3=flow3, valid3=valid3, valid_rep1=valid_rep1, valid_rep2=valid_rep2, flow_rep1=flow_rep1,
        coords3=coords3, affine1=affine1, affine2=affine2, affine12=affine12,
    )
