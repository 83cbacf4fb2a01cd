"""Laparoflow-SSL downstream heads on a frozen pixel-representation backbone (NHWC).

Source: Moens et al., "Laparoflow-SSL: Image Analysis From a Tiny Dataset Through
Self-Supervised Transformers Leveraging Unlabeled Surgical Video" (2024), Sec. 2.4 and
App. D.1; side-tuning from Zhang et al., "Side-Tuning: A Baseline for Network Adaptation via
Additive Side Networks" (ECCV 2020).

The backbone (SegFormer-B0 without its class softmax) maps an image (B, H, W, 3) in [0, 1]
to a representation ``rep`` (B, ceil(H/4), ceil(W/4), 256), unit-norm per pixel. The heads
here take ``(image, rep)`` and return logits at the image resolution:

- ``SideTuneNetwork``: two 3×3 convolutions (64, 128 kernels, ReLU) on the image. The paper
  does not state their resolution; we give each stride 2 so that the output lies on the
  representation's 1/4 grid (its reported 39 fps at 1080p on an RTX 3090 implies a head
  running at 1/4 resolution, not at full 1080p).
- ``SideTuneSegmentationHead``: concat [rep, side] (256 + 128) → two 3×3 convs of 256 + ReLU
  → 1×1 conv to ``num_classes`` logits (the paper's softmax is left to the loss).
- ``KeypointHead``: the same concatenation → seven 3×3 convs of 16 + ReLU → 1×1 conv to
  ``num_keypoints`` logits (the paper's sigmoid is left to the loss / peak finder).
- ``LinearProbeHead`` (not in the paper; a standard read-out of frozen representations): a
  1×1 conv on the representation alone, no side-tune network — how much of the task the
  frozen pixel representations hold linearly.

All convolutions are ``torch.nn.Conv2d(cin, cout, k, stride, padding=k // 2)`` with PyTorch's
default initialisation, params ``kernel`` (k, k, Cin, Cout) (the PyTorch weight transposed
by (2, 3, 1, 0)) and ``bias`` (Cout,). Logits are upsampled to (H, W) bilinearly with
half-pixel centres, i.e. ``torch.nn.functional.interpolate(..., size=(H, W),
mode="bilinear", align_corners=False)`` — the SegFormer convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxsurg.models.layers import Conv2d, ConvReLU
from jaxsurg.ops.resize import resize_bilinear

Array = jax.Array
Dtype = Any


def representation_grid(height: int, width: int) -> tuple[int, int]:
    """The 1/4 grid of a (height, width) image: (ceil(height/4), ceil(width/4)).

    This is the output size of SegFormer's first patch embedding (conv k7/s4/p3) and of two
    stride-2, padding-1 3×3 convolutions, ``floor((n − 1)/4) + 1``.
    """
    return -(-height // 4), -(-width // 4)


def match_grid(x: Array, size: tuple[int, int]) -> Array:
    """Crops (bottom/right) or edge-pads (bottom/right) (B, h, w, C) to (B, size[0], size[1], C).

    Used where a feature map and the representation differ by rounding of odd sizes.
    """
    h, w = size
    x = x[:, :h, :w]
    pad_h, pad_w = h - x.shape[1], w - x.shape[2]
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return x


def _check_inputs(image: Array, rep: Array) -> None:
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be (B, H, W, 3), got shape {image.shape}")
    if rep.ndim != 4:
        raise ValueError(f"rep must be (B, h, w, D), got shape {rep.shape}")
    if rep.shape[0] != image.shape[0]:
        raise ValueError(f"image and rep must have the same batch size, got {image.shape[0]} and {rep.shape[0]}")
    gh, gw = representation_grid(image.shape[1], image.shape[2])
    if abs(rep.shape[1] - gh) > 1 or abs(rep.shape[2] - gw) > 1:
        raise ValueError(
            f"rep must lie on the image's 1/4 grid, about ({gh}, {gw}) for an image of "
            f"{image.shape[1]}x{image.shape[2]}, got spatial size {rep.shape[1:3]}"
        )


class SideTuneNetwork(nn.Module):
    """The 2-layer side-tune network of Laparoflow-SSL (paper App. D.1; Zhang et al. 2020).

    image float (B, H, W, 3) in [0, 1] → features (B, ceil(H/4), ceil(W/4), features[-1]),
    ≥ 0: each layer a 3×3 conv with stride 2, padding 1, then ReLU. The strides are our
    choice (see the module docstring): they put the output on the representation's grid.

    Attributes:
      features: kernels per layer, (64, 128) in the paper.
      stride: stride of every layer (2 → a 1/4 grid for two layers).
      dtype: computation dtype; params float32.
    """

    features: Sequence[int] = (64, 128)
    stride: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array) -> Array:
        x = image
        for i, f in enumerate(self.features):
            x = nn.relu(Conv2d(f, 3, stride=self.stride, dtype=self.dtype, name=f"conv_{i}")(x))
        return x


def _head_forward(
    image: Array,
    rep: Array,
    out_features: int,
    features: Sequence[int],
    side_features: Sequence[int] | None,
    dtype: Dtype,
) -> Array:
    """Shared body, called inside a compact ``__call__`` (submodules attach to that module):
    [rep, side(image)] → 3×3 conv+ReLU stack → 1×1 conv → logits upsampled to (H, W)."""
    _check_inputs(image, rep)
    grid = rep.shape[1:3]
    x = rep.astype(dtype)
    if side_features:
        side = SideTuneNetwork(tuple(side_features), dtype=dtype, name="side_tune")(image)
        x = jnp.concatenate([x, match_grid(side, grid).astype(dtype)], axis=-1)
    for i, f in enumerate(features):
        x = ConvReLU(f, 3, dtype=dtype, name=f"conv_{i}")(x)
    logits = Conv2d(out_features, 1, dtype=dtype, name="classifier")(x)
    return resize_bilinear(logits.astype(jnp.float32), image.shape[1:3], precision=lax.Precision.HIGHEST)


class SideTuneSegmentationHead(nn.Module):
    """Laparoflow-SSL semantic-segmentation head with a side-tune network (paper App. D.1).

    ``__call__(image, rep) -> logits``:
      image: float (B, H, W, 3) in [0, 1] (any H, W, odd included).
      rep: float (B, ceil(H/4), ceil(W/4), D) backbone representation (D = 256 in the paper);
        a grid off by one from ceil(H/4) (rounding) is cropped/edge-padded to.
      logits: float32 (B, H, W, num_classes), pre-softmax (the loss applies the softmax).

    Architecture: side = SideTuneNetwork(side_features)(image) (stride 2 twice, on rep's grid);
    x = concat[rep, side] (D + side_features[-1] = 256 + 128 channels); two 3×3 convs of
    ``head_features`` (256, 256) each + ReLU; a 1×1 conv to ``num_classes``; bilinear
    upsampling (align_corners=False) to (H, W). Runs at 1/4 resolution: the paper leaves the
    resolution unstated, its 39 fps at 1080p implies it.

    Params: ``side_tune/conv_{0,1}``, ``conv_{0,1}``, ``classifier`` (each ``kernel``, ``bias``).

    Raises:
      ValueError: image not (B, H, W, 3), rep not 4-D, batch sizes differ, or rep's grid
        more than one cell off the image's 1/4 grid.
    """

    num_classes: int
    side_features: Sequence[int] = (64, 128)
    head_features: Sequence[int] = (256, 256)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, rep: Array) -> Array:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        return _head_forward(image, rep, self.num_classes, self.head_features, self.side_features, self.dtype)


class KeypointHead(nn.Module):
    """Laparoflow-SSL key-point (instrument pose) detection head (paper Sec. 2.4, App. D.1).

    ``__call__(image, rep) -> logits``:
      image: float (B, H, W, 3) in [0, 1].
      rep: float (B, ceil(H/4), ceil(W/4), D), D = 256 in the paper.
      logits: float32 (B, H, W, num_keypoints), pre-sigmoid heatmap logits, one channel per
        key-point type (EndoVis 2015 order: LeftClasper, RightClasper, Head, ShaftEnd).

    Architecture ("narrow rather than shallow"): x = rep, or concat[rep, side-tune(image)]
    (256 + 128 channels, the same side-tune network as the segmentation head) when
    ``use_side_tune``; ``depth`` 3×3 convs of ``features`` (7 × 16) each + ReLU; a 1×1 conv
    to ``num_keypoints``; bilinear upsampling (align_corners=False) to (H, W). The paper's
    Table 2 reports both a "LSSL side-tune" row and a plain frozen-backbone row
    ("Laparoflow-SSL"), the latter presumably ``use_side_tune=False``.

    Params: ``side_tune/conv_{0,1}`` (when used), ``conv_0`` … ``conv_{depth-1}``, ``classifier``.

    Raises:
      ValueError: as ``SideTuneSegmentationHead``; also num_keypoints < 1 or depth < 0.
    """

    num_keypoints: int = 4
    features: int = 16
    depth: int = 7
    use_side_tune: bool = True
    side_features: Sequence[int] = (64, 128)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, rep: Array) -> Array:
        if self.num_keypoints < 1 or self.depth < 0:
            raise ValueError(f"need num_keypoints >= 1 and depth >= 0, got {self.num_keypoints} and {self.depth}")
        side = tuple(self.side_features) if self.use_side_tune else None
        return _head_forward(image, rep, self.num_keypoints, (self.features,) * self.depth, side, self.dtype)


class LinearProbeHead(nn.Module):
    """A linear probe of frozen pixel representations: a 1×1 conv (per-pixel linear map with
    bias) from the representation to ``num_classes`` logits, upsampled to the image.

    ``__call__(image, rep) -> logits``:
      image: float (B, H, W, 3) in [0, 1]; only its size is used (no side-tune network).
      rep: float (B, ceil(H/4), ceil(W/4), D) backbone representation (D = 256).
      logits: float32 (B, H, W, num_classes), pre-softmax; bilinear upsampling
        (align_corners=False) from the 1/4 grid, as the other heads.

    Params: ``classifier`` (``kernel`` (1, 1, D, num_classes), ``bias``): D·K + K scalars.

    Raises:
      ValueError: as ``SideTuneSegmentationHead``; num_classes < 1.
    """

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, rep: Array) -> Array:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        return _head_forward(image, rep, self.num_classes, (), None, self.dtype)


def count_params(params: Any) -> int:
    """Total number of scalars in a params pytree."""
    return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
