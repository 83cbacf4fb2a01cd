"""Convolutional LSTM and U-Net11 with a ConvLSTM bottleneck ("Dual MF★").

Sources:
  - Shi et al., "Convolutional LSTM Network: A Machine Learning Approach for Precipitation
    Nowcasting" (NeurIPS 2015), Eq. (3), here WITHOUT the peephole terms W_c ∘ c (Dual MF's
    paper names no peepholes; the common PyTorch ConvLSTM that segmentation code uses has
    none):

        [i, f, o, g] = Conv_k×k([x_t, h_{t−1}])            (one conv, 4·features outputs)
        c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g)
        h_t = σ(o) ⊙ tanh(c_t)

  - Zhao et al., Dual Motion Flow (MICCAI 2020), Sec. 2.3 and 3: a ConvLSTM at the
    bottleneck of U-Net11, input sequences of 5 frames, learning rate 1e-4 for the ConvLSTM
    and 1e-5 for the rest (``param_labels`` + ``optax.multi_transform``). REFERENCE.md: the
    ConvLSTM runs on the pooled conv5 features (512 channels), 3×3, hidden 512, 2 layers.

NHWC; sequences are (B, T, H, W, C), time on axis 1.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.layers import Conv2d
from jaxsurg.models.unet11 import unet11_layers

Array = jax.Array
Carry = tuple[Array, Array]

CONVLSTM_NAME = "convlstm"
BOTTLENECK_CHANNELS = 512  # VGG11 conv5, the input of U-Net11's ``center``


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step (Shi et al. 2015, Eq. (3), no peepholes), NHWC.

    ``apply({'params': p}, carry, x) -> (new_carry, h)`` with carry = (h, c), each
    (B, H, W, features) float32, x (B, H, W, Cin). Gates from ONE 'same' k×k convolution of
    the channel concatenation [x, h] (Cin + features → 4·features), split in the order
    input i, forget f, output o, candidate g (the layout of the widely used PyTorch
    ``ConvLSTMCell``, whose ``conv.weight`` (4F, Cin + F, k, k) transposes to ``conv/kernel``).
    The state is kept in float32 whatever ``dtype`` the convolution computes in.

    Attributes:
      features: hidden channels F.
      kernel_size: k (odd).
      dtype: computation dtype of the convolution; params float32.

    Params: ``conv`` {kernel (k, k, Cin + F, 4F), bias (4F,)}, PyTorch default init.
    """

    features: int
    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
        h, c = carry
        if h.shape[:-1] != x.shape[:-1] or h.shape[-1] != self.features or c.shape != h.shape:
            raise ValueError(
                f"ConvLSTMCell: carry (h, c) must be (B, H, W, {self.features}) matching x {x.shape}, "
                f"got h {h.shape}, c {c.shape}"
            )
        z = Conv2d(4 * self.features, self.kernel_size, dtype=self.dtype, name="conv")(
            jnp.concatenate([x.astype(self.dtype), h.astype(self.dtype)], axis=-1)
        ).astype(jnp.float32)
        i, f, o, g = jnp.split(z, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    @staticmethod
    def zero_carry(batch_spatial: tuple[int, int, int], features: int) -> Carry:
        """Zero state (h, c), each (B, H, W, features) float32, for ``batch_spatial`` = (B, H, W)."""
        z = jnp.zeros((*batch_spatial, features), jnp.float32)
        return z, z


class ConvLSTM(nn.Module):
    """A stack of ``ConvLSTMCell`` scanned over time with ``nn.scan`` (one compiled step).

    ``apply({'params': p}, x)``: x (B, T, H, W, C) float → the last layer's hidden states
    for EVERY step, (B, T, H, W, features) float32 (``[:, -1]`` is the final one). Each layer
    starts from the zero state and feeds its hidden sequence to the next layer.

    Attributes:
      features: hidden channels of every layer.
      kernel_size: k of every cell.
      num_layers: stacked layers (2 in Dual MF's code).
      dtype: computation dtype of the convolutions; params and state float32.

    Params: ``layer0`` … ``layer{num_layers−1}``, each a ``ConvLSTMCell``'s ({``conv``}),
    shared over time.

    Raises:
      ValueError: x not rank 5, or num_layers < 1.
    """

    features: int
    kernel_size: int = 3
    num_layers: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 5:
            raise ValueError(f"ConvLSTM expects x of shape (B, T, H, W, C), got shape {x.shape}")
        if self.num_layers < 1:
            raise ValueError(f"ConvLSTM needs num_layers >= 1, got {self.num_layers}")
        scan_cell = nn.scan(
            ConvLSTMCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        b, _, h, w, _ = x.shape
        for layer in range(self.num_layers):
            carry = ConvLSTMCell.zero_carry((b, h, w), self.features)
            _, x = scan_cell(self.features, self.kernel_size, self.dtype, name=f"layer{layer}")(carry, x)
        return x


class UNet11ConvLSTM(nn.Module):
    """U-Net11 with a ConvLSTM at the bottleneck, Dual Motion Flow's "Dual MF★" (Sec. 2.3).

    ``apply({'params': p}, clip)``: clip float32 (B, T, H, W, 3) RGB in [0, 1], frames in time
    order, H and W multiples of 32 → logits (B, T, H, W, num_classes) float32 for EVERY frame
    (the paper does not restrict the output to the last frame; every frame of a Dual MF
    training clip has a real or propagated label. Take ``[:, -1]`` for the last frame).

    Each frame goes through U-Net11's VGG11 encoder independently; the pooled conv5 features
    ``max_pool_2x2(conv5)`` (B, T, H/32, W/32, 512) — the input of U-Net11's ``center`` —
    are run through a ``ConvLSTM`` (hidden 512, so ``center`` keeps its shape) over the T
    frames; its hidden state at step t replaces frame t's bottleneck features
    (``residual=False``, the paper's form), or is added to them (``residual=True``: with the
    ConvLSTM's last layer zeroed the model is exactly U-Net11 on every frame, a safe start
    when fine-tuning from a trained U-Net11). The decoder then runs per frame with that
    frame's skips. With T = 1 and ``residual=False`` the bottleneck is
    h_1 = σ(o)·tanh(σ(i)·tanh(g)) with the gates of the first step from the zero state.

    Params: U-Net11's exactly (``encoder``, ``center``, ``dec5`` … ``dec2``, ``dec1``,
    ``final``: a plain ``UNet11``'s params load by name) plus ``convlstm`` (``layer0`` …),
    which ``param_labels`` labels for its own learning rate.

    Attributes:
      num_classes, num_filters, dtype, upsample: as ``UNet11``.
      convlstm_layers: stacked ConvLSTM layers (2 in Dual MF's code).
      convlstm_kernel_size: 3.
      residual: add (True) or substitute (False, default) the ConvLSTM output.

    Raises:
      ValueError: clip not (B, T, H, W, 3), or H or W not a multiple of 32.
    """

    num_classes: int = 1
    num_filters: int = 32
    convlstm_layers: int = 2
    convlstm_kernel_size: int = 3
    residual: bool = False
    dtype: Any = jnp.float32
    upsample: str = "phase"

    @nn.compact
    def __call__(self, clip: Array) -> Array:
        if clip.ndim != 5 or clip.shape[-1] != 3:
            raise ValueError(f"UNet11ConvLSTM expects clip of shape (B, T, H, W, 3), got shape {clip.shape}")
        if clip.shape[2] % 32 or clip.shape[3] % 32:
            raise ValueError(f"UNet11ConvLSTM needs H and W that are multiples of 32, got clip of shape {clip.shape}")
        b, t = clip.shape[:2]
        convlstm = ConvLSTM(
            BOTTLENECK_CHANNELS, self.convlstm_kernel_size, self.convlstm_layers, dtype=self.dtype, name=CONVLSTM_NAME
        )

        def bottleneck(pooled: Array) -> Array:  # (B·T, h, w, 512), frame-major per clip
            seq = pooled.reshape(b, t, *pooled.shape[1:])
            out = convlstm(seq).reshape(pooled.shape)
            return pooled.astype(jnp.float32) + out if self.residual else out

        logits = unet11_layers(
            clip.reshape(b * t, *clip.shape[2:]),
            num_classes=self.num_classes,
            num_filters=self.num_filters,
            dtype=self.dtype,
            upsample=self.upsample,
            bottleneck=bottleneck,
        )
        return logits.reshape(b, t, *logits.shape[1:])


def param_labels(params: Any) -> Any:
    """Labels every leaf ``'convlstm'`` if its path has a ``convlstm`` key, else ``'base'``.

    For ``optax.multi_transform({'convlstm': adam(1e-4), 'base': adam(1e-5)}, param_labels)``
    (Dual MF★'s learning rates). Works on the ``params`` dict of ``UNet11ConvLSTM`` or on the
    whole variables dict {'params': …}.

    Args:
      params: a pytree of arrays (nested dicts / FrozenDicts).

    Returns:
      a pytree of the same structure with str leaves.
    """

    def label(path: tuple[Any, ...], _: Any) -> str:
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return CONVLSTM_NAME if CONVLSTM_NAME in keys else "base"

    return jax.tree_util.tree_map_with_path(label, params)
