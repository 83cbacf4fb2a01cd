"""torchvision ``resnet18`` state dict → variables of ``jaxsurg.models.resnet.ResNet18``.

Mapping (PyTorch key → Linen variable; ``<p>`` = the module prefix, ``layer<s>.<b>.`` ↔
``layer<s>_<b>``, ``downsample.0`` ↔ ``downsample_conv``, ``downsample.1`` ↔
``downsample_bn``):

- ``<p>weight`` of a conv, (O, I, kh, kw) → ``params/<p>/kernel`` (kh, kw, I, O):
  transpose (2, 3, 1, 0).
- BatchNorm: ``weight`` → ``params/…/scale``, ``bias`` → ``params/…/bias``,
  ``running_mean`` → ``batch_stats/…/mean``, ``running_var`` → ``batch_stats/…/var``;
  ``num_batches_tracked`` is ignored (``ResNet18`` uses a fixed momentum, as torchvision).
- ``fc.weight`` (O, I) → ``params/fc/kernel`` (I, O); ``fc.bias`` → ``params/fc/bias``.
  Read only when the template has ``fc`` (``ResNet18(num_outputs=...)``); otherwise the
  state dict's ``fc`` is ignored.

The source is read with ``jaxsurg.weights.torch_convert.load_state_dict`` (a ``.pth`` path or
a mapping; ``{"model"/"state_dict": ...}`` wrappers and ``module.`` prefixes are removed);
keys that the template does not ask for are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxsurg.weights.torch_convert import Source, _get, load_state_dict

# Linen leaf → PyTorch tensor name, per collection.
_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _torch_module(path: tuple[str, ...]) -> str:
    """('layer2_0', 'downsample_conv') → 'layer2.0.downsample.0.'."""
    parts = []
    for name in path:
        name = re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", name)
        name = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)
        parts.append(name)
    return ".".join(parts) + "."


def _detect_prefix(sd: Mapping[str, np.ndarray]) -> str:
    """'' when ``conv1.weight`` is a key, else the one prefix p with ``p + 'conv1.weight'``,
    ``p + 'bn1.running_mean'`` and ``p + 'layer1.0.conv1.weight'`` all present ('' if none)."""
    if "conv1.weight" in sd:
        return ""
    found = sorted(
        key.removesuffix("conv1.weight")
        for key in sd
        if key.endswith("conv1.weight")
        and key.removesuffix("conv1.weight") + "bn1.running_mean" in sd
        and key.removesuffix("conv1.weight") + "layer1.0.conv1.weight" in sd
    )
    if len(found) > 1:
        raise ValueError(f"the state dict holds several ResNet18s (key prefixes {found}); pass `prefix`")
    return found[0] if found else ""


# Weights before biases, so that a missing module is reported by its ``weight`` key.
_LEAF_ORDER = {"kernel": 0, "scale": 0, "mean": 0}


def _leaves(tree: Mapping[str, Any], path: tuple[str, ...] = ()):
    for name, value in sorted(tree.items(), key=lambda item: _LEAF_ORDER.get(item[0], 1)):
        if isinstance(value, Mapping):
            yield from _leaves(value, path + (name,))
        else:
            yield path + (name,), value


def _set(tree: dict[str, Any], path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _to_linen(key: str, value: np.ndarray, leaf: str, expected: tuple[int, ...], where: str) -> np.ndarray:
    """The PyTorch tensor ``value`` (read from ``key``) in the Linen layout of shape ``expected``."""
    if leaf == "kernel" and len(expected) == 4:  # conv: (kh, kw, I, O) ← (O, I, kh, kw)
        torch_shape = (expected[3], expected[2], expected[0], expected[1])
        perm = (2, 3, 1, 0)
    elif leaf == "kernel" and len(expected) == 2:  # Linear: (I, O) ← (O, I)
        torch_shape, perm = (expected[1], expected[0]), (1, 0)
    else:
        torch_shape, perm = expected, None
    if value.shape != torch_shape:
        hint = ""
        if key.endswith("conv1.weight") and where == "params/conv1/kernel" and value.shape[1] != torch_shape[1]:
            hint = (
                f"; the template's conv1 takes {torch_shape[1]} input channel(s), the state dict's "
                f"{value.shape[1]} (init the model on an input with {value.shape[1]} channels)"
            )
        raise ValueError(
            f"{key!r} has shape {tuple(value.shape)}, expected {torch_shape} for ResNet18 {where} "
            f"of shape {expected}{hint}"
        )
    # Always a copy: ``load_state_dict`` may return views of the torch tensors, which a later
    # PyTorch step (e.g. a train-mode forward updating running stats) would change in place.
    return np.array(value if perm is None else value.transpose(perm), dtype=np.float32, order="C", copy=True)


def resnet18_variables(source: Source, template: Mapping[str, Any], *, prefix: str | None = None) -> dict[str, Any]:
    """``ResNet18`` variables from a torchvision ``resnet18().state_dict()``.

    Args:
      source: path to a ``.pth``/``.pt`` file or a mapping of names to tensors/arrays (see
        ``jaxsurg.weights.torch_convert.load_state_dict``).
      template: the variables of the target model, ``ResNet18(...).init(key, x, train=False)``
        (or its ``jax.eval_shape``: only structure and shapes are read), with ``params`` and
        ``batch_stats``. It decides Cin of conv1 and whether ``fc`` (and its size) is loaded.
      prefix: the key prefix of the ResNet inside a bigger model, e.g. ``"encoder."``; None =
        detect it (none when ``conv1.weight`` is a key, else the unique p with
        ``p + "conv1.weight"``, ``p + "bn1.running_mean"``, ``p + "layer1.0.conv1.weight"``).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays with the template's
      structure (pass them to ``apply`` directly or ``jax.device_put`` them). They are
      copies: a later in-place change of the source tensors does not reach them.

    Raises:
      KeyError: a tensor the template needs is missing (the message names the key; also
        ``fc.weight`` when the template has ``fc`` and the source has none).
      ValueError: a tensor has the wrong shape (the message names the key, the expected and
        the found PyTorch shapes, e.g. a 3-channel conv1 for a 1-channel template); several
        ResNet prefixes were found and ``prefix`` is None.
      TypeError: ``template`` is not a variables mapping with ``params`` and ``batch_stats``;
        the source is neither a path nor a mapping.
    """
    if not (isinstance(template, Mapping) and all(isinstance(template.get(c), Mapping) for c in ("params", "batch_stats"))):
        got = sorted(template) if isinstance(template, Mapping) else type(template).__name__
        raise TypeError(
            "`template` must be ResNet18 variables {'params': ..., 'batch_stats': ...} "
            f"(from ResNet18(...).init), got {got}"
        )
    sd = load_state_dict(source)
    if prefix is None:
        prefix = _detect_prefix(sd)
    out: dict[str, Any] = {}
    for collection, names in (("params", _PARAM_NAMES), ("batch_stats", _STAT_NAMES)):
        for path, leaf in _leaves(template[collection]):
            if path[-1] not in names:
                raise ValueError(f"{collection}/{'/'.join(path)} is not a ResNet18 variable")
            key = prefix + _torch_module(path[:-1]) + names[path[-1]]
            expected = tuple(np.shape(leaf))
            value = _get(sd, key, len(expected))
            where = f"{collection}/{'/'.join(path)}"
            _set(out.setdefault(collection, {}), path, _to_linen(key, value, path[-1], expected, where))
    return out
