"""Laparoflow-SSL heads: shapes, parameter counts, PyTorch nn.Sequential equivalence, jit/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.methods.laparoflow.heads import (
    KeypointHead,
    LinearProbeHead,
    SideTuneNetwork,
    SideTuneSegmentationHead,
    count_params,
    match_grid,
    representation_grid,
)


def _init_shapes(module, *args):
    """Variables as ShapeDtypeStructs: the init traced, nothing computed (fast on CPU)."""
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)


def _conv_count(cin, cout, k):
    return k * k * cin * cout + cout


def _inputs(b, h, w, d=256, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32)
    gh, gw = representation_grid(h, w)
    rep = rng.standard_normal((b, gh, gw, d)).astype(np.float32)
    rep /= np.linalg.norm(rep, axis=-1, keepdims=True)
    return jnp.asarray(image), jnp.asarray(rep)


def test_representation_grid_is_ceil_quarter():
    assert representation_grid(70, 90) == (18, 23)
    assert representation_grid(64, 64) == (16, 16)
    assert representation_grid(1, 5) == (1, 2)


@pytest.mark.parametrize("h, w", [(70, 90), (64, 64), (33, 17)])
def test_shapes_odd_and_even_sizes(h, w):
    image, rep = _inputs(1, h, w)
    side = SideTuneNetwork()
    sv = _init_shapes(side, image)
    assert jax.eval_shape(side.apply, sv, image).shape == (1, *representation_grid(h, w), 128)
    for head, c in [
        (SideTuneSegmentationHead(num_classes=5), 5),
        (KeypointHead(), 4),
        (KeypointHead(use_side_tune=False), 4),
    ]:
        out = jax.eval_shape(head.apply, _init_shapes(head, image, rep), image, rep)
        assert out.shape == (1, h, w, c) and out.dtype == jnp.float32


def test_parameter_counts_by_hand():
    image, rep = _inputs(1, 70, 90)
    side = _conv_count(3, 64, 3) + _conv_count(64, 128, 3)  # 1,792 + 73,856
    seg = side + _conv_count(384, 256, 3) + _conv_count(256, 256, 3) + _conv_count(256, 4, 1)
    assert seg == 1_551_748
    v = _init_shapes(SideTuneSegmentationHead(num_classes=4), image, rep)
    assert count_params(v["params"]) == seg
    kp = side + _conv_count(384, 16, 3) + 6 * _conv_count(16, 16, 3) + _conv_count(16, 4, 1)
    assert kp == 144_948
    v = _init_shapes(KeypointHead(), image, rep)
    assert count_params(v["params"]) == kp
    v = _init_shapes(KeypointHead(use_side_tune=False), image, rep)
    assert count_params(v["params"]) == kp - side - _conv_count(384, 16, 3) + _conv_count(256, 16, 3)


def test_param_tree_layout():
    image, rep = _inputs(1, 16, 16)
    v = _init_shapes(KeypointHead(depth=2), image, rep)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, v["params"])
    assert shapes == {
        "side_tune": {
            "conv_0": {"kernel": (3, 3, 3, 64), "bias": (64,)},
            "conv_1": {"kernel": (3, 3, 64, 128), "bias": (128,)},
        },
        "conv_0": {"kernel": (3, 3, 384, 16), "bias": (16,)},
        "conv_1": {"kernel": (3, 3, 16, 16), "bias": (16,)},
        "classifier": {"kernel": (1, 1, 16, 4), "bias": (4,)},
    }


# ------------------------------------------------------------------------ PyTorch reference


def _torch_reference(side_channels, head_channels, out_channels, rep_dim, use_side):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    side = None
    if use_side:
        layers, cin = [], 3
        for f in side_channels:
            layers += [nn.Conv2d(cin, f, 3, stride=2, padding=1), nn.ReLU()]
            cin = f
        side = nn.Sequential(*layers)
    layers, cin = [], rep_dim + (side_channels[-1] if use_side else 0)
    for f in head_channels:
        layers += [nn.Conv2d(cin, f, 3, padding=1), nn.ReLU()]
        cin = f
    layers.append(nn.Conv2d(cin, out_channels, 1))
    return side, nn.Sequential(*layers)


def _convs(seq):
    import torch

    return [m for m in seq if isinstance(m, torch.nn.Conv2d)]


def _to_flax(conv):
    return {
        "kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
        "bias": jnp.asarray(conv.bias.detach().numpy()),
    }


@pytest.mark.parametrize("kind, use_side", [("segmentation", True), ("keypoint", True), ("keypoint", False)])
def test_matches_torch_sequential(kind, use_side):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    h, w, d = 30, 45, 32  # odd width; a narrow rep keeps the test fast
    if kind == "segmentation":
        module = SideTuneSegmentationHead(num_classes=3, side_features=(8, 12), head_features=(16, 16))
        side, head = _torch_reference((8, 12), (16, 16), 3, d, True)
    else:
        module = KeypointHead(num_keypoints=4, features=6, depth=3, use_side_tune=use_side, side_features=(8, 12))
        side, head = _torch_reference((8, 12), (6, 6, 6), 4, d, use_side)
    image, rep = _inputs(2, h, w, d, seed=3)
    params = {f"conv_{i}": _to_flax(c) for i, c in enumerate(_convs(head)[:-1])}
    params["classifier"] = _to_flax(_convs(head)[-1])
    if use_side:
        params["side_tune"] = {f"conv_{i}": _to_flax(c) for i, c in enumerate(_convs(side))}
    n_torch = sum(p.numel() for m in (side, head) if m is not None for p in m.parameters())
    assert count_params(params) == n_torch
    # Same tree as the module's own initialisation.
    init = _init_shapes(module, image, rep)["params"]
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(params)

    out = np.asarray(module.apply({"params": params}, image, rep))
    img_t = torch.from_numpy(np.asarray(image).transpose(0, 3, 1, 2).copy())
    rep_t = torch.from_numpy(np.asarray(rep).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        x = torch.cat([rep_t, side(img_t)], dim=1) if use_side else rep_t
        ref = torch.nn.functional.interpolate(head(x), size=(h, w), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(out, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)


def test_jit_and_grad_finite():
    image, rep = _inputs(2, 22, 30)
    head = KeypointHead()
    params = jax.jit(head.init)(jax.random.PRNGKey(0), image, rep)["params"]

    def loss(p, img, r):
        return jnp.mean(jax.nn.sigmoid(head.apply({"params": p}, img, r)) ** 2)

    g, gi = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, image, rep)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert all(np.abs(np.asarray(x)).max() > 0 for x in leaves)  # every layer receives gradient
    assert np.isfinite(np.asarray(gi)).all() and np.abs(np.asarray(gi)).max() > 0  # side-tune reaches pixels


def test_rep_off_by_one_is_cropped_or_padded():
    image, _ = _inputs(1, 70, 90)
    head = SideTuneSegmentationHead(num_classes=2, head_features=(8,))
    for grid in [(17, 22), (19, 24)]:
        rep = jnp.ones((1, *grid, 256), jnp.float32)
        assert jax.eval_shape(head.apply, _init_shapes(head, image, rep), image, rep).shape == (1, 70, 90, 2)
    x = jnp.arange(12.0).reshape(1, 3, 4, 1)
    np.testing.assert_array_equal(match_grid(x, (2, 5))[0, :, :, 0], [[0, 1, 2, 3, 3], [4, 5, 6, 7, 7]])


def test_bad_inputs_raise():
    image, rep = _inputs(1, 64, 64)
    head = KeypointHead()
    with pytest.raises(ValueError, match="rep must lie on the image's 1/4 grid"):
        _init_shapes(head, image, rep[:, :8, :8])
    with pytest.raises(ValueError, match=r"image must be \(B, H, W, 3\)"):
        _init_shapes(head, jnp.zeros((1, 64, 64, 4)), rep)
    with pytest.raises(ValueError, match="same batch size"):
        _init_shapes(head, jnp.zeros((2, 64, 64, 3)), rep)
    with pytest.raises(ValueError, match="num_classes"):
        _init_shapes(SideTuneSegmentationHead(num_classes=0), image, rep)


def test_linear_probe_is_a_per_pixel_linear_map_of_the_representation_upsampled():
    image, rep = _inputs(2, 22, 30)
    head = LinearProbeHead(num_classes=3)
    variables = jax.jit(head.init)(jax.random.PRNGKey(0), image, rep)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, variables["params"])
    assert shapes == {"classifier": {"kernel": (1, 1, 256, 3), "bias": (3,)}}
    assert count_params(variables["params"]) == _conv_count(256, 3, 1)
    out = head.apply(variables, image, rep)
    assert out.shape == (2, 22, 30, 3) and out.dtype == jnp.float32
    # = the logits W·z + b on the 1/4 grid, bilinearly upsampled (align_corners=False) as the other heads.
    from jaxsurg.ops.resize import resize_bilinear

    k, b = variables["params"]["classifier"]["kernel"][0, 0], variables["params"]["classifier"]["bias"]
    want = resize_bilinear(jnp.einsum("bhwd,dk->bhwk", rep, k) + b, (22, 30), precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(out, want, atol=1e-5)
    # The image enters by its size only (no side-tune network); every parameter gets a gradient.
    np.testing.assert_array_equal(out, head.apply(variables, jnp.zeros_like(image), rep))
    g = jax.grad(lambda p: jnp.mean(head.apply({"params": p}, image, rep) ** 2))(variables["params"])
    assert all(np.abs(np.asarray(x)).max() > 0 for x in jax.tree_util.tree_leaves(g))
    with pytest.raises(ValueError, match="num_classes"):
        _init_shapes(LinearProbeHead(num_classes=0), image, rep)
