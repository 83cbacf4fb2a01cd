"""ResNet18 (NHWC, Flax Linen) with torchvision's architecture and parameter names.

Source: He, Zhang, Ren & Sun, "Deep residual learning for image recognition" (CVPR 2016),
Table 1, the 18-layer network; layer for layer as ``torchvision.models.resnet18`` (v1.5
layout: the stride of a down-sampling block sits in its first 3×3 conv). Two methods share
it: AGSD uses the taps as the encoder of a U-Net, PAT as a GAN discriminator (3-channel Lab
input, ``num_outputs`` logits).

Layout (torchvision state-dict prefix → Linen module name)::

    conv1  7×7/2, pad 3, no bias, 64         conv1
    bn1, ReLU                                bn1             → tap "stem"   (/2, 64)
    max pool 3×3/2, pad 1 (−inf)                             → tap "pool"   (/4, 64)
    layer1.{0,1}  BasicBlock 64              layer1_{0,1}    → tap "layer1" (/4, 64)
    layer2.{0,1}  BasicBlock 128, first /2   layer2_{0,1}    → tap "layer2" (/8, 128)
    layer3.{0,1}  BasicBlock 256, first /2   layer3_{0,1}    → tap "layer3" (/16, 256)
    layer4.{0,1}  BasicBlock 512, first /2   layer4_{0,1}    → tap "layer4" (/32, 512)
    global average pool, fc                  fc              → "logits" (num_outputs set)

A BasicBlock is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3×3 convs
(padding 1, no bias; conv1 carries the block's stride) and ``shortcut`` the identity, or
``downsample.0`` (1×1 conv, stride 2, no bias) + ``downsample.1`` (BN) — Linen
``downsample_conv`` / ``downsample_bn`` — in the first block of layer2..4.
``jaxsurg.weights.resnet.resnet18_variables`` converts a torchvision ``resnet18`` state dict.

BatchNorm (``BatchNorm2d``) is PyTorch's, not ``flax.linen.BatchNorm``: both normalise with
the biased batch variance in train mode, but PyTorch updates ``running_var`` with the
UNBIASED variance (× n / (n − 1), n = N·H·W values per channel) while flax uses the biased
one; matching PyTorch keeps fine-tuning a loaded checkpoint as it would run in PyTorch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.layers import conv2d, torch_uniform_init

Array = jax.Array

# (stage name, output channels, stride of its first block); two BasicBlocks per stage.
RESNET18_STAGES: tuple[tuple[str, int, int], ...] = (
    ("layer1", 64, 1),
    ("layer2", 128, 2),
    ("layer3", 256, 2),
    ("layer4", 512, 2),
)
RESNET18_TAPS: tuple[str, ...] = ("stem", "pool") + tuple(name for name, _, _ in RESNET18_STAGES)
BLOCKS_PER_STAGE = 2
MIN_SIZE = 32  # H and W: the total stride of layer4

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu") for every conv.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNoBias(nn.Module):
    """``torch.nn.Conv2d(cin, features, k, stride, padding=k // 2, bias=False)`` in NHWC, k odd.

    Zero padding (k − 1)/2 on every side, as PyTorch (``jaxsurg.models.layers.conv2d``), so
    odd input sizes give PyTorch's ⌊(H − 1)/stride⌋ + 1 rows. Cin is taken from the input.

    Params: ``kernel`` (k, k, Cin, features) float32 — the PyTorch weight transposed
    (2, 3, 1, 0); kaiming-normal (fan_out, ReLU gain) as torchvision's ResNet.

    Attributes:
      features: output channels.
      kernel_size: k (odd).
      stride: s ≥ 1.
      dtype: computation dtype.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(N, H, W, Cin) → (N, ⌊(H − 1)/s⌋ + 1, ⌊(W − 1)/s⌋ + 1, features) in ``dtype``."""
        k = self.kernel_size
        kernel = self.param("kernel", _KAIMING_FAN_OUT, (k, k, x.shape[-1], self.features), jnp.float32)
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride)


class BatchNorm2d(nn.Module):
    """``torch.nn.BatchNorm2d`` over the last (channel) axis of an (N, H, W, C) input.

    ``use_running_average=False`` (train): normalises with the batch mean and the BIASED batch
    variance over (N, H, W), and — unless the module is being initialised — updates
    ``mean ← m·mean + (1 − m)·batch_mean`` and ``var ← m·var + (1 − m)·batch_var·n/(n − 1)``
    (the UNBIASED variance, n = N·H·W, as PyTorch; ``flax.linen.BatchNorm`` would use the
    biased one). Pass ``mutable=['batch_stats']`` to ``apply``. ``True`` (eval): normalises
    with the running statistics. Statistics are computed in float32 whatever ``dtype``.

    Params: ``scale`` (C,) (PyTorch ``weight``, init 1), ``bias`` (C,) (init 0).
    ``batch_stats``: ``mean`` (C,) (``running_mean``, init 0), ``var`` (C,) (``running_var``,
    init 1). All float32.

    Attributes:
      momentum: m, the weight of the OLD running value (flax convention): PyTorch's
        ``momentum=0.1`` is m = 0.9.
      epsilon: added to the variance (PyTorch ``eps``).
      dtype: output dtype.

    Raises:
      ValueError: train mode with a single value per channel (n = 1), as PyTorch.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, use_running_average: bool) -> Array:
        """(N, H, W, C) → (N, H, W, C) in ``dtype``."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            n = x.size // c
            if n < 2:
                raise ValueError(
                    f"{'/'.join(self.path)}: train-mode BatchNorm needs more than one value per channel, got input "
                    f"of shape {x.shape} (PyTorch raises too); use a larger batch or input, or train=False"
                )
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)  # biased: used to normalise
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
                ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(var) * (n / (n - 1))
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return ((xf - mean) * mul + bias).astype(self.dtype)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (expansion 1).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``: conv1 3×3 with ``stride``, conv2
    3×3, both padding 1 and no bias; ``shortcut`` = ``downsample_bn(downsample_conv(x))``
    (1×1, ``stride``) when the stride or the channel count changes, else the identity.

    Attributes: ``features`` (output channels), ``stride`` (1 or 2), ``dtype``, ``bn_momentum``,
    ``bn_eps`` (see ``ResNet18``).
    """

    features: int
    stride: int = 1
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """(N, H, W, Cin) → (N, ⌈H/stride⌉, ⌈W/stride⌉, features) in ``dtype``, ≥ 0."""

        def bn(name: str) -> BatchNorm2d:
            return BatchNorm2d(self.bn_momentum, self.bn_eps, self.dtype, name=name)

        y = ConvNoBias(self.features, 3, self.stride, self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y, use_running_average=not train))
        y = ConvNoBias(self.features, 3, 1, self.dtype, name="conv2")(y)
        y = bn("bn2")(y, use_running_average=not train)
        shortcut = x.astype(self.dtype)
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = ConvNoBias(self.features, 1, self.stride, self.dtype, name="downsample_conv")(x)
            shortcut = bn("downsample_bn")(shortcut, use_running_average=not train)
        return nn.relu(y + shortcut)


class ResNet18(nn.Module):
    """ResNet18 (He et al. 2016, Table 1; ``torchvision.models.resnet18``) returning its taps.

    ``__call__(x, *, train)``:
      x: float (N, H, W, Cin), any Cin (conv1's kernel is (7, 7, Cin, 64): 3 for RGB or Lab,
        1 for grey), H, W ≥ 32, any parity. NOT normalised inside: the caller applies the
        normalisation its weights expect (e.g. ``jaxsurg.models.vgg.imagenet_normalize`` for
        torchvision's ImageNet weights).
      train: True — BatchNorm uses batch statistics and updates the running ones in the
        ``batch_stats`` collection (``apply(..., mutable=['batch_stats'])``; PyTorch's update,
        unbiased running variance, see ``BatchNorm2d``); False — the running statistics
        (``model.eval()``). No dropout; no rng needed.
      returns: ``{"stem": (N, ⌈H/2⌉, ⌈W/2⌉, 64)`` (conv1 + bn1 + ReLU, before the max pool),
        ``"pool": (N, ⌈H/4⌉, ⌈W/4⌉, 64)`` (after it; the AGSD code's U-Net skip),
        ``"layer1": (N, ⌈H/4⌉, ⌈W/4⌉, 64)``, ``"layer2": (N, ⌈H/8⌉, ⌈W/8⌉, 128)``,
        ``"layer3": (N, ⌈H/16⌉, ⌈W/16⌉, 256)``, ``"layer4": (N, ⌈H/32⌉, ⌈W/32⌉, 512)``
        (all ≥ 0), and ``"logits": (N, num_outputs)`` (global average pool of layer4, then
        ``fc``) when ``num_outputs`` is set}, every array in ``dtype``. The ⌈·⌉ sizes are
        PyTorch's for odd inputs (symmetric zero padding; the max pool pads with −inf).

    Raises:
      ValueError: x is not 4-D (N, H, W, C), or H or W < 32 (the message names the shape);
        train=True with one value per channel in a BatchNorm (e.g. N = 1 and H, W ≤ 32 at
        layer4), as PyTorch.

    Attributes:
      num_outputs: size of ``fc``'s output; None (default) = no pool and no ``fc``.
      dtype: computation dtype (e.g. bfloat16); params and ``batch_stats`` stay float32 and
        BatchNorm statistics are computed in float32.
      bn_momentum: weight of the old running statistics (0.9 = PyTorch ``momentum=0.1``).
      bn_eps: BatchNorm epsilon (1e-5, PyTorch's).

    Params (torchvision's names, ``.`` → ``_`` for blocks): ``conv1`` {kernel (7, 7, Cin, 64)},
    ``bn1`` {scale, bias}, ``layer<s>_<b>`` {``conv1``, ``bn1``, ``conv2``, ``bn2``, and for
    b = 0, s ≥ 2 ``downsample_conv`` {kernel (1, 1, Cin, C)}, ``downsample_bn``}, ``fc``
    {kernel (512, num_outputs), bias}; ``batch_stats``: every BN {mean, var}. Conv kernels
    are PyTorch weights transposed (2, 3, 1, 0), ``fc`` kernel the Linear weight transposed.
    Initialisation as torchvision: convs kaiming-normal (fan_out, ReLU gain), BN scale 1 and
    bias 0, ``fc`` PyTorch's Linear default U(±1/√512). 11,176,512 parameters without ``fc``
    (torchvision's 11,689,512 with the 1000-way ``fc``).
    """

    num_outputs: int | None = None
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        if x.ndim != 4:
            raise ValueError(f"ResNet18 expects x of shape (N, H, W, C), got {x.shape}")
        if min(x.shape[1], x.shape[2]) < MIN_SIZE:
            raise ValueError(
                f"ResNet18: x of shape {x.shape} is too small; H and W must be ≥ {MIN_SIZE} "
                "(the total stride of layer4)"
            )
        out: dict[str, Array] = {}
        x = ConvNoBias(64, 7, 2, self.dtype, name="conv1")(x)
        x = BatchNorm2d(self.bn_momentum, self.bn_eps, self.dtype, name="bn1")(x, use_running_average=not train)
        x = out["stem"] = nn.relu(x)
        x = out["pool"] = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with −inf
        for stage, features, stride in RESNET18_STAGES:
            for b in range(BLOCKS_PER_STAGE):
                x = BasicBlock(
                    features, stride if b == 0 else 1, self.dtype, self.bn_momentum, self.bn_eps, name=f"{stage}_{b}"
                )(x, train=train)
            out[stage] = x
        if self.num_outputs is not None:
            pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
            init = torch_uniform_init(x.shape[-1])
            out["logits"] = nn.Dense(
                self.num_outputs, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, bias_init=init, name="fc"
            )(pooled)
        return out
