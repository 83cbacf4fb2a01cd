"""The geometry of Laparoflow-SSL's views (Moens et al. 2024, §2.2, Eq. 4): 2×3 affines
between view and frame pixels, pixel and representation grids, sampling with the views'
pixel-area ``inside`` mask, and which representation cells may enter the loss. The random
views themselves are drawn in ``views.py``.

Coordinate conventions (used by every function here and in ``views.py``):
- Image pixel (row i, column j) has its CENTRE at (x, y) = (j, i); a point (x, y) is a
  float pair in that frame, last axis ordered (x, y). The image AREA is
  [−0.5, W − 0.5] × [−0.5, H − 0.5]; a sample is ``inside`` when it falls in that area
  (1e-3 px tolerance) and bilinear sampling replicates the edge pixels within it.
- A geometric transform is a 2×3 affine ``A`` mapping OUTPUT pixel coordinates to INPUT
  pixel coordinates: (x_in, y_in) = A[:, :2] @ (x_out, y_out) + A[:, 2]. Applying it is
  bilinear (images, flow) or nearest (masks) sampling of the input at those coordinates.
  ``affine12 = compose_affine(affine1, affine2)`` maps view-2 pixels straight to the input,
  so view 2 is resampled from the raw frame once, not twice.
- Angles: a view with angle θ shows the content rotated by θ counter-clockwise on screen
  (y axis pointing down); θ = 90° is ``jnp.rot90(image, 1, axes=(-3, -2))`` of a square
  frame. The flip mirrors the finished (rotated) view horizontally: with both, the view is
  ``jnp.rot90(image, 1, axes=(-3, -2))[..., :, ::-1, :]``.
- Representation grid of stride s (s = 4 for SegFormer): representation pixel (i, j) is
  centred at image point (s·j + o, s·i + o), o = ``grid_offset`` = ``RECEPTIVE_OFFSET`` = 0
  by default: its RECEPTIVE CENTRE, where the backbone's output cell is centred in the input.
  Representation coordinate r and image coordinate p relate by p = s·r + o; the grid has
  (ceil(h/s), ceil(w/s)) pixels, and with o = 0 every centre lies in the image.
  Why 0: SegFormer's first layer (k7/s4/p3 conv) centres output i on input pixel 4i (taps
  4i − 3 … 4i + 3), and its decoder fuses that c1 map unresampled; the coarser stages (c2,
  c3, c4, on grids centred at 8i, 16i, 32i) are upsampled to the 1/4 grid with the
  half-pixel ("align_corners=False") bilinear of Hugging Face's SegFormer, which lands them
  at 4i − 2, 4i − 6 and 4i − 14: broad tails of sensitivity towards the top-left, no shift
  of the core. Measured on the backbone itself (|∂(u·z[i, j])/∂x| summed over colours,
  interior cells of a 64×64 input, random inits; ``tests/methods/laparoflow/test_view_geometry.py::
  test_representation_grid_is_centred_where_the_backbone_is_sensitive``): the sensitivity
  centroid within ±4 px of 4i lies at 4i − 0.1; within ±4 px of 4i + 1.5 it lies at 4i + 0.65
  (pulled back by 0.85 px); the unwindowed first moment lies at 4i − 4 (64×64; 4i − 10.6 at
  128×128: the far field, which depends on the frame size). No measure supports the
  half-pixel convention o = (s − 1)/2 = 1.5 used before, which put the weight-4 cross-view
  counterpart 2.4 px (up to 4.2 px, by the rotation of G2) off the cell that sees the same
  content. ``grid_offset`` stays an argument (``config.pretrain.grid_offset``).
- Validity of a representation pixel (``cell_validity``): judged at its receptive centre and
  its support, the pixels within ``valid_radius`` (Chebyshev, default 3 = the taps of the
  first 7×7 conv) of the centre: a cell whose support touches a rotation hole or the outside
  of the endoscope's field of view has seen invalid pixels and is left out, even where a
  point sampled near it is valid. Support pixels beyond the view's own border are not
  counted against it (the border of a view is no hole).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxsurg.ops import warp

Array = jax.Array

__all__ = [
    "RECEPTIVE_OFFSET",
    "DEFAULT_VALID_RADIUS",
    "view_affine",
    "compose_affine",
    "invert_affine",
    "apply_affine",
    "pixel_grid",
    "representation_grid",
    "representation_map",
    "cell_validity",
    "sample_bilinear",
    "sample_nearest",
]

_INSIDE_TOL = 1e-3  # pixels
RECEPTIVE_OFFSET = 0.0  # px: SegFormer's representation cell i is centred on input pixel 4i (module docstring)
DEFAULT_VALID_RADIUS = 3  # px: a cell's support, the taps of SegFormer's first 7×7 conv around its centre


# ------------------------------------------------------------------------------ affine algebra
def view_affine(angle_degrees, scale, flip, centre, out_size: tuple[int, int]) -> Array:
    """The 2×3 output→input affine of a flipped, rotated, scaled view centred at ``centre``.

    (x_in, y_in) = centre + scale · R(θ) · F · ((x_out, y_out) − c_out), where c_out =
    ((w − 1)/2, (h − 1)/2) is the view's centre, F = diag(−1, 1) if ``flip`` else I and
    R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]] (content turns θ counter-clockwise on screen).

    Args:
      angle_degrees: scalar rotation θ in degrees.
      scale: scalar, input pixels per output pixel (= base scale / zoom).
      flip: scalar bool, horizontal flip of the view.
      centre: (2,) (x, y) input-pixel coordinates the view's centre maps to.
      out_size: (h, w) of the view, pixels.

    Returns:
      float32 (2, 3).
    """
    h, w = out_size
    theta = jnp.deg2rad(jnp.asarray(angle_degrees, jnp.float32))
    c, s = jnp.cos(theta), jnp.sin(theta)
    fx = jnp.where(jnp.asarray(flip), -1.0, 1.0)
    lin = jnp.asarray(scale, jnp.float32) * jnp.stack([jnp.stack([c * fx, -s]), jnp.stack([s * fx, c])])
    c_out = jnp.asarray([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32)
    t = jnp.asarray(centre, jnp.float32) - lin @ c_out
    return jnp.concatenate([lin, t[:, None]], axis=1)


def compose_affine(outer: Array, inner: Array) -> Array:
    """Affine of p ↦ outer(inner(p)). Shapes (..., 2, 3) broadcast; returns (..., 2, 3).

    With ``affine1`` (view 1 → input) and ``affine2`` (view 2 → view 1),
    ``compose_affine(affine1, affine2)`` maps view 2 → input.
    """
    lin = outer[..., :2] @ inner[..., :2]
    t = (outer[..., :2] @ inner[..., 2:])[..., 0] + outer[..., 2]
    return jnp.concatenate([lin, t[..., None]], axis=-1)


def invert_affine(affine: Array) -> Array:
    """Inverse map of an invertible affine, (..., 2, 3) → (..., 2, 3)."""
    inv = jnp.linalg.inv(affine[..., :2])
    t = -(inv @ affine[..., 2:])[..., 0]
    return jnp.concatenate([inv, t[..., None]], axis=-1)


def apply_affine(affine: Array, points: Array) -> Array:
    """Maps points shared by the batch through each example's affine.

    Args:
      affine: float (B, 2, 3).
      points: float (..., 2), (x, y).

    Returns:
      float32 (B, ..., 2). (For per-example points, ``jax.vmap`` over a (1, 2, 3) affine.)
    """
    affine = jnp.asarray(affine, jnp.float32)
    points = jnp.asarray(points, jnp.float32)
    out = jnp.einsum("bij,nj->bni", affine[:, :, :2], points.reshape(-1, 2)) + affine[:, None, :, 2]
    return out.reshape(affine.shape[0], *points.shape)


def pixel_grid(size: tuple[int, int]) -> Array:
    """Pixel-centre coordinates of an (h, w) image: float32 (h, w, 2), [i, j] = (j, i)."""
    h, w = size
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    return jnp.stack([xx, yy], axis=-1)


def representation_grid(size: tuple[int, int], stride: int, grid_offset: float | None = None) -> Array:
    """Image-pixel coordinates of the centres of the representation grid of an (h, w) image.

    Returns float32 (ceil(h/stride), ceil(w/stride), 2): [i, j] = (stride·j + o, stride·i + o),
    o = ``grid_offset`` in pixels (default ``RECEPTIVE_OFFSET`` = 0, the backbone's receptive
    centres; see the module docstring).
    """
    h, w = size
    o = RECEPTIVE_OFFSET if grid_offset is None else float(grid_offset)
    return pixel_grid((math.ceil(h / stride), math.ceil(w / stride))) * stride + o


def representation_map(
    affine2: Array, out_size: tuple[int, int], stride: int, grid_offset: float | None = None
) -> tuple[Array, Array]:
    """Where view 2's representation pixels lie in view 1 (Eq. 4's G2 on the feature grid).

    Args:
      affine2: float32 (B, 2, 3), view-2 pixels → view-1 pixels (both (h, w) = out_size).
      out_size: (h, w).
      stride: representation stride.
      grid_offset: see :func:`representation_grid`.

    Returns:
      (grid2to1, points1): float32 (B, hr, wr, 2) each — the (x, y) coordinates of each
      view-2 representation-pixel centre in view-1 REPRESENTATION pixels, and in view-1
      IMAGE pixels.
    """
    o = RECEPTIVE_OFFSET if grid_offset is None else float(grid_offset)
    rep = representation_grid(out_size, stride, o)
    points1 = apply_affine(affine2, rep)
    return (points1 - o) / stride, points1


# ------------------------------------------------------------------------------ sampling
# The sampling itself is jaxsurg.ops.warp's (one implementation, 'clamp' border). What is
# specific to the views is the ``inside`` mask: a point is inside when it lies in the image
# AREA [−0.5, W − 0.5] × [−0.5, H − 0.5] (every pixel's full square), whereas
# ``warp.backward_warp``'s mask is the narrower [0, W − 1] × [0, H − 1] between the outer
# pixel centres. The area definition is the one the views need: a rotated crop touching the
# frame's border still shows real (edge-replicated within half a pixel) content.


def _inside_area(coords: Array, height: int, width: int) -> Array:
    x, y = coords[..., 0], coords[..., 1]
    lo = -0.5 - _INSIDE_TOL
    return (x >= lo) & (x <= width - 0.5 + _INSIDE_TOL) & (y >= lo) & (y <= height - 0.5 + _INSIDE_TOL)


def sample_bilinear(src: Array, coords: Array) -> tuple[Array, Array]:
    """Bilinear sampling of ``src`` at float pixel coordinates (pixel centres at integers),
    with the views' pixel-AREA ``inside`` mask.

    ``warp.sample_bilinear(src, coords, border='clamp')`` plus :func:`_inside_area`.

    Args:
      src: (B, H, W, C) float.
      coords: (B, h, w, 2) float, (x, y) in src pixels.

    Returns:
      (out, inside): out (B, h, w, C) in src's dtype — edge pixels are replicated within
      and beyond the border (values outside the image are the clamped edge; mask them with
      ``inside``); inside bool (B, h, w), True where the point is in the image area
      [−0.5, W − 0.5] × [−0.5, H − 0.5] (1e-3 px tolerance). Differentiable in ``src`` and
      ``coords``.

    Raises:
      ValueError: on shapes other than the above.
    """
    src = jnp.asarray(src)
    coords = jnp.asarray(coords, jnp.float32)
    out = warp.sample_bilinear(src, coords, border="clamp")
    return out.astype(src.dtype), _inside_area(coords, src.shape[1], src.shape[2])


def sample_nearest(src: Array, coords: Array) -> tuple[Array, Array]:
    """Nearest-neighbour sampling (for masks and label maps); same contract as
    :func:`sample_bilinear`, any dtype. Ties (x.5) go to the right/lower pixel."""
    src = jnp.asarray(src)
    coords = jnp.asarray(coords, jnp.float32)
    out = warp.sample_nearest(src, coords, border="clamp")
    return out, _inside_area(coords, src.shape[1], src.shape[2])


def cell_validity(valid: Array, centres: Array, radius: int = DEFAULT_VALID_RADIUS) -> Array:
    """Which representation pixels may enter the loss: those whose receptive centre and whole
    support are valid (module docstring).

    A cell is valid when ``valid`` holds at the pixel nearest to its centre (ties to the
    right/lower pixel, as :func:`sample_nearest`) and at every pixel within Chebyshev distance
    ``radius`` of that pixel that lies in the image; support pixels beyond the image's border
    do not count against it. A centre outside the image area makes the cell invalid. Computed
    as a (2r+1)×(2r+1) erosion of ``valid`` (``lax.reduce_window`` min, padded with True)
    read at the centres.

    Args:
      valid: bool (or 0/1) (B, H, W), the pixels allowed in the loss.
      centres: float (hr, wr, 2) shared by the batch, or (B, hr, wr, 2): (x, y) image pixels
        of the cells' receptive centres (:func:`representation_grid`).
      radius: r ≥ 0 in pixels (static); 0 judges the centre pixel alone.

    Returns:
      bool (B, hr, wr).

    Raises:
      ValueError: ``valid`` not (B, H, W), ``centres`` not (..., 2), or a negative radius.
    """
    valid = jnp.asarray(valid)
    if valid.ndim != 3:
        raise ValueError(f"valid must be (B, H, W), got shape {valid.shape}")
    centres = jnp.asarray(centres, jnp.float32)
    if centres.ndim not in (3, 4) or centres.shape[-1] != 2:
        raise ValueError(f"centres must be (hr, wr, 2) or (B, hr, wr, 2) (x, y) pixels, got shape {centres.shape}")
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0 pixels, got {radius}")
    b = valid.shape[0]
    mask = valid.astype(jnp.int32)
    if r > 0:
        k = 2 * r + 1
        mask = jax.lax.reduce_window(mask, 1, jax.lax.min, (1, k, k), (1, 1, 1), ((0, 0), (r, r), (r, r)))
    centres = jnp.broadcast_to(centres, (b,) + centres.shape[-3:])
    out, inside = sample_nearest(mask[..., None], centres)
    return (out[..., 0] > 0) & inside
