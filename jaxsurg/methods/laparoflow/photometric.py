"""The photometric transform P of Laparoflow-SSL's views (Moens et al. 2024, Eq. (2)–(3),
App. B.2): a random brightness shift, contrast factor, saturation factor and hue shift,
applied to the frame before the geometric transforms of ``views``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxsurg.ops import color

Array = jax.Array

__all__ = ["PhotometricParams", "sample_photometric", "apply_photometric"]


@dataclasses.dataclass(frozen=True)
class PhotometricParams:
    """Ranges of the photometric transform P (Moens et al. 2024, App. B.2; paper defaults).

    Attributes:
      brightness: maximum absolute brightness shift, in [0, 1] image units; the shift is
        U[−brightness, brightness] added to R, G and B (paper: ±64 of 255).
      contrast: (lo, hi) range of the factor multiplying R, G and B (paper: [0.25, 1.75]).
      saturation: (lo, hi) range of the factor multiplying S in HSV (paper: [0.25, 1.75]).
      hue_degrees: maximum absolute hue shift in degrees; the shift is U[−hue, hue] added to
        H (paper: ±24°).

    Raises:
      ValueError: negative ``brightness``/``hue_degrees``, or a range with lo > hi or lo < 0.
    """

    brightness: float = 64.0 / 255.0
    contrast: tuple[float, float] = (0.25, 1.75)
    saturation: tuple[float, float] = (0.25, 1.75)
    hue_degrees: float = 24.0

    def __post_init__(self):
        if not self.brightness >= 0:
            raise ValueError(f"PhotometricParams.brightness must be >= 0 (a maximum |shift| in [0, 1] units), got {self.brightness}")
        if not self.hue_degrees >= 0:
            raise ValueError(f"PhotometricParams.hue_degrees must be >= 0 (a maximum |shift| in degrees), got {self.hue_degrees}")
        for name in ("contrast", "saturation"):
            rng = getattr(self, name)
            if len(rng) != 2 or not 0 <= rng[0] <= rng[1]:
                raise ValueError(f"PhotometricParams.{name} must be a (lo, hi) pair with 0 <= lo <= hi, got {rng}")
            object.__setattr__(self, name, (float(rng[0]), float(rng[1])))

    @classmethod
    def identity(cls) -> PhotometricParams:
        """Parameters for which P is the identity (up to the HSV round trip, ~1e-6)."""
        return cls(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue_degrees=0.0)


def sample_photometric(key: Array, params: PhotometricParams) -> Array:
    """Draws one photometric transform.

    Args:
      key: PRNG key.
      params: the ranges.

    Returns:
      float32 (4,): (brightness shift in [0, 1] units, contrast factor, saturation factor,
      hue shift in turns = degrees / 360), each uniform in its range.
    """
    return _photometric_from_uniform(jax.random.uniform(key, (4,), jnp.float32), params)


def _photometric_from_uniform(u: Array, params: PhotometricParams) -> Array:
    lo = jnp.asarray([-params.brightness, params.contrast[0], params.saturation[0], -params.hue_degrees / 360.0], jnp.float32)
    hi = jnp.asarray([params.brightness, params.contrast[1], params.saturation[1], params.hue_degrees / 360.0], jnp.float32)
    return lo + (hi - lo) * u


def apply_photometric(image: Array, factors: Array) -> Array:
    """Applies P (App. B.2) in the paper's order, clipping to [0, 1] after each step.

    x ← clip(x + brightness); x ← clip(x · contrast) (R, G, B multiplied, not scaled about
    the mean: "multiplying RGB values by a random number"); in HSV: S ← clip(S · saturation),
    H ← H + hue (mod 1); back to RGB.

    Args:
      image: float32 (..., H, W, 3) RGB in [0, 1].
      factors: float32 (..., 4) from :func:`sample_photometric`, leading shape = image's.

    Returns:
      float32 (..., H, W, 3) in [0, 1].
    """
    f = jnp.asarray(factors, jnp.float32)[..., None, None, :]
    x = jnp.clip(image + f[..., 0:1], 0.0, 1.0)
    x = jnp.clip(x * f[..., 1:2], 0.0, 1.0)
    hsv = color.rgb_to_hsv(x)
    hsv = jnp.stack(
        [hsv[..., 0] + f[..., 3], jnp.clip(hsv[..., 1] * f[..., 2], 0.0, 1.0), hsv[..., 2]], axis=-1
    )
    return jnp.clip(color.hsv_to_rgb(hsv), 0.0, 1.0)
