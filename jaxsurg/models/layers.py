"""Convolution layers with PyTorch semantics and a fast, exact 2× transposed convolution.

Everything here is NHWC. Parameters are stored float32 (``param_dtype``) and cast to the
computation ``dtype`` (e.g. ``jnp.bfloat16`` on TPU) at use.

``ConvTranspose4x4s2`` is ``torch.nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2,
padding=1)`` (the up-sampling of TernausNet's decoder blocks) written as ONE ordinary
stride-1 2×2 convolution plus a phase interleave, with a hand-written exact backward (a
stride-2 convolution for the input, the 2×2 convolution's weight gradient for the kernel).
The textbook formulation (a convolution of the 2×-dilated input, what
``jax.lax.conv_transpose`` and ``flax.linen.ConvTranspose`` do) has a backward pass that
XLA:CPU runs 15–30× slower than PyTorch; nothing here dilates its input.
See ``conv_transpose_4x4_s2`` for the derivation.

``bias_add`` (used by every layer here that has a bias) is ``y + bias`` with a bias gradient
that XLA:CPU computes as a dot instead of a slow tree reduction.

``winograd_conv3x3`` is the 3×3 'same' convolution as Winograd F(2×2, 3×3) (2.25× fewer
multiplications), selectable per layer (``Conv2d(impl="winograd")``) or while tracing
(``conv3x3_impl``); the default stays ``lax.conv_general_dilated``, faster on XLA:CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def torch_uniform_init(fan_in: int) -> Initializer:
    """PyTorch's default initialiser for conv weights and biases: U(−1/√fan_in, 1/√fan_in).

    (``kaiming_uniform_(a=√5)`` on the weight reduces to this bound; the bias uses the same.)
    For ``Conv2d`` fan_in = cin·k·k; for ``ConvTranspose2d`` PyTorch uses cout·k·k.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ----------------------------------------------------------------------------- 3×3 convs

# A trace-time override of every ``impl="default"`` 3×3 convolution; see ``conv3x3_impl``.
_IMPL_OVERRIDE: list[str] = []
_CONV_IMPLS = ("default", "direct", "winograd")


class conv3x3_impl:  # lower case: a context manager used like a function
    """Context manager: 3×3 convolutions traced inside with ``impl="default"`` use ``impl``.

    ``with conv3x3_impl("winograd"): compiled = jax.jit(f).lower(...).compile()`` traces
    every ``Conv2d`` / ``ConvReLU`` / ``conv2d`` with a 3×3 kernel and the default ``impl``
    inside with ``winograd_conv3x3`` instead of ``lax.conv_general_dilated``; e.g. to A/B
    the formulations in one model without changing it (``benchmarks/unet11_train_step.py
    --conv3x3``). Only tracing consults it: an already compiled function keeps its
    formulation. Both compute the same function up to float32 rounding.

    Raises:
      ValueError: ``impl`` not "direct" or "winograd".
    """

    def __init__(self, impl: str):
        if impl not in ("direct", "winograd"):
            raise ValueError(f"impl must be 'direct' or 'winograd', got {impl!r}")
        self.impl = impl

    def __enter__(self):
        _IMPL_OVERRIDE.append(self.impl)
        return self

    def __exit__(self, *exc):
        _IMPL_OVERRIDE.pop()


def _winograd_bt(d0: Array, d1: Array, d2: Array, d3: Array) -> tuple[Array, Array, Array, Array]:
    """Bᵀ·d along one axis for F(2, 3): Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _winograd_g(g0: Array, g1: Array, g2: Array) -> tuple[Array, Array, Array, Array]:
    """G·g along one axis for F(2, 3): G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


def _winograd_at(m0: Array, m1: Array, m2: Array, m3: Array) -> tuple[Array, Array]:
    """Aᵀ·m along one axis for F(2, 3): Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]."""
    return m0 + m1 + m2, m1 - m2 - m3


def winograd_conv3x3(x: Array, kernel: Array) -> Array:
    """3×3 stride-1 'same' (zero padding 1) cross-correlation by Winograd F(2×2, 3×3).

    Source: Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016),
    eq. (8): each 2×2 output tile is Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, d the 4×4 input tile
    (tiles overlap by 2), summed over input channels — which makes the channel sum 16
    independent GEMMs (one per element ξ of the 4×4 transformed tile):

        M[ξ] = V[ξ] @ U[ξ],   V[ξ] = (Bᵀ d B)[ξ] over tiles: (T, Cin),
                              U[ξ] = (G g Gᵀ)[ξ]: (Cin, Cout),   T = N·⌈H/2⌉·⌈W/2⌉,

    i.e. 16·Cin·Cout multiply-adds per 2×2 tile instead of 36·Cin·Cout (2.25× fewer), the
    transforms costing O(16·(Cin + Cout)) adds per tile. The function is linear in x and in
    kernel, so its reverse-mode derivative (left to XLA) is Winograd too: the input
    gradient is 16 GEMMs (T, Cout) @ (Cout, Cin) between the same transforms' adjoints, the
    kernel gradient 16 GEMMs (Cin, T) @ (T, Cout) followed by Gᵀ(·)G — no im2col, no
    transposed-activation convolution. Exact in real arithmetic; in float32 it differs from
    the direct convolution by rounding (relative ~1e-6 for O(1) data; the ½ in G is exact).

    On XLA:CPU (2-core AVX-512 VM, jaxlib 0.10.2) it is NOT faster overall for U-Net11: the
    forward wins on some mid-size layers (e.g. 4×16×20, 256 → 512: 18 vs 34 ms) but the
    transforms are memory-bound elementwise fusions over 4× the activation size, and the
    derivatives lose 1.5–4× on most layers (``benchmarks/README.md``). Hence ``conv2d``
    defaults to the direct convolution; this is kept for A/B measurements and other
    backends.
    Odd H or W: the padded input gets one more zero row/column and the extra output is
    cropped.

    Args:
      x: (N, H, W, Cin) float.
      kernel: (3, 3, Cin, Cout), ``kernel[ky, kx, ci, co]`` (HWIO, PyTorch weight
        transposed by (2, 3, 1, 0)), same dtype as x.

    Returns:
      (N, H, W, Cout) in x's dtype: y[n, i, j, co] = Σ x_pad[n, i + ky, j + kx, ci]·kernel[ky, kx, ci, co].

    Raises:
      ValueError: x not rank 4, or kernel not (3, 3, Cin, Cout) for x's Cin.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[:3] != (3, 3, x.shape[-1]):
        raise ValueError(f"need x (N, H, W, Cin) and kernel (3, 3, Cin, Cout), got {x.shape} and {kernel.shape}")
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    th, tw = (h + 1) // 2, (w + 1) // 2  # 2×2 output tiles
    # Padded input (N, 2·th + 2, 2·tw + 2, Cin); tile (a, b) reads rows 2a … 2a + 3.
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    rows = _winograd_bt(*(xp[:, r : r + 2 * th : 2] for r in range(4)))  # each (N, th, 2tw + 2, Cin)
    v = [c for r in rows for c in _winograd_bt(*(r[:, :, s : s + 2 * tw : 2] for s in range(4)))]
    v = jnp.stack(v).reshape(16, n * th * tw, cin)  # V[ξ = 4·α + β, tile, ci]
    grows = _winograd_g(kernel[0], kernel[1], kernel[2])  # each (3, Cin, Cout) over kx
    u = jnp.stack([c for r in grows for c in _winograd_g(r[0], r[1], r[2])])  # (16, Cin, Cout)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,)))).reshape(4, 4, n, th, tw, cout)
    orow = _winograd_at(m[0], m[1], m[2], m[3])  # each (4, N, th, tw, Cout) over β
    out = jnp.stack([jnp.stack(_winograd_at(r[0], r[1], r[2], r[3])) for r in orow])  # (ry, rx, N, th, tw, Cout)
    y = jnp.transpose(out, (2, 3, 0, 4, 1, 5)).reshape(n, 2 * th, 2 * tw, cout)
    return y[:, :h, :w]


@jax.custom_jvp
def bias_add(y: Array, bias: Array) -> Array:
    """``y + bias`` over the last axis, whose bias gradient is a matrix–vector product.

    Args:
      y: (..., C), any float dtype.
      bias: (C,), same dtype.

    Returns:
      (..., C): ``y + bias``, exactly.

    The value and both derivatives are those of ``y + bias``; only how the bias gradient is
    computed changes. Differentiated as written, the bias gradient is a sum over every
    leading axis, which XLA:CPU lowers to a reduce-window tree reduction that reads at
    ~1.5 GB/s; here the tangent's broadcast of ``bias`` is an outer product with a ones
    vector, so its transpose (the reverse-mode bias gradient) is the product
    ones(M) · g(M, C), which XLA runs as a dot at memory speed: 3–7× faster for
    U-Net11's layers (e.g. (4, 64, 80, 128): 3.4 ms → 0.5 ms on a 2-core CPU;
    ``benchmarks/README.md``). Forward mode (``jax.jvp``) works too. Summation order differs
    from ``sum``, so the gradient agrees to float rounding (~1e-6 relative).

    Not from a paper: an implementation detail of every biased layer here (Conv2d, ConvReLU,
    ConvTranspose4x4s2), equal to PyTorch's ``conv2d(..., bias)``.

    Raises:
      ValueError: ``bias`` does not broadcast against ``y``'s last axis (from the addition).
    """
    return y + bias


@bias_add.defjvp
def _bias_add_jvp(primals, tangents):
    (y, bias), (ty, tbias) = primals, tangents
    rows = math.prod(y.shape[:-1])
    # Outer product ones(rows) ⊗ tbias: a dot_general with no contraction, whose transpose
    # with respect to tbias is the contraction of the cotangent with ones over the rows.
    broadcast = lax.dot_general(jnp.ones((rows,), tbias.dtype), tbias, (((), ()), ((), ())))
    return y + bias, ty + broadcast.reshape(y.shape)


def conv2d(x: Array, kernel: Array, bias: Array | None = None, *, stride: int = 1, impl: str = "default") -> Array:
    """'Same'-padded convolution (cross-correlation, as PyTorch), odd square kernel:
    ``torch.nn.functional.conv2d(x, w, b, stride, padding=(k − 1) // 2)``.

    Args:
      x: (N, H, W, Cin).
      kernel: (k, k, Cin, Cout), k odd; zero padding (k − 1)/2 on every side.
      bias: optional (Cout,).
      stride: s ≥ 1; the output is (N, ⌊(H − 1)/s⌋ + 1, ⌊(W − 1)/s⌋ + 1, Cout). Strided
        convolutions are always direct.
      impl: "direct" (``lax.conv_general_dilated``), "winograd" (``winograd_conv3x3``; 3×3
        kernels only) or "default": direct, unless traced inside ``conv3x3_impl(...)`` and
        the kernel is 3×3. Direct is the default because it is the faster of the two on
        XLA:CPU for U-Net11's layers once the backward pass is counted
        (``benchmarks/README.md``). Both compute the same function up to float32 rounding.

    Returns:
      (N, H', W', Cout) in ``x.dtype`` (H' = H, W' = W at stride 1).

    Raises:
      ValueError: kernel not (k, k, Cin, Cout) with k odd; stride < 1; unknown ``impl``;
        "winograd" with a kernel that is not 3×3 or a stride other than 1.
    """
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 != 1:
        raise ValueError(f"kernel must be (k, k, Cin, Cout) with k odd, got shape {kernel.shape}")
    if stride < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    if impl not in _CONV_IMPLS:
        raise ValueError(f"impl must be one of {_CONV_IMPLS}, got {impl!r}")
    if impl == "default":
        impl = _IMPL_OVERRIDE[-1] if _IMPL_OVERRIDE and kernel.shape[0] == 3 and stride == 1 else "direct"
    if impl == "winograd":
        if stride != 1:
            raise ValueError(f"impl='winograd' computes stride-1 convolutions only, got stride {stride}")
        y = winograd_conv3x3(x, kernel)
    else:
        pad = (kernel.shape[0] - 1) // 2
        y = lax.conv_general_dilated(
            x, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=_DIMENSION_NUMBERS
        )
    return y if bias is None else bias_add(y, bias)


class Conv2d(nn.Module):
    """``torch.nn.Conv2d(cin, features, k, stride, padding=k // 2)`` in NHWC, k odd.

    Params: ``kernel`` (k, k, Cin, features) — the PyTorch weight (features, Cin, k, k)
    transposed by (2, 3, 1, 0) — and ``bias`` (features,). Default initialisation is
    PyTorch's (``torch_uniform_init``).

    Attributes:
      features: output channels.
      kernel_size: k (odd).
      stride: s (1: same size; 2: ⌊(H − 1)/2⌋ + 1 rows, e.g. the side-tune network).
      dtype: computation dtype; input and params are cast to it.
      param_dtype: parameter dtype (float32).
      kernel_init, bias_init: optional initialisers; None = PyTorch's default.
      impl: "default", "direct" or "winograd": the formulation of the convolution, see
        ``conv2d``; all compute the same function up to float32 rounding.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    impl: str = "default"

    def _conv(self, x: Array) -> Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        cin = x.shape[-1]
        default = torch_uniform_init(cin * k * k)
        kernel = self.param("kernel", self.kernel_init or default, (k, k, cin, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init or default, (self.features,), self.param_dtype)
        return conv2d(
            x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype), stride=self.stride, impl=self.impl
        )

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(N, H, W, Cin) → (N, H', W', features) in ``dtype`` (H' = H at stride 1)."""
        return self._conv(x)


class ConvReLU(Conv2d):
    """``Conv2d`` followed by ReLU: TernausNet's ``ConvRelu`` (3×3, padding 1, ReLU)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(N, H, W, Cin) → (N, H, W, features) in ``dtype``, ≥ 0."""
        return nn.relu(self._conv(x))


def phase_kernel(kernel: Array) -> Array:
    """Rearranges a 4×4 transposed-conv kernel into the 2×2 kernel of its four output phases.

    Args:
      kernel: (4, 4, Cin, Cout), ``kernel[ky, kx, ci, co]`` = PyTorch ConvTranspose2d
        ``weight[ci, co, ky, kx]``.

    Returns:
      (2, 2, Cin, 4·Cout) with ``out[ty, tx, ci, (ry, rx, co)] = kernel[3 − ry − 2·ty,
      3 − rx − 2·tx, ci, co]`` (channel index (2·ry + rx)·Cout + co). Every tap of the 4×4
      kernel is used exactly once; no zeros are inserted.
    """
    # kernel[3 − (2·ty + ry)]: flip both spatial axes, then split each as (ty, ry).
    return einops.rearrange(kernel[::-1, ::-1], "(ty ry) (tx rx) ci co -> ty tx ci (ry rx co)", ry=2, rx=2)


def _phase_forward(x: Array, kernel: Array) -> Array:
    """The phase formulation of ``conv_transpose_4x4_s2`` (no bias)."""
    h, w, cout = x.shape[1], x.shape[2], kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    z = lax.conv_general_dilated(xp, phase_kernel(kernel), (1, 1), "VALID", dimension_numbers=_DIMENSION_NUMBERS)
    z = z.reshape(z.shape[:3] + (2, 2, cout))  # (N, H+1, W+1, ry, rx, Cout)
    phases = [z[:, ry : ry + h, rx : rx + w, ry, rx] for ry in (0, 1) for rx in (0, 1)]
    return einops.rearrange(jnp.stack(phases, -2), "n h w (ry rx) c -> n (h ry) (w rx) c", ry=2, rx=2)


@jax.custom_vjp
def _phase_custom_vjp(x: Array, kernel: Array) -> Array:
    return _phase_forward(x, kernel)


def _phase_fwd(x: Array, kernel: Array):
    return _phase_forward(x, kernel), (x, kernel)


def _phase_bwd(res, g: Array):
    x, kernel = res
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    # Kernel gradient: the phase kernel's gradient is the weight gradient of the 2×2 VALID
    # convolution of the one-pixel-padded input x̃ (N, H+2, W+2, Cin) whose output gradient
    # z̄ (the adjoint of the phase interleave) is g padded by one and regrouped into 2×2
    # blocks: z̄[a, b, (ry, rx)] = g_pad[2a + 1 − ry, 2b + 1 − rx], (N, H+1, W+1, 4·Cout).
    # That weight gradient is itself a convolution (the batch contracted, Cin as its batch),
    # which XLA:CPU runs faster than one GEMM over explicit 2×2 patches (whose channel-major
    # copy cost more than the product; U-Net11 dec2, (4, 64, 80, 128) → 32: 43 → 27 ms).
    gp = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    zbar = einops.rearrange(gp, "n (a i) (b j) c -> n a b i j c", i=2, j=2)[:, :, :, ::-1, ::-1]
    zbar = zbar.reshape(n, h + 1, w + 1, 4 * cout)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # out[ty, tx, ci, (ry, rx, co)] = Σ_{n,a,b} x̃[n, a + ty, b + tx, ci] · z̄[n, a, b, (ry, rx, co)]
    dk2 = lax.conv_general_dilated(xp, zbar, (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "HWNC"))
    dk2 = dk2.reshape(2, 2, cin, 2, 2, cout)
    dkernel = einops.rearrange(dk2, "ty tx ci ry rx co -> (ty ry) (tx rx) ci co")[::-1, ::-1]
    # Input gradient: the adjoint of a transposed convolution is the ordinary stride-2
    # convolution with the same kernel (padding 1), read as (kH, kW, out=Cin, in=Cout).
    dx = lax.conv_general_dilated(g, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWOI", "NHWC"))
    return dx, dkernel


_phase_custom_vjp.defvjp(_phase_fwd, _phase_bwd)


def conv_transpose_4x4_s2(x: Array, kernel: Array, bias: Array | None = None, *, impl: str = "phase") -> Array:
    """``torch.nn.functional.conv_transpose2d(x, w, b, stride=2, padding=1)`` for a 4×4 kernel.

    Definition (PyTorch; the gradient of a stride-2 convolution): every input pixel
    scatters a weighted copy of the kernel,

        y[2i − 1 + ky, 2j − 1 + kx, co] += Σ_ci x[i, j, ci] · K[ky, kx, ci, co],

    for ky, kx ∈ [0, 4); output size (2H, 2W).

    Phase (sub-pixel) decomposition, ``impl="phase"``: write an output row as oy = 2m + ry
    (ry ∈ {0, 1}). The input rows i that reach it satisfy ky = oy + 1 − 2i ∈ [0, 4), i.e.
    exactly two rows i = m + ry − 1 + ty (ty ∈ {0, 1}) with ky = 3 − ry − 2·ty; columns
    likewise. So output phase (ry, rx) is a 2×2 correlation of the input whose window starts
    at (m + ry − 1, n + rx − 1). Pad the input by one pixel on every side and run ONE 2×2
    VALID convolution, Cin → 4·Cout channels (``phase_kernel``: the 4×4 kernel, flipped and
    regrouped); its output z has (H + 1) × (W + 1) positions and

        y[2m + ry, 2n + rx, co] = z[m + ry, n + rx, (ry, rx, co)],

    i.e. each phase is a shifted (H, W) window of z, and the four are interleaved into the
    (2H, 2W) output (depth-to-space). Cost: 16·Cin·Cout·(H+1)·(W+1) multiply-adds, the
    direct scatter's count up to the one-pixel border; no multiplications by inserted zeros
    (the dilated-input formulation does 4× the work, a 3×3 'SAME' phase kernel 2.25×).

    Backward (a custom VJP, exact): the input gradient is the adjoint of the transposed
    convolution, the ordinary stride-2, padding-1 convolution of the output gradient with
    the same kernel; the kernel gradient is the weight gradient of the 2×2 phase
    convolution, the padded input against the output gradient regrouped into 2×2 blocks
    (see ``_phase_bwd``). Neither needs input dilation, which is what makes
    ``jax.lax.conv_transpose`` / ``flax.linen.ConvTranspose`` slow on
    XLA:CPU (forward + backward 15× PyTorch's for a 2×112×112×128 → 64 layer, the phase
    form on par with PyTorch; ``benchmarks/README.md``). All results equal PyTorch's up to
    float rounding.

    Args:
      x: (N, H, W, Cin), any float dtype.
      kernel: (4, 4, Cin, Cout); ``kernel[ky, kx, ci, co]`` = PyTorch ``weight[ci, co, ky, kx]``
        (a plain transpose, no flip). Same dtype as x.
      bias: optional (Cout,).
      impl: "phase" (default: phase forward, custom VJP; reverse-mode only, as every
        ``jax.custom_vjp``), "phase_autodiff" (phase forward, XLA's own derivative; also
        supports forward-mode ``jax.jvp``) or "conv_transpose" (``jax.lax.conv_transpose``
        on the 2×-dilated input, what ``flax.linen.ConvTranspose`` does; for comparison).

    Returns:
      (N, 2H, 2W, Cout) in ``x.dtype``.

    Raises:
      ValueError: kernel not (4, 4, Cin, Cout) for the input's Cin, or unknown ``impl``.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[:2] != (4, 4) or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"need x (N, H, W, Cin) and kernel (4, 4, Cin, Cout), got {x.shape} and {kernel.shape}")
    if impl == "phase":
        y = _phase_custom_vjp(x, kernel)
    elif impl == "phase_autodiff":
        y = _phase_forward(x, kernel)
    elif impl == "conv_transpose":
        # The kernel of the stride-2 convolution this transposes maps Cout → Cin: "HWOI".
        y = lax.conv_transpose(
            x, kernel, (2, 2), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWOI", "NHWC"), transpose_kernel=True
        )
    else:
        raise ValueError(f"impl must be 'phase', 'phase_autodiff' or 'conv_transpose', got {impl!r}")
    return y if bias is None else bias_add(y, bias)


class ConvTranspose4x4s2(nn.Module):
    """``torch.nn.ConvTranspose2d(cin, features, kernel_size=4, stride=2, padding=1)``, NHWC.

    (N, H, W, Cin) → (N, 2H, 2W, features), computed exactly by ``conv_transpose_4x4_s2``.

    Params: ``kernel`` (4, 4, Cin, features) — the PyTorch weight (Cin, features, 4, 4)
    transposed by (2, 3, 0, 1) — and ``bias`` (features,). Default initialisation is
    PyTorch's: U(±1/√(features·16)).

    Attributes:
      features: output channels.
      dtype: computation dtype; params float32 (``param_dtype``).
      impl: "phase" (fast, default), "phase_autodiff" or "conv_transpose" (reference
        formulation); see ``conv_transpose_4x4_s2``.
      kernel_init, bias_init: optional initialisers; None = PyTorch's default.
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    impl: str = "phase"
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(N, H, W, Cin) → (N, 2H, 2W, features) in ``dtype``."""
        default = torch_uniform_init(self.features * 16)
        kernel = self.param("kernel", self.kernel_init or default, (4, 4, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init or default, (self.features,), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return conv_transpose_4x4_s2(x, kernel, bias, impl=self.impl)
