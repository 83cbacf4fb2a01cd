"""The 5-stage U-Net of Super SloMo and the Dual Motion Flow flow compensator built on it
(Sec. 2.2: the network that refines the flows of Eq. (4); its training is ``compensator``).

Sources:
  - Jiang et al., "Super SloMo: High Quality Estimation of Multiple Intermediate Frames for
    Video Interpolation" (CVPR 2018), Sec. 3 and its public ``UNet`` (conv7 32, conv7 32,
    five stages of avg-pool + two convs, five stages of bilinear up + two convs, LeakyReLU 0.1).
  - Zhao et al., "Learning Motion Flows for Semi-supervised Instrument Segmentation from
    Robotic Surgical Video" (Dual Motion Flow, MICCAI 2020), Sec. 2.2: the flow compensator
    refines the intermediate-flow approximations of Eq. (4) with a 5-stage U-Net that sees the
    two frames, the four approximations and the four warped frames of Eq. (5).

Everything is NHWC; flows are ``(dx, dy)`` in pixels (DESIGN.md). Parameters are float32 and
cast to ``dtype`` at use; initialisation is PyTorch's default (``torch_uniform_init``), so a
PyTorch ``state_dict`` of the same layout converts by transposing each conv weight
(Cout, Cin, k, k) → (k, k, Cin, Cout) (see ``UNet5``'s parameter names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.layers import Conv2d
from jaxsurg.ops.resize import upsample_bilinear_2x

Array = jax.Array

LEAKY_SLOPE = 0.1

# Channel order of the compensator (Dual Motion Flow, Eqs. (4)–(5)), i ∈ (0, 1) the
# intermediate time. Flows: F_{i→0}, F_{i→1}, F_{0→i}, F_{1→i}. Warped frames:
# Î_i0 = T(I0, F_{0→i}), Î_1 = T(Î_i0, F_{i→1}) (forward predicted), Î_i1 = T(Î_1, F_{1→i}),
# Î_0 = T(Î_i1, F_{i→0}) (backward reconstructed).
FLOW_KEYS: tuple[str, ...] = ("i_to_0", "i_to_1", "0_to_i", "1_to_i")
WARPED_KEYS: tuple[str, ...] = ("forward_i", "forward_1", "backward_i", "backward_0")


def avg_pool_2x2(x: Array) -> Array:
    """2×2 average pooling, stride 2 (``F.avg_pool2d(x, 2)``): (N, H, W, C) → (N, H/2, W/2, C).

    H and W must be even (callers check).
    """
    n, h, w, c = x.shape
    return jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _leaky(x: Array) -> Array:
    return nn.leaky_relu(x, LEAKY_SLOPE)


class _Down(nn.Module):
    """Super SloMo ``down``: avg-pool 2×2, then two k×k convs, each + LeakyReLU(0.1)."""

    features: int
    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = avg_pool_2x2(x)
        x = _leaky(Conv2d(self.features, self.kernel_size, dtype=self.dtype, name="conv1")(x))
        return _leaky(Conv2d(self.features, self.kernel_size, dtype=self.dtype, name="conv2")(x))


class _Up(nn.Module):
    """Super SloMo ``up``: bilinear ×2, conv3×3 + LeakyReLU, concat the skip, conv3×3 + LeakyReLU."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, skip: Array) -> Array:
        x = upsample_bilinear_2x(x)
        x = _leaky(Conv2d(self.features, 3, dtype=self.dtype, name="conv1")(x))
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
        return _leaky(Conv2d(self.features, 3, dtype=self.dtype, name="conv2")(x))


class UNet5(nn.Module):
    """Super SloMo's 5-stage U-Net (the network of Dual Motion Flow's flow compensator), NHWC.

    ``apply({'params': p}, x)``: x float (B, H, W, Cin), H and W multiples of 32 →
    (B, H, W, out_channels) float32. No input normalisation is applied.

    Architecture (b = base_features, 32 in the papers; every conv 'same', LeakyReLU 0.1):

        s1   = conv2(7×7, b)(conv1(7×7, b)(x))                        H
        s2   = down1: avg-pool, 2 × conv5×5 2b                         H/2
        s3   = down2: avg-pool, 2 × conv3×3 4b                         H/4
        s4   = down3: 8b;  s5 = down4: 16b;  y = down5: 16b            H/8, H/16, H/32
        y    = up1(y, s5) → 16b, up2(·, s4) → 8b, up3(·, s3) → 4b,
               up4(·, s2) → 2b, up5(·, s1) → b                        (bilinear ×2, conv3×3,
                                                                       cat[up, skip], conv3×3)
        out  = conv3(3×3, out_channels)(y), then LeakyReLU if final_activation

    Super SloMo applies the LeakyReLU to the output too (``final_activation=True``, the
    default, as its public code); set False for an unconstrained linear output.
    With b = 32, 26 input and 8 output channels (the compensator) it has 19,826,632
    parameters, as the PyTorch model (``tests/methods/dual_motion/test_compensator_network.py``).

    Attributes:
      out_channels: output channels.
      base_features: b; channel widths b·(1, 2, 4, 8, 16, 16).
      final_activation: LeakyReLU(0.1) on the output (Super SloMo) or not.
      dtype: computation dtype; params float32.

    Params: ``conv1``, ``conv2``, ``down1`` … ``down5`` and ``up1`` … ``up5`` (each
    {``conv1``, ``conv2``}), ``conv3``; every conv {kernel (k, k, Cin, Cout), bias (Cout,)},
    names as Super SloMo's PyTorch ``UNet`` attributes.

    Raises:
      ValueError: x not rank 4, or H or W not a multiple of 32.
    """

    out_channels: int
    base_features: int = 32
    final_activation: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"UNet5 expects x of shape (B, H, W, C), got shape {x.shape}")
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"UNet5 needs H and W that are multiples of 32, got x of shape {x.shape}")
        b, dt = self.base_features, self.dtype
        x = _leaky(Conv2d(b, 7, dtype=dt, name="conv1")(x))
        s1 = _leaky(Conv2d(b, 7, dtype=dt, name="conv2")(x))
        s2 = _Down(2 * b, 5, dt, name="down1")(s1)
        s3 = _Down(4 * b, 3, dt, name="down2")(s2)
        s4 = _Down(8 * b, 3, dt, name="down3")(s3)
        s5 = _Down(16 * b, 3, dt, name="down4")(s4)
        y = _Down(16 * b, 3, dt, name="down5")(s5)
        y = _Up(16 * b, dt, name="up1")(y, s5)
        y = _Up(8 * b, dt, name="up2")(y, s4)
        y = _Up(4 * b, dt, name="up3")(y, s3)
        y = _Up(2 * b, dt, name="up4")(y, s2)
        y = _Up(b, dt, name="up5")(y, s1)
        y = Conv2d(self.out_channels, 3, dtype=dt, name="conv3")(y)
        if self.final_activation:
            y = _leaky(y)
        return y.astype(jnp.float32)


def _check_image(name: str, a: Array, channels: int, shape: tuple[int, ...] | None) -> None:
    if a.ndim != 4 or a.shape[-1] != channels:
        raise ValueError(f"FlowCompensator: {name} must be (B, H, W, {channels}), got shape {a.shape}")
    if shape is not None and a.shape[:3] != shape:
        raise ValueError(f"FlowCompensator: {name} has shape {a.shape}, expected (B, H, W) = {shape} as frame0")


class FlowCompensator(nn.Module):
    """Dual Motion Flow's flow compensator (Zhao et al. 2020, Sec. 2.2): refines the four
    intermediate-flow approximations of Eq. (4) with a ``UNet5``.

    ``apply({'params': p}, frame0, frame1, flows, warped)``:

      frame0, frame1: (B, H, W, 3) float, I0 and I1 in [0, 1]; H, W multiples of 32.
      flows: mapping with the keys of ``FLOW_KEYS`` — ``"i_to_0"`` F_{i→0}, ``"i_to_1"``
        F_{i→1}, ``"0_to_i"`` F_{0→i}, ``"1_to_i"`` F_{1→i} — each (B, H, W, 2), (dx, dy) in
        pixels (the approximations of Eq. (4)).
      warped: mapping with the keys of ``WARPED_KEYS`` — ``"forward_i"`` Î_i0 = T(I0, F_{0→i}),
        ``"forward_1"`` Î_1 = T(Î_i0, F_{i→1}), ``"backward_i"`` Î_i1 = T(Î_1, F_{1→i}),
        ``"backward_0"`` Î_0 = T(Î_i1, F_{i→0}) — each (B, H, W, 3) (Eq. (5)).

    The U-Net input is the channel concatenation, in this order (26 channels):
    ``[I0 (3), I1 (3), F_{i→0}, F_{i→1}, F_{0→i}, F_{1→i} (4 × 2), Î_i0, Î_1, Î_i1, Î_0 (4 × 3)]``.
    The U-Net outputs 8 channels, the residuals ΔF in the same flow order (channels 2k, 2k + 1
    for flow k of ``FLOW_KEYS``). Returns a dict with the keys of ``FLOW_KEYS``, each the
    refined flow F̂ = F + ΔF, (B, H, W, 2) float32 in pixels; F̂_{0→i} ("0_to_i") is the flow
    that carries (I0, L0) to the intermediate time. Inputs are used as given (the paper
    specifies no normalisation).

    Attributes:
      base_features: the U-Net's b (32 in the paper).
      final_activation: the U-Net's output LeakyReLU (Super SloMo's network as published,
        default True; it leaves positive residuals linear and scales negative ones by 0.1).
      dtype: computation dtype; params float32.

    Params: ``unet`` (a ``UNet5(out_channels=8)``, input 26 channels).

    Raises:
      ValueError: a missing key, or an input not of the shape above.
    """

    base_features: int = 32
    final_activation: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, frame0: Array, frame1: Array, flows: Mapping[str, Array], warped: Mapping[str, Array]
    ) -> dict[str, Array]:
        _check_image("frame0", frame0, 3, None)
        shape = frame0.shape[:3]
        _check_image("frame1", frame1, 3, shape)
        for argument, keys, channels in (("flows", FLOW_KEYS, 2), ("warped", WARPED_KEYS, 3)):
            mapping = flows if argument == "flows" else warped
            missing = [k for k in keys if k not in mapping]
            if missing:
                raise ValueError(f"FlowCompensator: {argument} lacks keys {missing}; expected {list(keys)}")
            for k in keys:
                _check_image(f"{argument}[{k!r}]", mapping[k], channels, shape)
        approx = [flows[k].astype(jnp.float32) for k in FLOW_KEYS]
        parts = [frame0, frame1, *approx, *(warped[k] for k in WARPED_KEYS)]
        x = jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)
        residual = UNet5(
            8, base_features=self.base_features, final_activation=self.final_activation, dtype=self.dtype, name="unet"
        )(x)
        return {k: f + residual[..., 2 * j : 2 * j + 2] for j, (k, f) in enumerate(zip(FLOW_KEYS, approx))}
