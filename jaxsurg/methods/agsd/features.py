"""The frozen features of AGSD's semantic diffusion (Liu et al. 2020, Sec. 2.2, Sec. 3
"Implementation Details"): VGG16 relu5_3 (ImageNet in the paper; here the weights of
``config.vgg16_weights``), or — what no published AGSD has — the self-supervised pixel
representations of a finished Laparoflow-SSL run (``config.features = "laparoflow:DIR"``).

Features are computed once per frame, on the frame at the working size before colour jitter,
L2-normalised per pixel (ε 1e-6, as the code), and kept in host memory as float16; the
training step crops and flips them with the frame (``frames.crop_resize``). The paper
computes them on each augmented frame; a frozen extractor on the un-jittered frame differs
only by the jitter, and costs one forward pass per frame instead of one per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg import progress
from jaxsurg.methods.agsd.semantic_diffusion import l2_normalize


def describe(source: str, vgg16_weights: str) -> str:
    """The features' name for summary.json: ``vgg16 relu5_3 (<weights>)`` or ``laparoflow:DIR``."""
    return f"vgg16 relu5_3 ({vgg16_weights})" if source == "vgg16" else source


def laparoflow_dir(source: str) -> str | None:
    """The workdir of ``config.features = "laparoflow:DIR"``; None for ``"vgg16"``.

    Raises:
      ValueError: any other value (naming config.features and the accepted forms).
    """
    if source == "vgg16":
        return None
    if source.startswith("laparoflow:") and len(source) > len("laparoflow:"):
        return source.split(":", 1)[1]
    raise ValueError(f"config.features={source!r}: expected 'vgg16' or 'laparoflow:DIR' (a finished Laparoflow-SSL workdir)")


def make_extractor(source: str, vgg16_weights: str, shape: tuple[int, int], seed: int) -> Callable[[jax.Array], jax.Array]:
    """A jitted frozen extractor: float32 (B, H, W, 3) RGB in [0, 1] → L2-normalised
    features (B, h, w, D) float32 (VGG16 relu5_3: h = H/16, D = 512; Laparoflow-SSL:
    h = H/4, D = 256).

    Args:
      source: ``"vgg16"`` or ``"laparoflow:DIR"``.
      vgg16_weights: for ``"vgg16"``: ``hed:FILE``, ``torchvision:FILE`` or ``random`` (warns).
      shape: (H, W) of the frames, pixels. seed: for random VGG16 weights.

    Raises:
      ValueError: an unknown ``source``; the loaders' errors (a missing file, an unfinished
        Laparoflow-SSL run).
    """
    run_dir = laparoflow_dir(source)
    if run_dir is None:
        from jaxsurg.weights.vgg16 import frozen_vgg16

        model, params = frozen_vgg16(vgg16_weights, ("relu5_3",), shape, seed)

        def features(x: jax.Array) -> jax.Array:
            return model.apply({"params": params}, x)["relu5_3"]

    else:
        from jaxsurg.methods.laparoflow.pretrain import load_pretrained_backbone

        model, variables = load_pretrained_backbone(run_dir)

        def features(x: jax.Array) -> jax.Array:
            return model.apply(variables, x, train=False)

    return jax.jit(lambda x: l2_normalize(features(x)))


def compute_features(extract: Callable[[jax.Array], jax.Array], frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """``extract`` over uint8 (N, H, W, 3) frames in fixed-size batches (the last padded),
    with a progress bar → float16 (N, h, w, D)."""
    out: list[np.ndarray] = []
    n = len(frames)
    for i in progress.bar(range(0, n, batch_size), total=-(-n // batch_size), desc="diffusion features", unit="batch"):
        chunk = frames[i : i + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)]) if len(chunk) < batch_size else chunk
        f = extract(jnp.asarray(padded, jnp.float32) / 255.0)
        out.append(np.asarray(f[: len(chunk)], np.float16))
    return np.concatenate(out)
