"""ResNet18 against a PyTorch torchvision-layout resnet18 (``torch_reference.resnet18``): eval
and train taps, PyTorch's running-statistics update (unbiased running variance), odd input
sizes, the state-dict converter and its errors, and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.models import ResNet18
from jaxsurg.models.resnet import RESNET18_TAPS
from jaxsurg.weights.resnet import resnet18_variables

from torch_reference import resnet18 as torch_resnet18  # tests/torch_reference.py

torch = pytest.importorskip("torch")

NUM_CLASSES = 10


def _rel_err(a, b):
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a, np.float32) - b)) / np.max(np.abs(b)))


def _randomised_torch_model(seed=0, num_classes=NUM_CLASSES):
    """torchvision init, then random BN affine params and running statistics."""
    torch.manual_seed(seed)
    model = torch_resnet18(num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _template(x_shape, num_outputs=NUM_CLASSES, dtype=jnp.float32):
    model = ResNet18(num_outputs=num_outputs, dtype=dtype)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x_shape), train=False))


def _taps(model, x_nhwc):
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return {k: v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy() for k, v in out.items()}


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def torch_model():
    return _randomised_torch_model()


def _ceil_div(n, d):
    return -(-n // d)


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (1, 65, 97, 3)])
def test_eval_matches_torch(torch_model, shape):
    x = _x(shape)
    variables = resnet18_variables(torch_model.state_dict(), _template(shape))
    out = jax.jit(lambda v, x: ResNet18(num_outputs=NUM_CLASSES).apply(v, x, train=False))(variables, x)
    ref = _taps(torch_model.eval(), x)
    assert set(out) == set(RESNET18_TAPS) | {"logits"}
    for name, i, channels in zip(RESNET18_TAPS, (1, 2, 2, 3, 4, 5), (64, 64, 64, 128, 256, 512)):
        assert out[name].shape == (shape[0], _ceil_div(shape[1], 2**i), _ceil_div(shape[2], 2**i), channels), name
    assert out["logits"].shape == (shape[0], NUM_CLASSES)
    for name in ref:
        assert _rel_err(out[name], ref[name]) < 1e-4, name


def test_train_matches_torch_including_running_stats_and_gradients():
    """One train-mode step at an odd size: outputs and the updated running mean and (unbiased)
    running variance equal PyTorch's (flax's own BatchNorm would give n/(n − 1)-smaller
    variances); every param gets a finite, non-zero gradient of sum(layer4). (One jit for
    all three: a ResNet18 compile is the cost of this file.)"""
    shape = (2, 65, 97, 3)  # layer4 is 3×4: n = 24 values per channel, a visible n/(n-1)
    model = _randomised_torch_model(seed=1)
    x = _x(shape, seed=1)
    variables = resnet18_variables(model.state_dict(), _template(shape))

    def loss(params):
        out, updates = ResNet18(num_outputs=NUM_CLASSES).apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out["layer4"]), (out, updates)

    (_, (out, updates)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    ref = _taps(model.train(), x)
    for name in ref:
        assert _rel_err(out[name], ref[name]) < 1e-4, name

    expected = resnet18_variables(model.state_dict(), _template(shape))["batch_stats"]
    new = jax.tree_util.tree_leaves_with_path(updates["batch_stats"])
    assert len(new) == 2 * 20  # 20 BatchNorms (1 + 8 blocks × 2 + 3 downsample), mean and var
    for path, value in new:
        want = expected
        for k in path:
            want = want[k.key]
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    # The unbiased update is what makes them equal: the biased one is off by far more than rtol.
    var4 = np.asarray(updates["batch_stats"]["layer4_1"]["bn2"]["var"])
    old4 = variables["batch_stats"]["layer4_1"]["bn2"]["var"]
    batch_unbiased = (var4 - 0.9 * old4) / 0.1
    biased_update = 0.9 * old4 + 0.1 * batch_unbiased * 23 / 24
    want4 = expected["layer4_1"]["bn2"]["var"]
    assert np.max(np.abs(biased_update - want4) / want4) > 1e-3

    # fc gets no gradient from layer4: only the backbone's params are checked.
    assert set(grads) == set(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path({k: v for k, v in grads.items() if k != "fc"}):
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), name
        assert np.any(g != 0), name


# ----------------------------------------------------------------------------- structure


def test_structure_dtype_and_init_statistics():
    t = _template((1, 32, 48, 1), num_outputs=1000, dtype=jnp.bfloat16)
    sizes = [np.prod(p.shape) for p in jax.tree_util.tree_leaves(t["params"])]
    assert sum(sizes) - 64 * 7 * 7 * 1 + 64 * 7 * 7 * 3 == 11_689_512  # torchvision's count for RGB
    assert t["params"]["conv1"]["kernel"].shape == (7, 7, 1, 64)  # Cin from the input
    assert {p.dtype for p in jax.tree_util.tree_leaves(t)} == {jnp.dtype(jnp.float32)}
    assert set(t["params"]["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv", "downsample_bn"}
    assert set(t["params"]["layer2_1"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert "downsample_conv" not in t["params"]["layer1_0"]
    out = jax.eval_shape(
        lambda v, x: ResNet18(num_outputs=1000, dtype=jnp.bfloat16).apply(v, x, train=False), t, jnp.zeros((1, 32, 48, 1))
    )
    assert {o.dtype for o in out.values()} == {jnp.dtype(jnp.bfloat16)}
    assert out["layer4"].shape == (1, 1, 2, 512)
    out = jax.eval_shape(
        lambda v, x: ResNet18().apply(v, x, train=False), _template((1, 32, 32, 3), None), jnp.zeros((1, 32, 32, 3))
    )
    assert set(out) == set(RESNET18_TAPS)


def test_init_like_torchvision():
    def some():  # jit, returning a few variables: XLA drops the rest (a full eager init takes ~10 s)
        v = ResNet18(num_outputs=5).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
        return v["params"]["layer3_0"]["conv2"]["kernel"], v["params"]["bn1"], v["batch_stats"]["bn1"], v["params"]["fc"]

    kernel, bn, stats, fc = jax.jit(some)()
    k = np.asarray(kernel)  # (3, 3, 256, 256): fan_out 9·256
    assert abs(k.std() / np.sqrt(2 / (9 * 256)) - 1) < 0.02 and abs(k.mean()) < 1e-3
    for value, want in ((bn["scale"], 1), (bn["bias"], 0), (stats["mean"], 0), (stats["var"], 1)):
        np.testing.assert_array_equal(value, want)
    bound = 1 / np.sqrt(512)
    assert all(np.max(np.abs(value)) <= bound for value in fc.values())
    assert abs(np.std(fc["kernel"]) / (bound / np.sqrt(3)) - 1) < 0.1  # U(±bound)


@pytest.mark.parametrize(
    "shape, match",
    [((32, 32, 3), r"\(N, H, W, C\), got \(32, 32, 3\)"), ((1, 31, 64, 3), r"\(1, 31, 64, 3\) is too small.*≥ 32")],
)
def test_model_rejects_bad_input(shape, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: ResNet18().init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_train_with_one_value_per_channel_raises():
    t = _template((1, 32, 32, 3), None)
    with pytest.raises(ValueError, match="layer4_0.*one value per channel"):
        jax.eval_shape(
            lambda v, x: ResNet18().apply(v, x, train=True, mutable=["batch_stats"]), t, jnp.zeros((1, 32, 32, 3))
        )


# ----------------------------------------------------------------------------- converter


def test_converter_layouts_prefix_file_and_fc(torch_model, tmp_path):
    sd = torch_model.state_dict()
    v = resnet18_variables(sd, _template((1, 32, 32, 3)))
    np.testing.assert_array_equal(v["params"]["layer2_0"]["downsample_conv"]["kernel"],
                                  sd["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(v["batch_stats"]["layer3_1"]["bn2"]["var"], sd["layer3.1.bn2.running_var"].numpy())
    np.testing.assert_array_equal(v["params"]["layer4_0"]["downsample_bn"]["scale"], sd["layer4.0.downsample.1.weight"].numpy())
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)

    # Inside a bigger model ("encoder." detected or given), a DataParallel file with a wrapper.
    nested = {"encoder." + k: t for k, t in sd.items()} | {"decoder.0.weight": torch.zeros(3, 3)}
    path = tmp_path / "unet.pth"
    torch.save({"state_dict": {"module." + k: t for k, t in nested.items()}}, path)
    for kwargs in ({}, {"prefix": "encoder."}):
        w = resnet18_variables(path, _template((1, 32, 32, 3)), **kwargs)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, w, v))

    # No fc in the template: the source's fc is ignored. fc in the template, not in the source: KeyError.
    no_fc = resnet18_variables(sd, _template((1, 32, 32, 3), num_outputs=None))
    assert "fc" not in no_fc["params"]
    headless = {k: t for k, t in sd.items() if not k.startswith("fc.")}
    with pytest.raises(KeyError, match=r"fc\.weight"):
        resnet18_variables(headless, _template((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"'fc\.weight' has shape \(10, 512\), expected \(7, 512\)"):
        resnet18_variables(sd, _template((1, 32, 32, 3), num_outputs=7))


def test_converter_errors(torch_model):
    sd = dict(torch_model.state_dict())
    template = _template((1, 32, 32, 3))
    missing = {k: t for k, t in sd.items() if k != "layer3.1.bn2.running_var"}
    with pytest.raises(KeyError, match=r"layer3\.1\.bn2\.running_var"):
        resnet18_variables(missing, template)
    with pytest.raises(KeyError, match=r"encoder\.layer3\.1\.bn2\.running_var"):
        resnet18_variables({"encoder." + k: t for k, t in missing.items()}, template, prefix="encoder.")

    bad = sd | {"layer2.1.conv1.weight": torch.zeros(128, 64, 3, 3)}
    with pytest.raises(ValueError, match=r"'layer2\.1\.conv1\.weight' has shape \(128, 64, 3, 3\), expected \(128, 128, 3, 3\)"):
        resnet18_variables(bad, template)

    with pytest.raises(ValueError, match=r"'conv1\.weight' has shape \(64, 3, 7, 7\), expected \(64, 1, 7, 7\).*1 input channel.*3"):
        resnet18_variables(sd, _template((1, 32, 32, 1)))

    with pytest.raises(TypeError, match="batch_stats"):
        resnet18_variables(sd, {"params": template["params"]})
