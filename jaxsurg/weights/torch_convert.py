"""PyTorch state dicts → Linen params for ``VGG11Encoder`` and ``UNet11``.

Layouts (PyTorch NCHW weights → jaxsurg NHWC kernels, no spatial flips):

- ``Conv2d.weight`` (Cout, Cin, kH, kW) → ``kernel`` (kH, kW, Cin, Cout): transpose (2, 3, 1, 0).
- ``ConvTranspose2d.weight`` (Cin, Cout, 4, 4) → ``ConvTranspose4x4s2`` ``kernel``
  (4, 4, Cin, Cout): transpose (2, 3, 0, 1).
- biases unchanged.

Key names follow torchvision and TernausNet (Shvets et al. 2018,
ternaus/robot-surgery-segmentation ``UNet11``):

- VGG11: ``features.{0,3,6,8,11,13,16,18}.{weight,bias}`` (torchvision ``vgg11()``); the
  prefix ``features.`` may also be ``encoder.`` or absent.
- U-Net11: ``encoder.{0,3,...,18}.*`` for the encoder, ``{center,dec5,dec4,dec3,dec2}
  .block.0.conv.*`` (3×3 conv) and ``.block.1.*`` (transposed conv), ``dec1.conv.*`` and
  ``final.*``. TernausNet's duplicate aliases (``conv1.0.weight`` …) are ignored.

A source is a path to a ``.pth``/``.pt`` file (read with ``torch.load``; torch is needed
for that only) or a mapping of names to numpy arrays or tensors. Checkpoints wrapped as
``{"model": state_dict}`` or ``{"state_dict": state_dict}`` and the ``module.`` prefix of
``nn.DataParallel`` are unwrapped. A missing key raises ``KeyError`` naming it; a tensor of
the wrong shape raises ``ValueError`` naming the key and both shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxsurg.models.vgg import VGG11_STAGES

StateDict = Mapping[str, Any]
Source = str | os.PathLike | StateDict

DECODER_BLOCKS = ("center", "dec5", "dec4", "dec3", "dec2")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def load_state_dict(source: Source) -> dict[str, np.ndarray]:
    """A flat ``{name: float32 numpy array}`` from a file path or a mapping.

    Args:
      source: path to a ``.pth``/``.pt`` file, or a mapping of names to arrays/tensors.
        ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers and ``module.`` prefixes are
        removed.

    Raises:
      ImportError: a path was given and torch is not installed.
      TypeError: the source is neither a path nor a mapping.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {os.fspath(source)!r} needs torch; pass a mapping of numpy arrays instead"
            ) from e
        source = torch.load(os.fspath(source), map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a path or a mapping of arrays, got {type(source).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(source.get(wrapper), Mapping):
            source = source[wrapper]
    out = {}
    for name, value in source.items():
        if not hasattr(value, "shape"):
            continue  # e.g. epoch counters stored beside the weights
        out[name.removeprefix("module.")] = _to_numpy(value)
    return out


def _get(sd: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    if key not in sd:
        near = sorted(k for k in sd if k.split(".")[0] == key.split(".")[0])[:8]
        hint = f"; keys with that prefix: {near}" if near else f"; the state dict has {len(sd)} keys"
        raise KeyError(f"missing key {key!r} in the PyTorch state dict{hint}")
    value = sd[key]
    if value.ndim != ndim:
        raise ValueError(f"{key!r} has shape {value.shape}, expected a rank-{ndim} tensor")
    return value


def _conv(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    w = _get(sd, prefix + "weight", 4)
    b = _get(sd, prefix + "bias", 1)
    _check_bias(b, w.shape[0], prefix)
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b}


def _check_bias(b: np.ndarray, channels: int, prefix: str) -> None:
    if b.shape != (channels,):
        raise ValueError(f"{prefix}bias has shape {b.shape}, expected ({channels},) to match {prefix}weight")


def _deconv(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    w = _get(sd, prefix + "weight", 4)
    if w.shape[2:] != (4, 4):
        raise ValueError(
            f"{prefix + 'weight'!r} has shape {w.shape}, expected a ConvTranspose2d weight "
            "(Cin, Cout, 4, 4) (TernausNet is_deconv=True: kernel 4, stride 2, padding 1)"
        )
    b = _get(sd, prefix + "bias", 1)
    _check_bias(b, w.shape[1], prefix)
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 0, 1)), "bias": b}


def _detect_vgg_prefix(sd: Mapping[str, np.ndarray]) -> str:
    for prefix in ("features.", "encoder."):
        if prefix + "0.weight" in sd:
            return prefix
    return ""


def vgg11_encoder_params(source: Source, *, prefix: str | None = None) -> dict[str, Any]:
    """``VGG11Encoder`` params from a torchvision VGG11 (no BN) ``features`` state dict.

    Args:
      source: path or mapping (see ``load_state_dict``).
      prefix: key prefix of the conv layers; None = detect ``features.``, ``encoder.`` or none.

    Returns:
      ``{conv1: {kernel, bias}, conv2, conv3s, conv3, conv4s, conv4, conv5s, conv5}`` of
      float32 numpy arrays with kernels (3, 3, Cin, Cout).

    Raises:
      KeyError: a conv weight/bias is missing (the message names the key).
      ValueError: a tensor has the wrong shape (the message names the key).
    """
    sd = load_state_dict(source)
    if prefix is None:
        prefix = _detect_vgg_prefix(sd)
    params, cin = {}, 3
    for stage in VGG11_STAGES:
        for name, cout, index in stage:
            p = _conv(sd, f"{prefix}{index}.")
            expected = (3, 3, cin, cout)
            if p["kernel"].shape != expected:
                torch_shape = (cout, cin, 3, 3)
                raise ValueError(
                    f"{prefix}{index}.weight has shape {sd[f'{prefix}{index}.weight'].shape}, "
                    f"expected {torch_shape} (VGG11 {name})"
                )
            params[name], cin = p, cout
    return params


def unet11_params(source: Source) -> dict[str, Any]:
    """``UNet11`` params from a PyTorch TernausNet U-Net11 (``is_deconv=True``) state dict.

    num_classes and num_filters follow from the tensors; pass the result through
    ``check_like`` (or ``load_unet11`` with a template) to validate them against a model.

    Returns:
      A nested dict of float32 numpy arrays with the structure of ``UNet11`` params.

    Raises:
      KeyError / ValueError: as ``vgg11_encoder_params``.
    """
    sd = load_state_dict(source)
    params: dict[str, Any] = {"encoder": vgg11_encoder_params(sd, prefix="encoder.")}
    for name in DECODER_BLOCKS:
        params[name] = {"conv": _conv(sd, f"{name}.block.0.conv."), "deconv": _deconv(sd, f"{name}.block.1.")}
    params["dec1"] = _conv(sd, "dec1.conv.")
    params["final"] = _conv(sd, "final.")
    return params


def check_like(params: Any, template: Any, path: str = "params") -> None:
    """Raises ``KeyError``/``ValueError`` naming the entry where ``params`` and ``template``
    differ in structure or shape."""
    if isinstance(template, Mapping):
        if not isinstance(params, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {type(params).__name__}")
        for key in template:
            if key not in params:
                raise KeyError(f"{path}/{key} is missing from the converted params")
            check_like(params[key], template[key], f"{path}/{key}")
        extra = set(params) - set(template)
        if extra:
            raise ValueError(f"{path}: unexpected entries {sorted(extra)}")
    elif tuple(np.shape(params)) != tuple(np.shape(template)):
        raise ValueError(f"{path} has shape {tuple(np.shape(params))}, the model expects {tuple(np.shape(template))}")


def load_unet11(source: Source, template: Any = None) -> dict[str, Any]:
    """``UNet11`` params from a PyTorch file or mapping, checked against ``template``.

    Args:
      source: path or mapping.
      template: optional params of the target model (e.g. from ``model.init``); shapes
        (hence num_classes and num_filters) must match.

    Returns:
      Params as numpy arrays (``jax.device_put`` them, or pass them to ``apply`` directly).
    """
    params = unet11_params(source)
    if template is not None:
        check_like(params, template)
    return params


def load_vgg11_encoder(source: Source, params: Any) -> Any:
    """Returns ``params`` with the VGG11 encoder replaced by torchvision VGG11 weights.

    Args:
      source: torchvision ``vgg11().state_dict()`` file or mapping (``features.*`` keys;
        ``classifier.*`` is ignored).
      params: ``UNet11`` params (with an ``encoder`` entry) or ``VGG11Encoder`` params.

    Returns:
      A new params dict of the same structure (other entries are shared, not copied).

    Raises:
      KeyError / ValueError: missing or mis-shaped tensors.
    """
    encoder = vgg11_encoder_params(source)
    if isinstance(params, Mapping) and "encoder" in params:
        check_like(encoder, params["encoder"], "params/encoder")
        return {**params, "encoder": encoder}
    check_like(encoder, params)
    return encoder
