"""Colour-space conversions RGB ↔ HSV and sRGB ↔ CIE L*a*b* (D65), pure ``jax.numpy``.

Every function takes an array of any leading shape ``(..., 3)`` (the last axis is the colour
triplet), works under ``jit``/``vmap``/``grad`` and returns float32 (or the input's floating
dtype) of the same shape. Gradients are finite everywhere, including at black, white and
grey pixels (where hue is undefined; its gradient there is set to 0).

Conventions:
- RGB: floats in [0, 1] (8-bit values divided by 255), channel order R, G, B.
- HSV: H in [0, 1) as a FRACTION OF A TURN (H·360 = degrees; red 0, yellow 1/6, green 1/3,
  cyan 1/2, blue 2/3, magenta 5/6); S and V in [0, 1]. This is Python's ``colorsys``
  convention (OpenCV's float HSV gives H in degrees: ``H_cv = 360·H``).
- Lab: CIE 1976 L*a*b* of sRGB (IEC 61966-2-1 transfer curve) under illuminant D65 (2°
  observer), L* in [0, 100], a*, b* roughly in [−128, 127]. The RGB→XYZ matrix is the one
  of OpenCV / scikit-image; the reference white is that matrix applied to RGB (1, 1, 1) so
  that sRGB white maps exactly to (100, 0, 0) (as OpenCV).

Sources: HSV — A. R. Smith, "Color gamut transform pairs", SIGGRAPH 1978 (the hexcone
model). Lab — CIE 15:2004 (Colorimetry), §8.2.1 (Eqs. 8.3–8.7); sRGB — IEC 61966-2-1:1999.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "rgb_to_hsv",
    "hsv_to_rgb",
    "rgb_to_lab",
    "lab_to_rgb",
    "srgb_to_linear",
    "linear_to_srgb",
    "XYZ_FROM_RGB",
    "RGB_FROM_XYZ",
    "D65_WHITE",
]

# Linear sRGB → CIE XYZ (D65), as in OpenCV (``sRGB2XYZ_D65``) and scikit-image.
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float64,
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
# Reference white (Xn, Yn, Zn) = XYZ of RGB (1, 1, 1) ≈ (0.950456, 1.0, 1.088754), OpenCV's.
D65_WHITE = XYZ_FROM_RGB.sum(axis=1)

_EPS = 1e-12
_DELTA = 6.0 / 29.0  # CIE: f(t) = t^(1/3) above δ³, linear below.


def _check_triplets(x: Array, name: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3) (a colour triplet on the last axis), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _safe_div(num: Array, den: Array, ok: Array) -> Array:
    """num / den where ``ok``, 0 elsewhere, with finite gradients on both branches."""
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def rgb_to_hsv(rgb: Array) -> Array:
    """RGB → HSV (hexcone model, Smith 1978; identical to Python's ``colorsys.rgb_to_hsv``).

    Args:
      rgb: float (..., 3), R, G, B in [0, 1].

    Returns:
      float (..., 3): H in [0, 1) (fraction of a turn; 0 for greys), S = (max − min)/max in
      [0, 1] (0 for black), V = max in [0, 1].

    Raises:
      ValueError: if the last axis of ``rgb`` is not 3.
    """
    rgb = _check_triplets(rgb, "rgb")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    mn = jnp.min(rgb, axis=-1)
    delta = v - mn
    s = _safe_div(delta, v, v > 0)
    chroma = delta > 0
    rc = _safe_div(v - r, delta, chroma)
    gc = _safe_div(v - g, delta, chroma)
    bc = _safe_div(v - b, delta, chroma)
    # Sextant by which channel is the maximum (ties resolved R, then G, as colorsys).
    h = jnp.where(r == v, bc - gc, jnp.where(g == v, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(chroma, jnp.mod(h / 6.0, 1.0), 0.0)
    # mod can return exactly 1.0 for tiny negative inputs in float32; fold to 0.
    h = jnp.where(h >= 1.0, 0.0, h)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: Array) -> Array:
    """HSV → RGB, the exact inverse of :func:`rgb_to_hsv` (Smith 1978).

    Uses the closed form c_n = V − V·S·clip(min(k, 4 − k), 0, 1), k = (n + 6H) mod 6 with
    n = 5, 3, 1 for R, G, B, which is piecewise linear in H and has finite gradients.

    Args:
      hsv: float (..., 3); H in turns (any real value, taken modulo 1), S and V in [0, 1].

    Returns:
      float (..., 3) RGB in [0, 1] for S, V in [0, 1].

    Raises:
      ValueError: if the last axis of ``hsv`` is not 3.
    """
    hsv = _check_triplets(hsv, "hsv")
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    n = jnp.asarray([5.0, 3.0, 1.0], hsv.dtype)
    k = jnp.mod(n + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def srgb_to_linear(c: Array) -> Array:
    """sRGB transfer curve inverse (IEC 61966-2-1): gamma-encoded [0, 1] → linear [0, 1].

    Elementwise on any shape: c/12.92 for c ≤ 0.04045, else ((c + 0.055)/1.055)^2.4.
    """
    c = jnp.asarray(c)
    hi = c > 0.04045
    c_hi = jnp.where(hi, c, 1.0)
    return jnp.where(hi, ((c_hi + 0.055) / 1.055) ** 2.4, c / 12.92)


def linear_to_srgb(c: Array) -> Array:
    """sRGB transfer curve (IEC 61966-2-1): linear [0, 1] → gamma-encoded [0, 1].

    Elementwise on any shape: 12.92·c for c ≤ 0.0031308, else 1.055·c^(1/2.4) − 0.055.
    """
    c = jnp.asarray(c)
    hi = c > 0.0031308
    c_hi = jnp.where(hi, c, 1.0)
    return jnp.where(hi, 1.055 * c_hi ** (1.0 / 2.4) - 0.055, 12.92 * c)


def _lab_f(t: Array) -> Array:
    hi = t > _DELTA**3
    t_hi = jnp.where(hi, t, 1.0)
    return jnp.where(hi, jnp.cbrt(t_hi), t / (3.0 * _DELTA**2) + 4.0 / 29.0)


def _lab_f_inv(f: Array) -> Array:
    return jnp.where(f > _DELTA, f**3, 3.0 * _DELTA**2 * (f - 4.0 / 29.0))


def rgb_to_lab(rgb: Array) -> Array:
    """sRGB → CIE L*a*b* (D65) (CIE 15:2004 Eqs. 8.3–8.5 after the sRGB decoding).

    L* = 116 f(Y/Yn) − 16, a* = 500 (f(X/Xn) − f(Y/Yn)), b* = 200 (f(Y/Yn) − f(Z/Zn)),
    f(t) = t^(1/3) for t > (6/29)³, else t/(3·(6/29)²) + 4/29; (X, Y, Z) = M · linear(rgb).

    Args:
      rgb: float (..., 3), gamma-encoded sRGB in [0, 1].

    Returns:
      float (..., 3): L* in [0, 100], a*, b* (about [−86, 98] and [−108, 94] over the sRGB
      gamut). Agrees with OpenCV's float32 ``cv2.COLOR_RGB2Lab`` to ~0.01.

    Raises:
      ValueError: if the last axis of ``rgb`` is not 3.
    """
    rgb = _check_triplets(rgb, "rgb")
    lin = srgb_to_linear(rgb)
    m = jnp.asarray(XYZ_FROM_RGB / D65_WHITE[:, None], rgb.dtype)  # rows scaled by 1/white
    xyz_n = lin @ m.T
    f = _lab_f(xyz_n)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: Array, *, clip: bool = False) -> Array:
    """CIE L*a*b* (D65) → sRGB, the inverse of :func:`rgb_to_lab` (CIE 15:2004 §8.2.1).

    Args:
      lab: float (..., 3), L* in [0, 100], a*, b* unbounded.
      clip: clip the result to [0, 1]. Lab colours outside the sRGB gamut give values
        outside [0, 1] otherwise (never NaN: negative linear values take the linear branch
        of the sRGB curve).

    Returns:
      float (..., 3) gamma-encoded sRGB.

    Raises:
      ValueError: if the last axis of ``lab`` is not 3.
    """
    lab = _check_triplets(lab, "lab")
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    xyz_n = _lab_f_inv(jnp.stack([fx, fy, fz], axis=-1))
    m = jnp.asarray(RGB_FROM_XYZ * D65_WHITE[None, :], lab.dtype)  # columns scaled by white
    rgb = linear_to_srgb(xyz_n @ m.T)
    return jnp.clip(rgb, 0.0, 1.0) if clip else rgb
