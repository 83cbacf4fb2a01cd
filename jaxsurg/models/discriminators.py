"""GAN discriminators (NHWC, Flax Linen): PAT's ResNet18 and pix2pix's 70×70 PatchGAN.

Both map an image to probabilities "real" in [0, 1] (a sigmoid on the last layer), which is
what PAT's least-squares losses (Ross et al. 2018, Eqs. 2 and 5) compare with the labels
Y_real = 1 and Y_fake = 0. For PAT the input is a CIE L*a*b* frame {L, a, b} (3 channels, in
the scaled units of ``jaxsurg.methods.pat.recolorization``), real or with (â, b̂) recoloured
by the generator; nothing here depends on the channel count.

- ``ResNet18Discriminator``: Ross et al. 2018, sec. 2.2.1 ("an untrained ResNet18 with the
  output D(I) ∈ [0, 1]"): ``jaxsurg.models.resnet.ResNet18`` with a 1-way ``fc`` and a
  sigmoid; one probability per image.
- ``PatchGAN``: Isola, Zhu, Zhou & Efros, "Image-to-image translation with conditional
  adversarial networks" (CVPR 2017), sec. 3.2.2 and appendix 6.1.2, the 70×70 discriminator
  C64-C128-C256-C512 as ``NLayerDiscriminator(n_layers=3)`` of the authors' PyTorch code
  (junyanz/pytorch-CycleGAN-and-pix2pix, ``models/networks.py``); one probability per
  70×70 patch.

BatchNorm is ``jaxsurg.models.resnet.BatchNorm2d`` (PyTorch's semantics, statistics in the
``batch_stats`` collection): ``train=True`` normalises with batch statistics and needs
``apply(..., mutable=['batch_stats'])``; ``train=False`` uses the running statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxsurg.models.layers import bias_add
from jaxsurg.models.resnet import BatchNorm2d, ResNet18

Array = jax.Array

__all__ = ["PatchGAN", "ResNet18Discriminator", "patchgan_output_size", "patchgan_receptive_field"]

PIX2PIX_INIT_STD = 0.02  # pix2pix ``init_weights(init_type="normal", init_gain=0.02)``


class ResNet18Discriminator(nn.Module):
    """PAT's discriminator D(I) ∈ [0, 1]: ResNet18 trained from scratch, one sigmoid output.

    Ross et al. 2018, sec. 2.2.1 (Discriminator). ``ResNet18(num_outputs=1)`` (torchvision's
    layout and initialisation, see ``jaxsurg.models.resnet``), then ``sigmoid`` of its one
    logit.

    ``__call__(x, *, train)``:
      x: float (N, H, W, C), C = 3 for PAT's {L, a, b} (any C works: conv1 takes Cin from
        the input), H, W ≥ 32.
      train: True — BatchNorm uses batch statistics and updates ``batch_stats`` (pass
        ``mutable=['batch_stats']``); False — the running statistics.
      returns: float32 (N,), D(I) = sigmoid(logit) ∈ [0, 1] (probability "real"); the
        logit itself is ``ResNet18``'s "logits" tap.

    Raises:
      ValueError: x not 4-D, H or W < 32, or train=True with one value per channel in a
        BatchNorm (from ``ResNet18``).

    Attributes:
      dtype: computation dtype (params, statistics and the output stay float32).
      bn_momentum, bn_eps: as ``ResNet18`` (PyTorch's 0.1 momentum is 0.9 here, eps 1e-5).

    Params: ``backbone`` — ``ResNet18``'s params with ``fc`` {kernel (512, 1), bias (1,)}.
    """

    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        out = ResNet18(num_outputs=1, dtype=self.dtype, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, name="backbone")(
            x, train=train
        )
        return nn.sigmoid(out["logits"][:, 0].astype(jnp.float32))


class Conv4x4(nn.Module):
    """``torch.nn.Conv2d(cin, features, kernel_size=4, stride, padding=1, bias=use_bias)``, NHWC.

    Output (N, ⌊(H − 2)/s⌋ + 1, ⌊(W − 2)/s⌋ + 1, features): ⌊H/2⌋ at stride 2, H − 1 at
    stride 1. Params: ``kernel`` (4, 4, Cin, features) — the PyTorch weight transposed
    (2, 3, 1, 0) — N(0, 0.02) as pix2pix; ``bias`` (features,), zeros, when ``use_bias``.

    Attributes: ``features``, ``stride``, ``use_bias``, ``dtype`` (computation; params float32).
    """

    features: int
    stride: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.normal(PIX2PIX_INIT_STD)
        kernel = self.param("kernel", init, (4, 4, x.shape[-1], self.features), jnp.float32)
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (self.stride, self.stride),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = bias_add(y, bias.astype(self.dtype))
        return y


def patchgan_output_size(size: int, n_layers: int = 3) -> int:
    """Rows (or columns) of ``PatchGAN(n_layers)``'s output for an input of ``size``:
    ⌊size / 2^n_layers⌋ − 2 (n_layers k4 s2 p1 convs halve, rounding down; the two k4 s1 p1
    convs remove one each). 30 for 256 with n_layers = 3, as pix2pix. May be ≤ 0 (too small)."""
    for _ in range(n_layers):
        size //= 2
    return size - 2


def patchgan_receptive_field(n_layers: int = 3) -> int:
    """The side of the input patch one ``PatchGAN(n_layers)`` output sees: r ← 1, then back
    through the layers r ← r + 3 (each k4 s1 conv) twice and r ← 2r + 2 (each k4 s2 conv)
    n_layers times: 70 for n_layers = 3 (pix2pix's "70×70 PatchGAN"), 34 for 2, 142 for 4."""
    r = 1 + 3 + 3
    for _ in range(n_layers):
        r = 2 * r + 2
    return r


class PatchGAN(nn.Module):
    """pix2pix's 70×70 PatchGAN (Isola et al. 2017, appendix 6.1.2), one probability per patch.

    Layers (``NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=BatchNorm2d)`` of the
    pix2pix code; its ``model.<i>`` → the Linen module here)::

        model.0      C64:  conv k4 s2 p1, bias, no norm, LeakyReLU 0.2     conv_0
        model.2, 3   C128: conv k4 s2 p1, no bias, BatchNorm, LeakyReLU 0.2 conv_1, bn_1
        model.5, 6   C256: conv k4 s2 p1, no bias, BatchNorm, LeakyReLU 0.2 conv_2, bn_2
        model.8, 9   C512: conv k4 s1 p1, no bias, BatchNorm, LeakyReLU 0.2 conv_3, bn_3
        model.11     conv to 1, k4 s1 p1, bias                              conv_out
        sigmoid (this module; see ``sigmoid``)

    (widths ndf·min(2^i, 8); ``n_layers`` stride-2 convs in all, as the pix2pix code's
    argument.) Each output sees a ``patchgan_receptive_field(n_layers)`` = 70×70 input patch;
    a 256×256 input gives 30×30 outputs (``patchgan_output_size``).

    LSGAN use: pix2pix's ``gan_mode="lsgan"`` takes the MSE of the RAW last-layer scores
    against 1 / 0 (``nn.MSELoss`` averaged over every patch). PAT states D(I) ∈ [0, 1], so by
    default the scores go through a sigmoid and the least-squares losses
    (``jaxsurg.methods.pat.recolorization``) average (D − y)² over every patch and image,
    which keeps each term in [0, 1]; ``sigmoid=False`` gives pix2pix's raw scores.

    ``__call__(x, *, train)``:
      x: float (N, H, W, C) (C = 3 for PAT's {L, a, b}; pix2pix's conditional input is
        input_nc + output_nc channels), H, W ≥ 3·2^n_layers (24 for n_layers = 3) so that
        the output is at least 1×1.
      train: True — batch statistics in the BatchNorms, ``batch_stats`` updated (pass
        ``mutable=['batch_stats']``); False — running statistics (use it for per-patch
        analyses: in train mode BN mixes the batch).
      returns: float32 (N, h, w), h = ``patchgan_output_size(H, n_layers)`` (likewise w):
        probabilities "real" per patch in [0, 1] (raw scores when ``sigmoid=False``).

    Raises:
      ValueError: x not 4-D (N, H, W, C); the output would be empty (the message names
        the shape and the minimum); train=True with one value per channel in a BatchNorm.

    Attributes:
      ndf: width of the first layer (64).
      n_layers: stride-2 convolutions (3: the 70×70 PatchGAN).
      sigmoid: apply the sigmoid (default True; False = pix2pix's LSGAN raw scores).
      dtype: computation dtype; params, ``batch_stats`` and the output are float32.
      bn_momentum: weight of the old running statistics (0.9 = PyTorch's momentum 0.1).
      bn_eps: BatchNorm epsilon (1e-5).

    Initialisation as pix2pix (``init_weights(net, "normal", 0.02)``): conv kernels N(0, 0.02),
    conv biases 0, BatchNorm scale N(1, 0.02), bias 0; running mean 0, variance 1.
    2,765,633 parameters for ndf 64, n_layers 3 and 3 input channels (as PyTorch's).
    """

    ndf: int = 64
    n_layers: int = 3
    sigmoid: bool = True
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        if x.ndim != 4:
            raise ValueError(f"PatchGAN expects x of shape (N, H, W, C), got {x.shape}")
        h, w = (patchgan_output_size(s, self.n_layers) for s in x.shape[1:3])
        if min(h, w) < 1:
            raise ValueError(
                f"PatchGAN(n_layers={self.n_layers}): x of shape {x.shape} is too small, the output would be "
                f"{h}×{w}; H and W must be ≥ {3 * 2**self.n_layers}"
            )

        def bn_act(y: Array, name: str) -> Array:
            bn = BatchNorm2d(self.bn_momentum, self.bn_eps, self.dtype, name=name)
            y = bn(y, use_running_average=not train)
            if self.is_initializing():  # pix2pix: BN weight N(1, 0.02) (BatchNorm2d's own init is 1)
                scale = bn.get_variable("params", "scale")
                noise = jax.random.normal(self.make_rng("params"), scale.shape, jnp.float32)
                bn.put_variable("params", "scale", 1.0 + PIX2PIX_INIT_STD * noise)
            return nn.leaky_relu(y, 0.2)

        y = nn.leaky_relu(Conv4x4(self.ndf, 2, True, self.dtype, name="conv_0")(x), 0.2)
        for i in range(1, self.n_layers + 1):
            stride = 2 if i < self.n_layers else 1
            y = Conv4x4(self.ndf * min(2**i, 8), stride, False, self.dtype, name=f"conv_{i}")(y)
            y = bn_act(y, f"bn_{i}")
        y = Conv4x4(1, 1, True, self.dtype, name="conv_out")(y)[..., 0].astype(jnp.float32)
        return nn.sigmoid(y) if self.sigmoid else y
