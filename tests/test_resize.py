"""Bilinear resizing (jaxsurg.ops.resize) against torch.nn.functional.interpolate(mode="bilinear",
align_corners=False): up, down, non-integer and mixed factors, gradients, the ×2 fast path
against the general form, dtypes and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.ops.resize import resize_bilinear, upsample_bilinear_2x

torch = pytest.importorskip("torch", reason="the reference is torch.nn.functional.interpolate")


def _torch_resize(x: np.ndarray, **kwargs) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    out = torch.nn.functional.interpolate(t, mode="bilinear", align_corners=False, **kwargs)
    return out.numpy().transpose(0, 2, 3, 1)


# (5, 7) → size: ×2 and ×4 up, non-integer up (18/5, 26/7), down (9/5 up with 4/7 down),
# integer down, 1×1 both ways, identity.
@pytest.mark.parametrize("size", [(10, 14), (20, 28), (18, 26), (9, 4), (2, 3), (1, 1), (5, 7)])
def test_resize_bilinear_matches_torch(size):
    x = np.random.default_rng(1).standard_normal((2, 5, 7, 3)).astype(np.float32)
    got = jax.jit(resize_bilinear, static_argnames="size")(jnp.asarray(x), size=size)
    assert got.shape == (2, *size, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _torch_resize(x, size=size), rtol=0, atol=1e-6)


def test_resize_bilinear_from_a_single_pixel_and_downsampling_is_not_antialiased():
    x = np.random.default_rng(2).standard_normal((1, 1, 1, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), (3, 4))), np.broadcast_to(x, (1, 3, 4, 2)))
    # Halving samples at 2o + 0.5: the mean of a 2×2 block — and of nothing further out (an
    # antialiased resize, e.g. jax.image.resize, would also weigh the neighbouring blocks).
    x = np.random.default_rng(3).standard_normal((1, 6, 8, 1)).astype(np.float32)
    blocks = x.reshape(1, 3, 2, 4, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), (3, 4))), blocks, atol=1e-6)
    aa = jax.image.resize(jnp.asarray(x), (1, 3, 4, 1), method="bilinear")
    assert np.abs(np.asarray(aa) - blocks).max() > 1e-2


@pytest.mark.parametrize("size", [(9, 4), (12, 17)])
def test_resize_bilinear_gradient_matches_torch(size):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 5, 7, 2)).astype(np.float32)
    r = rng.standard_normal((1, *size, 2)).astype(np.float32)
    g = jax.grad(lambda a: jnp.sum(resize_bilinear(a, size) * r))(jnp.asarray(x))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    out = torch.nn.functional.interpolate(xt, size=size, mode="bilinear", align_corners=False)
    (out * torch.from_numpy(r.transpose(0, 3, 1, 2).copy())).sum().backward()
    np.testing.assert_allclose(np.asarray(g), xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 5), (4, 2)])
def test_upsample_bilinear_2x_matches_torch_and_resize_bilinear(h, w):
    x = np.random.default_rng(h + w).standard_normal((2, h, w, 3)).astype(np.float32)
    got = jax.jit(upsample_bilinear_2x)(jnp.asarray(x))
    assert got.shape == (2, 2 * h, 2 * w, 3)
    np.testing.assert_allclose(np.asarray(got), _torch_resize(x, scale_factor=2), rtol=0, atol=1e-6)
    general = resize_bilinear(jnp.asarray(x), (2 * h, 2 * w))
    np.testing.assert_allclose(np.asarray(got), np.asarray(general), rtol=0, atol=1e-6)


def test_dtype_is_kept():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 3, 4, 2)), jnp.bfloat16)
    assert resize_bilinear(x, (5, 9)).dtype == jnp.bfloat16
    up = upsample_bilinear_2x(x)
    assert up.dtype == jnp.bfloat16
    # Computed in bfloat16: within a few bfloat16 roundings (8-bit mantissa) of float32.
    ref = np.asarray(upsample_bilinear_2x(x.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(up, np.float32), ref, rtol=0, atol=2**-6 * np.abs(ref).max())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="x of shape"):
        resize_bilinear(jnp.zeros((4, 4, 3)), (8, 8))
    with pytest.raises(ValueError, match="size"):
        resize_bilinear(jnp.zeros((1, 4, 4, 3)), (0, 8))
    with pytest.raises(ValueError, match="size"):
        resize_bilinear(jnp.zeros((1, 4, 4, 3)), (8,))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        upsample_bilinear_2x(jnp.zeros((4, 4, 3)))
