"""U-Net11, its VGG11 encoder, the exact transposed-conv upsampler and the torch converter.

The PyTorch reference models are written here (TernausNet's UNet11 with is_deconv=True and
torchvision's VGG11 ``features`` layout); torchvision itself is not needed.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.models import ConvTranspose4x4s2, UNet11, VGG11Encoder, conv_transpose_4x4_s2
from jaxsurg.models.vgg import IMAGENET_MEAN, IMAGENET_STD
from jaxsurg.weights import torch_convert

import torch_reference  # tests/torch_reference.py


def _torch():
    return pytest.importorskip("torch")


def _nchw(x: np.ndarray):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _imagenet_normalize_nchw(x_nhwc: np.ndarray):
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return _nchw((x_nhwc - mean) / std)


def _state_dict(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- upsampler


@pytest.mark.parametrize("impl", ["phase", "phase_autodiff", "conv_transpose"])
@pytest.mark.parametrize("h, w", [(5, 7), (6, 4), (1, 1)])
def test_upsampler_matches_torch_conv_transpose_values_and_grads(h, w, impl):
    torch = _torch()
    cin, cout = 6, 5
    rng = np.random.default_rng(h * 10 + w)
    x = rng.standard_normal((2, h, w, cin), dtype=np.float32)
    layer = torch.nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
    sd = _state_dict(layer)
    params = {"kernel": sd["weight"].transpose(2, 3, 0, 1), "bias": sd["bias"]}
    g = rng.standard_normal((2, 2 * h, 2 * w, cout), dtype=np.float32)

    xt = _nchw(x).requires_grad_(True)
    yt = layer(xt)
    yt.backward(_nchw(g))

    module = ConvTranspose4x4s2(cout, impl=impl)
    y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, jnp.asarray(x))
    dparams, dx = vjp(jnp.asarray(g))

    assert y.shape == (2, 2 * h, 2 * w, cout)
    np.testing.assert_allclose(y, _nhwc(yt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-5, atol=1e-5)
    dk_torch = layer.weight.grad.numpy().transpose(2, 3, 0, 1)
    np.testing.assert_allclose(dparams["kernel"], dk_torch, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dparams["bias"], layer.bias.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_upsampler_bfloat16_and_bad_arguments():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 3, 5, 4), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((4, 4, 4, 3), dtype=np.float32))
    ref = conv_transpose_4x4_s2(x, k, impl="conv_transpose")
    loss = lambda x, k: jnp.sum(conv_transpose_4x4_s2(x, k).astype(jnp.float32) ** 2)  # noqa: E731
    dx, dk = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    assert dx.dtype == dk.dtype == jnp.bfloat16 and dx.shape == x.shape and dk.shape == k.shape
    y16 = conv_transpose_4x4_s2(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), ref, rtol=0, atol=0.05 * float(jnp.abs(ref).max()))
    with pytest.raises(ValueError, match="kernel"):
        conv_transpose_4x4_s2(x, k[:3])
    with pytest.raises(ValueError, match="impl"):
        conv_transpose_4x4_s2(x, k, impl="dilated")


# ----------------------------------------------------------------------------- U-Net11


@pytest.mark.parametrize("num_classes", [1, 4])
def test_unet11_matches_torch_after_conversion(num_classes):
    torch = _torch()
    torch.manual_seed(num_classes)
    nf = 32
    net = torch_reference.unet11(num_classes, nf).eval()
    model = UNet11(num_classes=num_classes, num_filters=nf)
    x = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)

    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]
    n_jax = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(template))
    assert n_jax == sum(p.numel() for p in net.parameters())
    if num_classes == 1 and nf == 32:
        assert n_jax == 25_364_513

    params = torch_convert.load_unet11(_state_dict(net), template)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
    with torch.no_grad():
        ref = _nhwc(net(_imagenet_normalize_nchw(x)))
    assert out.shape == (2, 64, 64, num_classes) and out.dtype == jnp.float32
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * scale)


def test_unet11_gradients_match_torch():
    torch = _torch()
    torch.manual_seed(7)
    nf, num_classes = 8, 3
    net = torch_reference.unet11(num_classes, nf)
    model = UNet11(num_classes=num_classes, num_filters=nf)
    rng = np.random.default_rng(3)
    x = rng.random((1, 64, 32, 3), dtype=np.float32)
    w = rng.standard_normal((1, 64, 32, num_classes), dtype=np.float32)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)))["params"]
    params = torch_convert.load_unet11(_state_dict(net), template)

    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, jnp.asarray(x)) * w)))(params)
    (net(_imagenet_normalize_nchw(x)) * _nchw(w)).sum().backward()
    torch_grads = torch_convert.load_unet11({k: p.grad for k, p in net.named_parameters()}, template)
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    ref = dict(jax.tree_util.tree_flatten_with_path(torch_grads)[0])
    for path, g in flat:
        r = ref[path]
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-4 * max(np.abs(r).max(), 1e-6), err_msg=str(path))


def test_unet11_init_and_bfloat16_compute():
    model = UNet11(num_classes=2, num_filters=4, dtype=jnp.bfloat16)
    x = jnp.full((1, 32, 64, 3), 0.5)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert set(variables) == {"params"}
    params = variables["params"]
    assert set(params) == {"encoder", "center", "dec5", "dec4", "dec3", "dec2", "dec1", "final"}
    assert params["center"]["deconv"]["kernel"].shape == (4, 4, 64, 32)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    out = jax.jit(model.apply)(variables, x)
    assert out.shape == (1, 32, 64, 2) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("shape", [(1, 48, 64, 3), (1, 64, 40, 3), (64, 64, 3), (1, 64, 64, 1)])
def test_unet11_rejects_bad_input_shape(shape):
    model = UNet11(num_filters=4)
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        model.init(jax.random.PRNGKey(0), jnp.zeros(shape))


# ----------------------------------------------------------------------------- VGG11 / converter


def test_vgg11_features_state_dict_loads_into_encoder():
    torch = _torch()
    torch.manual_seed(0)
    features = torch_reference.vgg11_features().eval()
    sd = {f"features.{k}": v for k, v in _state_dict(features).items()}
    sd["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # ignored
    params = torch_convert.vgg11_encoder_params(sd)
    x = np.random.default_rng(2).random((1, 32, 48, 3), dtype=np.float32)
    feats = jax.jit(VGG11Encoder().apply)({"params": params}, jnp.asarray(x))
    with torch.no_grad():
        refs = torch_reference.vgg_skips(features, _imagenet_normalize_nchw(x))
    assert [f.shape[-1] for f in feats] == [64, 128, 256, 512, 512]
    for got, ref in zip(feats, refs):
        ref = _nhwc(ref)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * max(np.abs(ref).max(), 1e-6))

    # Into a whole U-Net11: only the encoder changes.
    template = jax.eval_shape(UNet11(num_filters=4).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    unet = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template["params"])
    loaded = torch_convert.load_vgg11_encoder(sd, unet)
    np.testing.assert_array_equal(loaded["encoder"]["conv4s"]["kernel"], params["conv4s"]["kernel"])
    assert loaded["dec1"] is unet["dec1"]


def test_converter_reads_pth_files_with_wrappers(tmp_path):
    torch = _torch()
    features = torch_reference.vgg11_features()
    path = tmp_path / "vgg11.pth"
    wrapped = {f"module.features.{k}": v for k, v in features.state_dict().items()}
    torch.save({"model": wrapped, "epoch": 3}, path)
    params = torch_convert.vgg11_encoder_params(str(path))
    np.testing.assert_array_equal(
        params["conv1"]["kernel"], features[0].weight.detach().numpy().transpose(2, 3, 1, 0)
    )


def _fake_vgg_state_dict() -> dict[str, np.ndarray]:
    sd, cin = {}, 3
    for index, cout in zip((0, 3, 6, 8, 11, 13, 16, 18), (64, 128, 256, 256, 512, 512, 512, 512)):
        sd[f"features.{index}.weight"] = np.zeros((cout, cin, 3, 3), np.float32)
        sd[f"features.{index}.bias"] = np.zeros((cout,), np.float32)
        cin = cout
    return sd


def test_converter_names_missing_and_misshaped_keys():
    sd = _fake_vgg_state_dict()
    del sd["features.13.bias"]
    with pytest.raises(KeyError, match=r"features\.13\.bias"):
        torch_convert.vgg11_encoder_params(sd)

    sd = _fake_vgg_state_dict()
    sd["features.6.weight"] = np.zeros((256, 64, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"features\.6\.weight"):
        torch_convert.vgg11_encoder_params(sd)

    unet_sd = {k.replace("features.", "encoder."): v for k, v in _fake_vgg_state_dict().items()}
    with pytest.raises(KeyError, match=r"center\.block\.0\.conv\.weight"):
        torch_convert.unet11_params(unet_sd)


def test_unet11_one_channel_input_for_pats_l_channel():
    """input_channels=1 (PAT's L/50 − 1): conv1 takes one channel, no ImageNet normalisation,
    the parameter names unchanged; the default (3) is bit-identical to before."""
    x3 = jnp.asarray(np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32))
    default = UNet11(num_filters=4)
    explicit = UNet11(num_filters=4, input_channels=3)
    p3 = jax.jit(default.init)(jax.random.PRNGKey(0), x3)
    np.testing.assert_array_equal(default.apply(p3, x3), explicit.apply(p3, x3))
    model = UNet11(num_classes=2, num_filters=4, input_channels=1)
    x1 = x3[..., :1] * 2 - 1
    p1 = jax.jit(model.init)(jax.random.PRNGKey(0), x1)["params"]
    assert p1["encoder"]["conv1"]["kernel"].shape == (3, 3, 1, 64)
    assert jax.tree.structure(p1) == jax.tree.structure(jax.eval_shape(UNet11(num_classes=2, num_filters=4).init, jax.random.PRNGKey(0), x3)["params"])
    n1 = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(p1))
    n3 = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(jax.eval_shape(UNet11(num_classes=2, num_filters=4).init, jax.random.PRNGKey(0), x3)))
    assert n3 - n1 == 3 * 3 * 2 * 64
    out = model.apply({"params": p1}, x1)
    assert out.shape == (1, 32, 32, 2) and np.isfinite(np.asarray(out)).all()
    # Used as given: the encoder's first features are conv1(x) + bias with no (x − mean)/std.
    _, inter = model.apply({"params": p1}, x1, capture_intermediates=True)
    feats = inter["intermediates"]["encoder"]["conv1"]["__call__"][0]
    ref = jax.nn.relu(jax.lax.conv_general_dilated(x1, p1["encoder"]["conv1"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + p1["encoder"]["conv1"]["bias"])
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    with pytest.raises(ValueError, match=re.escape("(N, H, W, 1)")):
        model.init(jax.random.PRNGKey(0), x3)
    with pytest.raises(ValueError, match="input_channels"):
        UNet11(input_channels=0).init(jax.random.PRNGKey(0), x3[..., :0])
