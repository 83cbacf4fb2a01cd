"""Helpers of the Dual Motion Flow tests (imported by basename: pytest puts this folder on
``sys.path``): a panning scene with known motion (propagation, segmentation) and the glue
between the PyTorch references and the Flax networks (flow predictor, compensator, ConvLSTM)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsurg.data.sequences import TrainSequence

V = np.array([2.0, 1.0])  # camera pan per frame, pixels: content moves by −V


def _panning_sequence(num_frames=8, h=32, w=32, label_interval=5, seed=0) -> TrainSequence:
    """A camera panning over a textured canvas with two labelled rectangles; the exact
    flow is −V everywhere (frame t → t + 1)."""
    rng = np.random.default_rng(seed)
    ch, cw = h + num_frames * 2, w + num_frames * 3
    canvas = rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8)
    labels = np.zeros((ch, cw), np.uint8)
    labels[10:30, 12:26] = 1
    labels[26:40, 20:44] = 2
    frames = np.stack([canvas[t * 1 : t * 1 + h, t * 2 : t * 2 + w] for t in range(num_frames)])
    truth = np.stack([labels[t * 1 : t * 1 + h, t * 2 : t * 2 + w] for t in range(num_frames)])
    labelled = np.arange(num_frames) % label_interval == 0
    masks = np.where(labelled[:, None, None], truth, 255).astype(np.uint8)
    fwd = np.broadcast_to(-V, (num_frames, h, w, 2)).astype(np.float32).copy()
    bwd = -fwd
    fwd[-1] = 0
    bwd[0] = 0
    n = np.arange(num_frames)
    seq = TrainSequence(frames, masks, labelled, np.zeros(num_frames, np.int64), n, fwd, bwd, np.zeros_like(n), np.full_like(n, num_frames - 1),
                           true_masks=truth)
    return seq, truth


# ----------------------------------------------------------------------------- PyTorch references


def _torch():
    return pytest.importorskip("torch")


def _nchw(x):
    return _torch().from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _torch_convs_to_params(module) -> dict:
    """Every ``a.b.weight`` (Cout, Cin, k, k) → params[a][b]['kernel'] (k, k, Cin, Cout)."""
    params: dict = {}
    for key, value in module.named_parameters():
        *path, leaf = key.split(".")
        node = params
        for p in path:
            node = node.setdefault(p, {})
        v = value.detach().numpy()
        node["kernel" if leaf == "weight" else "bias"] = v.transpose(2, 3, 1, 0) if leaf == "weight" else v
    return params


def _random_params(model, *args, seed=0, gain=1.0):
    """Params of ``model`` without compiling its init: kernels N(0, gain²/fan_in), biases N(0, 0.01)."""
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        std = gain / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(std * rng.standard_normal(s.shape).astype(np.float32))

    return jax.tree.map(draw, template)


def _assert_close(got, ref, rel=1e-4):
    ref = np.asarray(ref)
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=rel * scale)
