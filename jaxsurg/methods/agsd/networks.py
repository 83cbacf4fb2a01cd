"""AGSD's segmentation networks: the paper's vanilla U-Net and the authors' code's
ResNet18-encoder U-Net. Both map a frame to one instrument logit per pixel.

- ``UNet``: Ronneberger et al. (MICCAI 2015, Fig. 1) — four levels of 2×(3×3 conv + ReLU)
  with 2×2 max pooling, a bottleneck, 2×2 up-convolutions (transposed, stride 2) halving the
  channels, skip concatenation, a 1×1 output conv. Widths w, 2w, 4w, 8w, 16w (the paper:
  w = 64); convolutions padded ("same") so the output has the input's size (the 2015 paper's
  are unpadded). The AGSD paper says "a vanilla U-Net [21]" and gives no widths.
- ``ResNet18UNet``: the code's ``MyUNet`` (REFERENCE.md, "AGSD's public code"): a ResNet18
  stem and layer1–4 (``jaxsurg.models.ResNet18``, BatchNorm in train mode while training),
  decoder blocks of nearest up-sampling and 2×(3×3 conv + ReLU) of widths 64, 32, 16, 16, 8,
  the last concatenated with the ImageNet-normalised input (11 channels) and mapped to one
  logit per pixel by a 1×1 conv.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models import ConvReLU, imagenet_normalize, max_pool_2x2
from jaxsurg.models.resnet import ResNet18

ARCHS = ("unet", "resnet18_unet")


class _DoubleConv(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvReLU(self.features, dtype=self.dtype, name="conv1")(x)
        return ConvReLU(self.features, dtype=self.dtype, name="conv2")(x)


class UNet(nn.Module):
    """The vanilla U-Net: float32 (N, H, W, 3) in [0, 1] → instrument logits (N, H, W, 1)
    (float32). H and W must be multiples of 16 (four poolings). ``train`` is accepted and
    ignored (no BatchNorm, no dropout)."""

    base_width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        if x.ndim != 4 or x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(f"UNet: expected (N, H, W, C) with H, W multiples of 16, got {x.shape}")
        w = self.base_width
        h = x.astype(self.dtype)
        skips = []
        for level in range(4):
            h = _DoubleConv(w * 2**level, self.dtype, name=f"down{level}")(h)
            skips.append(h)
            h = max_pool_2x2(h)
        h = _DoubleConv(w * 16, self.dtype, name="bottleneck")(h)
        for level in reversed(range(4)):
            h = nn.ConvTranspose(w * 2**level, (2, 2), strides=(2, 2), dtype=self.dtype, name=f"upconv{level}")(h)
            h = _DoubleConv(w * 2**level, self.dtype, name=f"up{level}")(jnp.concatenate([skips[level], h], axis=-1))
        return nn.Conv(1, (1, 1), dtype=self.dtype, name="out")(h).astype(jnp.float32)


def _nearest_up(x: jax.Array, factor: int) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ResNet18UNet(nn.Module):
    """The code's U-Net on a ResNet18 encoder: float32 (N, H, W, 3) in [0, 1] → logits
    (N, H, W, 1) float32; H and W multiples of 32. ``train`` puts the encoder's BatchNorm in
    train mode (apply with ``mutable=["batch_stats"]``). Params: ``encoder`` (ResNet18, the
    converter's layout: ``jaxsurg.weights.resnet``), ``dec1`` … ``dec5``, ``out``."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"ResNet18UNet: expected (N, H, W, 3) with H, W multiples of 32, got {x.shape}")
        xn = imagenet_normalize(x.astype(jnp.float32))
        taps = ResNet18(dtype=self.dtype, name="encoder")(xn, train=train)
        d = _DoubleConv(64, self.dtype, name="dec1")(_nearest_up(taps["layer4"], 2))  # /16
        d = _DoubleConv(32, self.dtype, name="dec2")(_nearest_up(jnp.concatenate([d, taps["layer3"]], -1), 2))  # /8
        d = _DoubleConv(16, self.dtype, name="dec3")(_nearest_up(jnp.concatenate([d, taps["layer2"]], -1), 2))  # /4
        d = _DoubleConv(16, self.dtype, name="dec4")(jnp.concatenate([d, taps["layer1"]], -1))  # /4
        d = _DoubleConv(8, self.dtype, name="dec5")(_nearest_up(jnp.concatenate([d, taps["pool"]], -1), 4))  # /1
        d = jnp.concatenate([d.astype(jnp.float32), xn], -1)  # 8 + 3 = 11 channels
        return nn.Conv(1, (1, 1), name="out")(d)


def build_network(model_config) -> nn.Module:
    """The network of ``config.model`` (``arch``, ``base_width``, ``dtype``).

    Raises:
      ValueError: an unknown ``config.model.arch`` (listing the known ones).
    """
    dtype = jnp.dtype(model_config.dtype)
    if model_config.arch == "unet":
        return UNet(base_width=model_config.base_width, dtype=dtype)
    if model_config.arch == "resnet18_unet":
        return ResNet18UNet(dtype=dtype)
    raise ValueError(f"config.model.arch={model_config.arch!r} is unknown; known: {ARCHS}")
