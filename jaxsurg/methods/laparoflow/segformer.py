"""SegFormer: the Mix Transformer (MiT) encoder and the all-MLP decoder, as a pixel-representation backbone.

Source: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers" (NeurIPS 2021), Sec. 3.1 (hierarchical MiT encoder: overlapping patch merging,
efficient self-attention Eq. (2), Mix-FFN Eq. (3)) and Sec. 3.2 (all-MLP decoder, Eq. (4)).
Used by Laparoflow-SSL (Moens et al. 2024, Sec. 2.4) as the representation backbone: SegFormer-B0
with the class softmax removed and a 256-d per-pixel output at 1/4 of the input resolution.

The layout follows the Hugging Face ``transformers`` implementation (``SegformerModel``,
``SegformerDecodeHead``) operation for operation, so its checkpoints convert 1:1
(``jaxsurg.methods.laparoflow.hf_segformer.load_segformer``):

- stage i: overlapping patch embedding (conv k7/s4/p3 for stage 0, k3/s2/p1 after, then
  LayerNorm); ``depths[i]`` pre-norm blocks ``x + DropPath(Attn(LN(x)))``,
  ``x + DropPath(MixFFN(LN(x)))``; a LayerNorm.
- efficient self-attention: queries from all N tokens; keys/values from the map reduced by a
  Conv(k = sr, s = sr) + LayerNorm (none when sr = 1); qkv with bias; scale 1/√head_dim.
- Mix-FFN: fc1 → depthwise 3×3 conv → GELU (exact, erf) → fc2.
- decoder: per-stage Linear to ``decoder_dim``, bilinear upsampling (PyTorch
  ``align_corners=False``) to the stage-0 grid, concatenation (c4, c3, c2, c1), 1×1 conv
  without bias + BatchNorm + ReLU, dropout, 1×1 "classifier" conv to ``out_dim``.

All LayerNorms use ε = 1e-5 (PyTorch's default, which HF uses); BatchNorm ε = 1e-5, momentum
0.1 in PyTorch's convention (Flax ``momentum=0.9``). Stochastic depth rates increase linearly
over the blocks, ``drop_path · k / (Σdepths − 1)`` for block k, as HF does.

Everything is NHWC; parameters are float32 and cast to the computation ``dtype``; softmax,
normalisations and the outputs are float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsurg.models.vgg import imagenet_normalize
from jaxsurg.ops.resize import resize_bilinear

Array = jax.Array
Dtype = Any

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, used by every LayerNorm of HF SegFormer
BN_EPS = 1e-5

# Hugging Face / NVIDIA MiT variants (nvidia/mit-b0 … mit-b5 configs).
MIT_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "decoder_dim": 256},
    "b1": {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "decoder_dim": 256},
    "b2": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "decoder_dim": 768},
    "b3": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 18, 3), "decoder_dim": 768},
    "b4": {"embed_dims": (64, 128, 320, 512), "depths": (3, 8, 27, 3), "decoder_dim": 768},
    "b5": {"embed_dims": (64, 128, 320, 512), "depths": (3, 6, 40, 3), "decoder_dim": 768},
}

# Initialisers of the original SegFormer (mmseg MiT): Linear trunc-normal σ = 0.02, zero bias;
# Conv normal with σ = √(2 / fan_out); LayerNorm 1 / 0.
_dense_init = nn.initializers.truncated_normal(0.02)
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def _dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=_dense_init, name=name)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): zero a residual branch per sample with probability
    ``rate`` and scale survivors by 1/(1 − rate); identity when not training or rate = 0.

    ``__call__(x, *, train)``: x (B, ...) → same shape; uses the ``'dropout'`` rng when training.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with spatially reduced keys/values (SegFormer Eq. (2), from PVT).

    ``__call__(x)``: x (B, H, W, C) → (B, H, W, C). Queries come from all N = H·W tokens; keys
    and values from the map after Conv(k = sr, s = sr) + LayerNorm, i.e. M = ⌊H/sr⌋·⌊W/sr⌋
    tokens (M = N when sr = 1). Attention ``softmax(q kᵀ / √d) v`` as einsums over
    (B, heads, N, M), softmax in float32.

    Params: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (Dense with bias) and, when sr > 1,
    ``sequence_reduction/{sequence_reduction (Conv sr×sr), layer_norm}``.
    """

    dim: int
    num_heads: int
    sr_ratio: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, _c = x.shape
        if self.dim % self.num_heads:
            raise ValueError(f"embed dim {self.dim} is not divisible by num_heads={self.num_heads}")
        d = self.dim // self.num_heads
        q = _dense(self.dim, "q_proj", self.dtype)(x).reshape(b, h * w, self.num_heads, d)
        kv = x
        if self.sr_ratio > 1:
            kv = SequenceReduction(self.dim, self.sr_ratio, self.dtype, name="sequence_reduction")(x)
        m = kv.shape[1] * kv.shape[2]
        k = _dense(self.dim, "k_proj", self.dtype)(kv).reshape(b, m, self.num_heads, d)
        v = _dense(self.dim, "v_proj", self.dtype)(kv).reshape(b, m, self.num_heads, d)
        logits = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32) * (d**-0.5)
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhnm,bmhd->bnhd", attn, v).reshape(b, h, w, self.dim)
        return _dense(self.dim, "o_proj", self.dtype)(out)


class SequenceReduction(nn.Module):
    """Key/value reduction of efficient attention: Conv(k = s = sr, no padding) + LayerNorm.

    ``__call__(x)``: (B, H, W, C) → (B, ⌊H/sr⌋, ⌊W/sr⌋, C).
    Params: ``sequence_reduction`` (Conv kernel (sr, sr, C, C), bias), ``layer_norm``.
    """

    dim: int
    sr_ratio: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = self.sr_ratio
        x = nn.Conv(self.dim, (s, s), strides=(s, s), padding="VALID", dtype=self.dtype,
                    kernel_init=_conv_init, name="sequence_reduction")(x)
        return _layer_norm("layer_norm", self.dtype)(x)


class MixFFN(nn.Module):
    """Mix-FFN (SegFormer Eq. (3)): fc1 → depthwise 3×3 conv (padding 1) → GELU (erf) → fc2.

    ``__call__(x)``: (B, H, W, C) → (B, H, W, C); hidden width ``hidden_dim``.
    Params: ``fc1``, ``dwconv`` (kernel (3, 3, 1, hidden), bias), ``fc2``.
    """

    dim: int
    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _dense(self.hidden_dim, "fc1", self.dtype)(x)
        x = nn.Conv(self.hidden_dim, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.hidden_dim,
                    dtype=self.dtype, kernel_init=_conv_init, name="dwconv")(x)
        x = jax.nn.gelu(x, approximate=False)
        return _dense(self.dim, "fc2", self.dtype)(x)


class MiTBlock(nn.Module):
    """Pre-norm transformer block of MiT (HF ``SegformerLayer``).

    ``__call__(x, *, train)``: (B, H, W, C) → same;
    ``x = x + DropPath(Attn(LN(x)));  x = x + DropPath(MixFFN(LN(x)))``.
    Params: ``layernorm_before``, ``attention``, ``layernorm_after``, ``mlp``.
    """

    dim: int
    num_heads: int
    sr_ratio: int
    mlp_ratio: float
    drop_path: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        drop = DropPath(self.drop_path)
        y = _layer_norm("layernorm_before", self.dtype)(x)
        y = EfficientSelfAttention(self.dim, self.num_heads, self.sr_ratio, self.dtype, name="attention")(y)
        x = x + drop(y, train=train)
        y = _layer_norm("layernorm_after", self.dtype)(x)
        y = MixFFN(self.dim, int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + drop(y, train=train)


class OverlapPatchEmbedding(nn.Module):
    """Overlapping patch merging (SegFormer Sec. 3.1): Conv(k, stride s, padding k // 2) + LayerNorm.

    ``__call__(x)``: (B, H, W, Cin) → (B, ⌊(H − 1)/s⌋ + 1, ⌊(W − 1)/s⌋ + 1, dim) for odd k
    (= ⌈H/s⌉). Params: ``proj`` (kernel (k, k, Cin, dim), bias), ``layer_norm``.
    """

    dim: int
    patch_size: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, p = self.patch_size, self.stride, self.patch_size // 2
        x = nn.Conv(self.dim, (k, k), strides=(s, s), padding=((p, p), (p, p)), dtype=self.dtype,
                    kernel_init=_conv_init, name="proj")(x)
        return _layer_norm("layer_norm", self.dtype)(x)


class MiTStage(nn.Module):
    """One MiT stage (HF ``SegformerStage``): patch embedding → ``len(drop_paths)`` blocks → LayerNorm.

    ``__call__(x, *, train)``: (B, H, W, Cin) → (B, H', W', dim), H' = ⌊(H + 2·(k//2) − k)/s⌋ + 1.
    Params: ``patch_embeddings``, ``blocks_{j}``, ``layer_norm``.
    """

    dim: int
    num_heads: int
    sr_ratio: int
    mlp_ratio: float
    patch_size: int
    stride: int
    drop_paths: tuple[float, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        x = OverlapPatchEmbedding(self.dim, self.patch_size, self.stride, self.dtype, name="patch_embeddings")(x)
        for j, rate in enumerate(self.drop_paths):
            x = MiTBlock(self.dim, self.num_heads, self.sr_ratio, self.mlp_ratio, rate, self.dtype,
                         name=f"blocks_{j}")(x, train=train)
        return _layer_norm("layer_norm", self.dtype)(x)


class MiTEncoder(nn.Module):
    """Mix Transformer encoder (SegFormer Sec. 3.1; HF ``SegformerModel``), NHWC.

    ``__call__(x, *, train=False)`` with x float (B, H, W, 3) RGB in [0, 1] returns the four
    stage outputs ``(c1, c2, c3, c4)``, each float32 (B, H_i, W_i, embed_dims[i]) with
    H_1 = ⌈H/4⌉ and H_{i+1} = ⌈H_i/2⌉ (likewise W): strides 4, 8, 16, 32 for multiples of 32.
    With ``imagenet_normalize`` (default) x is normalised inside with the ImageNet mean/std
    (``jaxsurg.models.vgg.imagenet_normalize``, what HF's ``SegformerImageProcessor`` does
    after rescaling to [0, 1]); otherwise x is used as given.

    Raises ValueError naming the shape when x is not (B, H, W, 3) or is too small for the
    key/value reduction of some stage (needs H_i ≥ sr_ratios[i] and W_i ≥ sr_ratios[i];
    for B0, H and W ≥ 29).

    Attributes:
      embed_dims, depths, num_heads, sr_ratios, mlp_ratio, patch_sizes, strides: sizes per
        stage (defaults MiT-B0: (32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8), (8, 4, 2, 1),
        4, (7, 3, 3, 3), (4, 2, 2, 2)); patch-embedding padding is patch_size // 2.
      drop_path: maximum stochastic-depth rate (last block); 0.1 as SegFormer.
      imagenet_normalize: normalise the [0, 1] input with ImageNet mean/std inside.
      dtype: computation dtype (params float32).

    Params: ``stage_{i}/{patch_embeddings/{proj, layer_norm}, blocks_{j}, layer_norm}``.
    Training (``train=True``) needs a ``'dropout'`` rng when drop_path > 0.
    """

    embed_dims: Sequence[int] = (32, 64, 160, 256)
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    sr_ratios: Sequence[int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    patch_sizes: Sequence[int] = (7, 3, 3, 3)
    strides: Sequence[int] = (4, 2, 2, 2)
    drop_path: float = 0.1
    imagenet_normalize: bool = True
    dtype: Dtype = jnp.float32

    def stage_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(H_i, W_i) of the four stage outputs for an input of height × width pixels."""
        shapes = []
        for k, s in zip(self.patch_sizes, self.strides):
            height, width = _conv_out(height, k, s, k // 2), _conv_out(width, k, s, k // 2)
            shapes.append((height, width))
        return shapes

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, ...]:
        n = len(self.embed_dims)
        lengths = {len(v) for v in (self.depths, self.num_heads, self.sr_ratios, self.patch_sizes, self.strides)}
        if lengths != {n}:
            raise ValueError(
                "MiTEncoder: embed_dims, depths, num_heads, sr_ratios, patch_sizes and strides need the same "
                f"length, got {self.embed_dims}, {self.depths}, {self.num_heads}, {self.sr_ratios}, "
                f"{self.patch_sizes}, {self.strides}"
            )
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MiTEncoder expects x of shape (B, H, W, 3), got {x.shape}")
        for i, ((h, w), sr) in enumerate(zip(self.stage_shapes(x.shape[1], x.shape[2]), self.sr_ratios)):
            if h < sr or w < sr:
                raise ValueError(
                    f"MiTEncoder: input {x.shape[1]}×{x.shape[2]} is too small: stage {i} is {h}×{w}, "
                    f"smaller than its key/value reduction ratio {sr}"
                )
        if self.imagenet_normalize:
            x = imagenet_normalize(x)
        x = x.astype(self.dtype)
        total = sum(self.depths)
        rates = [self.drop_path * k / max(total - 1, 1) for k in range(total)]
        outs, k = [], 0
        for i in range(n):
            x = MiTStage(
                self.embed_dims[i], self.num_heads[i], self.sr_ratios[i], self.mlp_ratio, self.patch_sizes[i],
                self.strides[i], tuple(rates[k:k + self.depths[i]]), self.dtype, name=f"stage_{i}",
            )(x, train=train)
            k += self.depths[i]
            outs.append(x.astype(jnp.float32))
        return tuple(outs)


class SegFormerDecodeHead(nn.Module):
    """All-MLP decoder of SegFormer (Sec. 3.2, Eq. (4); HF ``SegformerDecodeHead``).

    ``__call__(features, *, train)``: the encoder outputs ``(c1, …, c4)``, c_i (B, H_i, W_i, C_i),
    → (B, H_1, W_1, out_dim) float32 logits. Each c_i → Linear(C_i, decoder_dim) → bilinear
    upsampling to (H_1, W_1) (PyTorch ``align_corners=False``, ``jaxsurg.ops.resize.resize_bilinear``);
    concatenated in the order (c4, c3, c2, c1) → 1×1 conv without bias (``linear_fuse``) →
    BatchNorm → ReLU → dropout(``dropout``) → 1×1 conv with bias (``classifier``).

    Params: ``linear_projections_{i}`` (Dense), ``linear_fuse`` (Dense, no bias — a 1×1 conv),
    ``batch_norm`` {scale, bias}, ``classifier`` (Dense). ``batch_stats``: ``batch_norm``
    {mean, var}. BatchNorm uses batch statistics and updates the running ones when ``train``
    (pass ``mutable=['batch_stats']``); dropout then needs the ``'dropout'`` rng.
    Init: Linear trunc-normal σ = 0.02; ``linear_fuse`` He-normal (fan_out); ``classifier``
    normal σ = 0.01 (mmseg's ``conv_seg``); zero biases.
    """

    decoder_dim: int = 256
    out_dim: int = 256
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[Array], *, train: bool = False) -> Array:
        h, w = features[0].shape[1:3]
        ups = []
        for i, f in enumerate(features):
            y = _dense(self.decoder_dim, f"linear_projections_{i}", self.dtype)(f.astype(self.dtype))
            ups.append(resize_bilinear(y, (h, w)))
        x = jnp.concatenate(ups[::-1], axis=-1)
        x = nn.Dense(self.decoder_dim, use_bias=False, dtype=self.dtype,
                     kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name="linear_fuse")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, dtype=self.dtype,
                         name="batch_norm")(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01), name="classifier")(x)
        return x.astype(jnp.float32)


class SegFormer(nn.Module):
    """SegFormer as a per-pixel representation backbone (Laparoflow-SSL, Moens et al. 2024, Sec. 2.4).

    HF ``SegformerForSemanticSegmentation`` without the class softmax (and without its final
    upsampling of the logits): ``MiTEncoder`` → ``SegFormerDecodeHead`` with ``out_dim``
    output channels, optionally L2-normalised.

    ``__call__(x, *, train=False)``:
      x: float (B, H, W, 3) RGB in [0, 1], any H, W ≥ 29 for B0 (not only multiples of 32);
        ImageNet mean/std normalisation happens inside (as ``VGG11Encoder``).
      returns: float32 (B, ⌈H/4⌉, ⌈W/4⌉, out_dim); unit L2 norm along the last axis when
        ``normalize`` (z / max(‖z‖, 1e-12)), raw decoder logits otherwise.
      train: stochastic depth, decoder dropout (``'dropout'`` rng) and BatchNorm batch
        statistics (``mutable=['batch_stats']``).

    Raises ValueError naming the shape for a wrong input (see ``MiTEncoder``).

    Attributes: the ``MiTEncoder`` sizes (defaults MiT-B0, see ``MIT_VARIANTS``),
      ``decoder_dim`` (256 for B0/B1, 768 for B2–B5), ``out_dim`` (256, the representation
      size), ``drop_path`` (0.1), ``dropout`` (decoder dropout, 0.1), ``normalize`` (True),
      ``dtype`` (computation dtype; params float32).

    Params: ``encoder`` (``MiTEncoder``), ``decode_head`` (``SegFormerDecodeHead``). B0 with
    out_dim 256 has 3,779,936 parameters (as HF; paper: 3.7 M), plus 512 BatchNorm statistics.
    """

    embed_dims: Sequence[int] = (32, 64, 160, 256)
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    sr_ratios: Sequence[int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    patch_sizes: Sequence[int] = (7, 3, 3, 3)
    strides: Sequence[int] = (4, 2, 2, 2)
    drop_path: float = 0.1
    decoder_dim: int = 256
    out_dim: int = 256
    dropout: float = 0.1
    normalize: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        feats = MiTEncoder(
            self.embed_dims, self.depths, self.num_heads, self.sr_ratios, self.mlp_ratio, self.patch_sizes,
            self.strides, self.drop_path, imagenet_normalize=True, dtype=self.dtype, name="encoder",
        )(x, train=train)
        z = SegFormerDecodeHead(self.decoder_dim, self.out_dim, self.dropout, self.dtype, name="decode_head")(
            feats, train=train
        )
        if self.normalize:
            z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        return z


def segformer(variant: str = "b0", **overrides: Any) -> SegFormer:
    """A ``SegFormer`` with the sizes of MiT-``variant`` (``"b0"`` … ``"b5"``, see ``MIT_VARIANTS``).

    ``overrides`` set any other ``SegFormer`` field (``out_dim``, ``drop_path``, ``dtype`` …).
    Raises ValueError for an unknown variant.
    """
    if variant not in MIT_VARIANTS:
        raise ValueError(f"segformer: variant={variant!r} is unknown; known: {sorted(MIT_VARIANTS)}")
    return SegFormer(**{**MIT_VARIANTS[variant], **overrides})


def segformer_b0(**overrides: Any) -> SegFormer:
    """``segformer("b0", **overrides)``: MiT-B0 with a 256-d decoder (the Laparoflow-SSL backbone)."""
    return segformer("b0", **overrides)
