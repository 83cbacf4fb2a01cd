"""The GAN discriminators: PAT's ResNet18 (shape, range, BatchNorm modes) and pix2pix's 70×70
PatchGAN against a PyTorch re-implementation of pix2pix's ``NLayerDiscriminator`` (eval and
train mode, running statistics, parameter count), its 30×30 output for 256×256 inputs, its
70×70 receptive field (from the gradient of one output) and its pix2pix initialisation.

Inits use the "rbg" PRNG: XLA:CPU compiles threefry-based inits of these nets 5-10× slower."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.models.discriminators import (
    PatchGAN,
    ResNet18Discriminator,
    patchgan_output_size,
    patchgan_receptive_field,
)

torch = pytest.importorskip("torch")


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _n_params(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------- ResNet18


def test_resnet18_discriminator_shape_range_and_batchnorm_modes():
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 40, 3)).astype(np.float32)
    model = ResNet18Discriminator()

    t = jax.eval_shape(lambda: model.init(_key(), jnp.zeros(x.shape), train=False))
    rng = np.random.default_rng(1)  # He-scaled random weights: an init would double the compile time
    v = jax.tree_util.tree_map_with_path(
        lambda path, s: (rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape) if path[-1].key == "kernel" else np.ones(s.shape))
        .astype(np.float32),
        t,
    )

    @jax.jit
    def run(v, x):
        p_eval = model.apply(v, x, train=False)
        p_train, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
        return p_eval, p_train, upd

    p_eval, p_train, upd = run(v, x)
    for p in (p_eval, p_train):
        assert p.shape == (3,) and p.dtype == jnp.float32
        assert np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1)) and np.all(np.isfinite(p))
    assert not np.allclose(p_eval, p_train)  # batch statistics differ from the fresh running ones
    assert v["params"]["backbone"]["fc"]["kernel"].shape == (512, 1)
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), upd["batch_stats"], v["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))
    with pytest.raises(ValueError, match="too small"):
        jax.eval_shape(lambda: model.init(_key(), jnp.zeros((1, 16, 32, 3)), train=False))


# ----------------------------------------------------------------------------- PatchGAN


def _torch_patchgan(input_nc=3, ndf=64, n_layers=3):
    """pix2pix's ``NLayerDiscriminator`` with ``norm_layer=nn.BatchNorm2d`` (use_bias=False
    after BN), junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py``."""
    nn = torch.nn
    seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2**n, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    prev, mult = mult, min(2**n_layers, 8)
    seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    return nn.Sequential(*seq)


def _variables_from_torch(model):
    """Linen variables of ``PatchGAN(n_layers=3)`` from the torch Sequential's state dict."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def conv(i):  # torch (Cout, Cin, k, k) → (k, k, Cin, Cout)
        return jnp.asarray(sd[f"{i}.weight"].transpose(2, 3, 1, 0))

    params = {
        "conv_0": {"kernel": conv(0), "bias": jnp.asarray(sd["0.bias"])},
        "conv_out": {"kernel": conv(11), "bias": jnp.asarray(sd["11.bias"])},
    }
    stats = {}
    for j, (ci, bi) in enumerate(((2, 3), (5, 6), (8, 9)), start=1):
        params[f"conv_{j}"] = {"kernel": conv(ci)}
        params[f"bn_{j}"] = {"scale": jnp.asarray(sd[f"{bi}.weight"]), "bias": jnp.asarray(sd[f"{bi}.bias"])}
        stats[f"bn_{j}"] = {"mean": jnp.asarray(sd[f"{bi}.running_mean"]), "var": jnp.asarray(sd[f"{bi}.running_var"])}
    return {"params": params, "batch_stats": stats}


def test_patchgan_output_size_parameter_count_and_errors():
    model = PatchGAN()
    t = jax.eval_shape(lambda: model.init(_key(), jnp.zeros((1, 256, 256, 3)), train=False))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 256, 256, 3)), train=False), t)
    assert out.shape == (2, 30, 30) and out.dtype == jnp.float32  # pix2pix's 30×30 patches
    assert _n_params(t["params"]) == sum(p.numel() for p in _torch_patchgan().parameters()) == 2_765_633
    assert _n_params(t["batch_stats"]) == 2 * (128 + 256 + 512)
    for shape, n_layers in (((1, 70, 70, 3), 3), ((1, 67, 101, 6), 3), ((1, 64, 64, 3), 2), ((1, 96, 128, 3), 4)):
        m = PatchGAN(ndf=4, n_layers=n_layers)
        o = jax.eval_shape(lambda m=m, shape=shape: m.init_with_output(_key(), jnp.zeros(shape), train=False)[0])
        assert o.shape == (1, patchgan_output_size(shape[1], n_layers), patchgan_output_size(shape[2], n_layers))
    assert [patchgan_receptive_field(n) for n in (1, 2, 3, 4)] == [16, 34, 70, 142]
    with pytest.raises(ValueError, match="too small"):
        jax.eval_shape(lambda: model.init(_key(), jnp.zeros((1, 23, 64, 3)), train=False))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        jax.eval_shape(lambda: model.init(_key(), jnp.zeros((64, 64, 3)), train=False))


def test_patchgan_receptive_field_is_70x70():
    """The gradient of one interior output (eval mode: BN does not mix pixels or images) is
    non-zero exactly on a 70×70 input square (LeakyReLU never zeroes a gradient; the raw
    scores, as a saturated sigmoid could)."""
    model = PatchGAN(ndf=4, sigmoid=False)
    x = np.random.default_rng(0).standard_normal((1, 96, 96, 3)).astype(np.float32)
    t = jax.eval_shape(lambda: model.init(_key(), jnp.zeros(x.shape), train=False))
    rng = np.random.default_rng(1)
    v = jax.tree_util.tree_map_with_path(  # conv weights N(0, 0.3); BN scales and statistics in [0.5, 1.5]
        lambda path, s: (rng.normal(0.0, 0.3, s.shape) if path[-2].key.startswith("conv") else rng.uniform(0.5, 1.5, s.shape))
        .astype(np.float32),
        t,
    )
    j = 5  # output 10×10; its row j sees input rows 8j − 23 … 8j + 46
    g = jax.jit(jax.grad(lambda x: model.apply(v, x, train=False)[0, j, j]))(x)
    support = np.any(np.asarray(g)[0] != 0, axis=-1)
    rows, cols = np.nonzero(support.any(axis=1))[0], np.nonzero(support.any(axis=0))[0]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8 * j - 23, 8 * j + 46) * 2
    assert support[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert support.sum() == 70 * 70 == patchgan_receptive_field(3) ** 2


def test_patchgan_matches_torch_eval_and_train():
    """Weights copied from the torch model (random BN affine and running statistics), an odd
    input size: eval outputs, train outputs and the updated running statistics agree."""
    torch.manual_seed(0)
    ref = _torch_patchgan(ndf=16)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    v = _variables_from_torch(ref)
    x = np.random.default_rng(0).standard_normal((2, 67, 75, 3)).astype(np.float32)
    model = PatchGAN(ndf=16)

    @jax.jit
    def run(v, x):
        p_eval = model.apply(v, x, train=False)
        s_train, upd = PatchGAN(ndf=16, sigmoid=False).apply(v, x, train=True, mutable=["batch_stats"])
        return p_eval, s_train, upd["batch_stats"]

    p_eval, s_train, stats = run(v, x)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        want_eval = torch.sigmoid(ref.eval()(xt))[:, 0].numpy()
        want_train = ref.train()(xt)[:, 0].numpy()
    assert p_eval.shape == want_eval.shape == (2, 6, 7)
    np.testing.assert_allclose(p_eval, want_eval, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_train, want_train, rtol=1e-4, atol=1e-4)
    want_stats = _variables_from_torch(ref)["batch_stats"]  # torch updated its running stats in train()
    for name in stats:
        for k in ("mean", "var"):
            np.testing.assert_allclose(stats[name][k], want_stats[name][k], rtol=1e-4, atol=1e-5, err_msg=f"{name}.{k}")


def test_patchgan_init_like_pix2pix():
    v = jax.jit(lambda k: PatchGAN().init(k, jnp.zeros((1, 32, 32, 3)), train=False))(_key(3))
    p = v["params"]
    for name in ("conv_0", "conv_1", "conv_2", "conv_3", "conv_out"):
        k = np.asarray(p[name]["kernel"])
        assert abs(k.mean()) < 2e-3 and abs(k.std() - 0.02) < 2e-3, name
        if "bias" in p[name]:
            assert np.all(np.asarray(p[name]["bias"]) == 0), name
    assert set(p["conv_1"]) == {"kernel"}  # no bias before a BatchNorm, as pix2pix
    scales = np.concatenate([np.asarray(p[f"bn_{i}"]["scale"]) for i in (1, 2, 3)])
    assert abs(scales.mean() - 1) < 3e-3 and abs(scales.std() - 0.02) < 3e-3
    assert all(np.all(np.asarray(p[f"bn_{i}"]["bias"]) == 0) for i in (1, 2, 3))
    assert all(np.all(np.asarray(v["batch_stats"][f"bn_{i}"]["var"]) == 1) for i in (1, 2, 3))
