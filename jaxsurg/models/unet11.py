"""U-Net11 (TernausNet-11): a U-Net with a VGG11 encoder and transposed-conv decoder.

Source: Iglovikov & Shvets, "TernausNet: U-Net with VGG11 encoder pre-trained on ImageNet
for image segmentation" (2018), in the form of Shvets et al. (2018, robot instrument
segmentation; ``UNet11`` with ``is_deconv=True``) — the segmentation network of Dual
Motion Flow (Zhao et al. 2020). See REFERENCE.md, "U-Net11".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.layers import Conv2d, ConvReLU, ConvTranspose4x4s2
from jaxsurg.models.vgg import VGG11Encoder, max_pool_2x2

Array = jax.Array


class DecoderBlock(nn.Module):
    """TernausNet ``DecoderBlock``: Conv3×3(pad 1)+ReLU, then ConvTranspose(4, s2, p1)+ReLU.

    (N, H, W, Cin) → (N, 2H, 2W, features). Params: ``conv`` {kernel (3, 3, Cin, middle),
    bias} and ``deconv`` {kernel (4, 4, middle, features), bias}.
    """

    middle: int
    features: int
    dtype: Any = jnp.float32
    upsample: str = "phase"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = ConvReLU(self.middle, dtype=self.dtype, name="conv")(x)
        x = ConvTranspose4x4s2(self.features, dtype=self.dtype, impl=self.upsample, name="deconv")(x)
        return nn.relu(x)


class UNet11(nn.Module):
    """TernausNet U-Net11 (``is_deconv=True``), NHWC.

    ``apply({'params': p}, x)``: x float32 (N, H, W, 3) RGB in [0, 1] with H and W
    multiples of 32 → logits float32 (N, H, W, num_classes). The input is normalised inside
    with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), as the
    torchvision VGG11 weights expect; do not normalise before calling. With
    ``input_channels`` ≠ 3 (e.g. 1: PAT's L channel, already scaled to [−1, 1] by
    ``jaxsurg.methods.pat.recolorization.to_lab_input``) x is (N, H, W, input_channels) and
    is used as given (no ImageNet normalisation); only ``encoder.conv1``'s kernel changes
    shape, to (3, 3, input_channels, 64). Logits are raw (no
    sigmoid / log-softmax; TernausNet's multi-class model ends in log-softmax, which
    ``ternaus_loss`` applies itself).

    Architecture (nf = num_filters; "cat" = channel concatenation, decoder output first):

        conv1..conv5 = VGG11Encoder(x)                     64, 128, 256, 512, 512 channels
        center = DecoderBlock(nf·16, nf·8)(pool(conv5))    512 → nf·16 → nf·8,  H/16
        dec5   = DecoderBlock(nf·16, nf·8)(cat[center, conv5])                  H/8
        dec4   = DecoderBlock(nf·16, nf·4)(cat[dec5, conv4])                    H/4
        dec3   = DecoderBlock(nf·8,  nf·2)(cat[dec4, conv3])                    H/2
        dec2   = DecoderBlock(nf·4,  nf)(cat[dec3, conv2])                      H
        dec1   = ConvReLU(nf)(cat[dec2, conv1])
        final  = Conv1×1(num_classes)(dec1)

    With nf = 32 and num_classes = 1 this has 25,364,513 parameters, as the PyTorch model
    (1,152 fewer with ``input_channels=1``).

    Attributes:
      num_classes: output channels (1 for a binary task: one logit).
      num_filters: TernausNet's nf (32 in the paper).
      input_channels: channels of x. 3 (default): RGB in [0, 1], ImageNet-normalised inside
        (TernausNet; loads torchvision VGG11 weights). Any other count ≥ 1: x used as given
        (e.g. 1 for PAT's scaled L channel); torchvision VGG11 weights do not fit conv1.
      dtype: computation dtype (``jnp.bfloat16`` on TPU); params are float32.
      upsample: implementation of the transposed convolutions: "phase" (default; fast and
        exact, reverse-mode differentiation only), "phase_autodiff" (same forward, also
        forward-mode) or "conv_transpose" (``lax.conv_transpose``, slow backward on CPU; for
        benchmarks). See ``jaxsurg.models.layers.conv_transpose_4x4_s2``.

    Params: ``encoder`` (see ``VGG11Encoder``), ``center``, ``dec5`` … ``dec2`` (``conv``,
    ``deconv``), ``dec1`` and ``final`` ({kernel, bias}). Initialisation as the PyTorch model
    (torchvision VGG init for the encoder, PyTorch layer defaults elsewhere).

    The body is ``unet11_layers`` (shared with ``convlstm.UNet11ConvLSTM``, which inserts a
    ConvLSTM at the bottleneck under the same parameter names).

    Raises:
      ValueError: input not rank 4 with ``input_channels`` channels, H or W not a multiple
        of 32, or ``input_channels`` < 1.
    """

    num_classes: int = 1
    num_filters: int = 32
    dtype: Any = jnp.float32
    upsample: str = "phase"
    input_channels: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.input_channels < 1:
            raise ValueError(f"UNet11.input_channels must be >= 1, got {self.input_channels}")
        if x.ndim != 4 or x.shape[-1] != self.input_channels:
            raise ValueError(f"UNet11 expects (N, H, W, {self.input_channels}) images, got shape {x.shape}")
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(
                f"UNet11 needs H and W that are multiples of 32, got shape {x.shape} "
                f"(H={x.shape[1]}, W={x.shape[2]})"
            )
        return unet11_layers(
            x, num_classes=self.num_classes, num_filters=self.num_filters, dtype=self.dtype, upsample=self.upsample,
            normalize=self.input_channels == 3,
        )


def unet11_layers(
    x: Array,
    *,
    num_classes: int,
    num_filters: int,
    dtype: Any = jnp.float32,
    upsample: str = "phase",
    bottleneck: Callable[[Array], Array] | None = None,
    normalize: bool = True,
) -> Array:
    """The body of ``UNet11``, with an optional hook at the bottleneck.

    Must be called inside the ``@nn.compact`` method of a Linen module: it creates that
    module's submodules ``encoder``, ``center``, ``dec5`` … ``dec2``, ``dec1`` and ``final``
    (exactly ``UNet11``'s parameter tree), so modules built on it share U-Net11's names and
    load its params. It does not check the input (the caller does).

    Args:
      x: (N, H, W, 3) RGB in [0, 1] (with ``normalize``), else (N, H, W, C) used as given;
        H and W multiples of 32.
      num_classes, num_filters, dtype, upsample: as ``UNet11``'s fields.
      bottleneck: optional function applied to the pooled conv5 features
        ``max_pool_2x2(conv5)`` (N, H/32, W/32, 512) before ``center``; it must return an
        array of the same shape (it may create further submodules of the calling module,
        e.g. the ConvLSTM of ``UNet11ConvLSTM``). None = identity (plain U-Net11).
      normalize: ImageNet-normalise x inside the encoder (True: RGB input, today's U-Net11);
        False: any channel count, used as given (``UNet11.input_channels`` ≠ 3).

    Returns:
      logits (N, H, W, num_classes) float32.
    """
    nf, dt = num_filters, dtype
    conv1, conv2, conv3, conv4, conv5 = VGG11Encoder(normalize=normalize, dtype=dt, name="encoder")(x)

    def block(middle: int, features: int, name: str) -> DecoderBlock:
        return DecoderBlock(middle, features, dtype=dt, upsample=upsample, name=name)

    cat = lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=-1)  # noqa: E731
    pooled = max_pool_2x2(conv5)
    if bottleneck is not None:
        out = bottleneck(pooled)
        if out.shape != pooled.shape:
            raise ValueError(f"bottleneck must return the shape of its input {pooled.shape}, got {out.shape}")
        pooled = out.astype(pooled.dtype)
    center = block(nf * 16, nf * 8, "center")(pooled)
    dec5 = block(nf * 16, nf * 8, "dec5")(cat(center, conv5))
    dec4 = block(nf * 16, nf * 4, "dec4")(cat(dec5, conv4))
    dec3 = block(nf * 8, nf * 2, "dec3")(cat(dec4, conv3))
    dec2 = block(nf * 4, nf, "dec2")(cat(dec3, conv2))
    dec1 = ConvReLU(nf, dtype=dt, name="dec1")(cat(dec2, conv1))
    logits = Conv2d(num_classes, kernel_size=1, dtype=dt, name="final")(dec1)
    return logits.astype(jnp.float32)
