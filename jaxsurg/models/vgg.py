"""VGG11 convolutional encoder (no batch norm), the encoder of TernausNet's U-Net11.

Source: Simonyan & Zisserman, "Very deep convolutional networks" (2015), configuration A
(VGG11); used as the U-Net11 encoder by Iglovikov & Shvets, "TernausNet" (2018) and by
Dual Motion Flow (Zhao et al. 2020). Layout of torchvision's ``vgg11().features``:

    index  0: conv 3→64     (conv1)      index 11: conv 256→512 (conv4s)
           2: max pool 2×2                     13: conv 512→512 (conv4)
           3: conv 64→128   (conv2)            15: max pool
           5: max pool                         16: conv 512→512 (conv5s)
           6: conv 128→256  (conv3s)           18: conv 512→512 (conv5)
           8: conv 256→256  (conv3)            20: max pool
          10: max pool

every conv 3×3, padding 1, followed by ReLU. ``jaxsurg.weights.torch_convert`` loads a
torchvision ``features.*`` state dict into this module.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.layers import ConvReLU

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (name, output channels, torchvision ``features`` index); a 2×2 max pool precedes every
# stage after the first.
VGG11_STAGES: tuple[tuple[tuple[str, int, int], ...], ...] = (
    (("conv1", 64, 0),),
    (("conv2", 128, 3),),
    (("conv3s", 256, 6), ("conv3", 256, 8)),
    (("conv4s", 512, 11), ("conv4", 512, 13)),
    (("conv5s", 512, 16), ("conv5", 512, 18)),
)


def imagenet_normalize(x: Array) -> Array:
    """(x − mean) / std per RGB channel with the ImageNet statistics of torchvision.

    Args:
      x: float (..., 3) RGB in [0, 1].

    Returns:
      float32 array of the same shape.
    """
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x.astype(jnp.float32) - mean) / std


def max_pool_2x2(x: Array) -> Array:
    """2×2 max pooling, stride 2 (``torch.nn.MaxPool2d(2, 2)``): (N, H, W, C) → (N, H/2, W/2, C).

    H and W must be even. Written as a reshape and a max (not ``reduce_window``), which
    XLA fuses; the gradient goes to the maxima (shared among exact ties).
    """
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class VGG11Encoder(nn.Module):
    """VGG11 ``features`` without the last pool; returns the five skip features of U-Net11.

    ``__call__(x)`` with x float (N, H, W, 3), H and W multiples of 16, returns
    ``(conv1, conv2, conv3, conv4, conv5)``: post-ReLU features of shapes (N, H, W, 64),
    (N, H/2, W/2, 128), (N, H/4, W/4, 256), (N, H/8, W/8, 512), (N, H/16, W/16, 512), in
    ``dtype``.

    Raises ValueError (naming the shape) for a non-rank-4 input, H or W not a multiple of
    16, or (with ``normalize``) a channel count other than 3.

    Attributes:
      normalize: if True (default), x is RGB in [0, 1] and is normalised inside with the
        ImageNet mean/std (``imagenet_normalize``), as torchvision's pretrained VGG expects;
        if False, x is used as given (any channel count).
      dtype: computation dtype (e.g. bfloat16); params are float32.

    Params: ``conv1, conv2, conv3s, conv3, conv4s, conv4, conv5s, conv5``, each
    ``{kernel (3, 3, Cin, Cout), bias (Cout,)}``. Initialisation as torchvision's VGG:
    kaiming-normal (fan_out, ReLU gain), zero bias.
    """

    normalize: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array, Array, Array, Array]:
        if x.ndim != 4 or (self.normalize and x.shape[-1] != 3):
            raise ValueError(f"VGG11Encoder expects (N, H, W, 3) images, got shape {x.shape}")
        if x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(f"VGG11Encoder needs H and W that are multiples of 16, got shape {x.shape}")
        if self.normalize:
            x = imagenet_normalize(x)
        kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        skips = []
        for i, stage in enumerate(VGG11_STAGES):
            if i:
                x = max_pool_2x2(x)
            for name, features, _ in stage:
                x = ConvReLU(
                    features, dtype=self.dtype, kernel_init=kernel_init,
                    bias_init=nn.initializers.zeros, name=name,
                )(x)
            skips.append(x)
        return tuple(skips)
