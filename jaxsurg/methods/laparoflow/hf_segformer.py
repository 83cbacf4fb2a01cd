"""Hugging Face SegFormer checkpoints → Linen variables of ``jaxsurg.methods.laparoflow.segformer``.

Reads the weights of ``transformers``' ``SegformerModel`` (the MiT encoder),
``SegformerForSemanticSegmentation`` (encoder + ``decode_head``) or
``SegformerForImageClassification`` (e.g. ``nvidia/mit-b0``; its ImageNet ``classifier`` is
ignored) into the variables of ``SegFormer`` or ``MiTEncoder``. Sources: a ``.safetensors``
file (read with ``safetensors.numpy``; torch is not needed), a PyTorch ``state_dict`` file
(``.bin``/``.pt``/``.pth``; torch is imported only then) or an in-memory mapping of names to
numpy arrays / tensors.

Both key layouts are accepted:

- transformers ≥ 5: ``[segformer.]stages.{i}.patch_embeddings.{proj,layer_norm}``,
  ``stages.{i}.blocks.{j}.{layernorm_before, attention.{q,k,v,o}_proj,
  attention.sequence_reduction.{sequence_reduction,layer_norm}, layernorm_after,
  mlp.{fc1,dwconv.dwconv,fc2}}``, ``stages.{i}.layer_norm``, ``decode_head.linear_projections.{i}.proj``;
- the hub's original (transformers 4) names: ``[segformer.]encoder.patch_embeddings.{i}``,
  ``encoder.block.{i}.{j}.{layer_norm_1, attention.self.{query,key,value,sr,layer_norm},
  attention.output.dense, layer_norm_2, mlp.{dense1,dwconv.dwconv,dense2}}``,
  ``encoder.layer_norm.{i}``, ``decode_head.linear_c.{i}.proj``;

plus ``decode_head.{linear_fuse, batch_norm, classifier}`` in both. A ``module.`` prefix and
``{"state_dict": …}`` / ``{"model": …}`` wrappers are removed; ``num_batches_tracked`` is ignored.

Layouts: ``Linear.weight`` (out, in) → ``kernel`` (in, out); ``Conv2d.weight`` (out, in/groups,
kH, kW) → ``kernel`` (kH, kW, in/groups, out); the 1×1 convs ``linear_fuse`` and
``classifier`` (out, in, 1, 1) → Dense ``kernel`` (in, out); LayerNorm/BatchNorm ``weight`` →
``scale``; BatchNorm ``running_mean``/``running_var`` → ``batch_stats`` ``mean``/``var``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

StateDict = Mapping[str, Any]
Source = str | os.PathLike | StateDict

# transformers-4 (hub) names → transformers-5 names (applied in order, after prefix handling).
_OLD_TO_NEW = (
    (r"^encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
)


def _describe(source: Source) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "<state dict>"


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def read_state_dict(source: Source) -> dict[str, np.ndarray]:
    """A flat ``{name: numpy array}`` from a ``.safetensors`` file, a torch file or a mapping.

    Raises:
      ImportError: the file needs ``safetensors`` / ``torch`` and it is not installed.
      FileNotFoundError: the path does not exist.
      TypeError: the source is neither a path nor a mapping.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"SegFormer checkpoint {path!r} does not exist")
        if path.endswith(".safetensors"):
            try:
                from safetensors.numpy import load_file
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(f"reading {path!r} needs the 'safetensors' package") from e
            source = load_file(path)
        else:
            try:
                import torch
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(
                    f"reading {path!r} needs torch; convert it to .safetensors or pass a mapping of numpy arrays"
                ) from e
            source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a checkpoint path or a mapping of arrays, got {type(source).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(source.get(wrapper), Mapping):
            source = source[wrapper]
    return {k.removeprefix("module."): _to_numpy(v) for k, v in source.items() if hasattr(v, "shape")}


def canonical_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a SegFormer state dict to the transformers-5 layout without model prefix.

    ``segformer.`` is stripped; transformers-4 names are renamed (``_OLD_TO_NEW``); a bare
    transformers-4 encoder module (``patch_embeddings.0…``, ``block.0.0…``) gets ``encoder.``
    first. ``num_batches_tracked`` and the image-classification ``classifier.*`` of
    ``SegformerForImageClassification`` are dropped. Returns a new dict.
    """
    out = {}
    for key, value in sd.items():
        k = key.removeprefix("segformer.")
        if k.endswith("num_batches_tracked") or k.startswith("classifier."):
            continue
        if re.match(r"^(patch_embeddings|block|layer_norm)\.\d+\.", k):
            k = "encoder." + k
        for pattern, repl in _OLD_TO_NEW:
            k = re.sub(pattern, repl, k)
        out[k] = value
    return out


def _hf_key(path: tuple[str, ...]) -> tuple[str, str]:
    """(HF key, layout) of one Linen leaf path (collection first), layout ∈ {linear, conv, conv1x1, vector}."""
    collection, *names, leaf = path
    parts = []
    for name in names:
        if name == "encoder":
            continue
        m = re.fullmatch(r"(stage|blocks)_(\d+)", name)
        if m:
            parts += ["stages" if m[1] == "stage" else "blocks", m[2]]
            continue
        m = re.fullmatch(r"linear_projections_(\d+)", name)
        if m:
            parts += ["linear_projections", m[1], "proj"]
            continue
        parts.append("dwconv.dwconv" if name == "dwconv" else name)
    module = ".".join(parts)
    if collection == "batch_stats":
        return f"{module}.running_{leaf}", "vector"
    if leaf == "scale":
        return f"{module}.weight", "vector"
    if leaf == "bias":
        return f"{module}.bias", "vector"
    if leaf != "kernel":
        raise ValueError(f"unexpected Linen parameter {'/'.join(path)}")
    if names[-1] in ("linear_fuse", "classifier"):
        return f"{module}.weight", "conv1x1"
    if names[-1] in ("proj", "sequence_reduction", "dwconv"):
        return f"{module}.weight", "conv"
    return f"{module}.weight", "linear"


def _hf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "linear":
        return (shape[1], shape[0])
    if layout == "conv1x1":
        return (shape[1], shape[0], 1, 1)
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def _from_hf(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return value.T
    if layout == "conv1x1":
        return value[:, :, 0, 0].T
    if layout == "conv":
        return value.transpose(2, 3, 1, 0)
    return value


def load_segformer(source: Source, variables: Mapping[str, Any], *, load_classifier: bool = True) -> dict[str, Any]:
    """Load a Hugging Face SegFormer checkpoint into ``SegFormer`` / ``MiTEncoder`` variables.

    Args:
      source: path to a ``.safetensors`` file or a PyTorch ``state_dict`` file
        (``.bin``/``.pt``/``.pth``), or a mapping of names to arrays/tensors; from
        ``SegformerModel``, ``SegformerForSemanticSegmentation`` or
        ``SegformerForImageClassification``, in the transformers-4 or -5 key layout.
      variables: the model's variables (``{"params": …[, "batch_stats": …]}``) from
        ``model.init`` or ``jax.eval_shape(model.init, …)`` (abstract leaves are fine for
        everything the checkpoint provides). They set the expected shapes.
      load_classifier: if False, ``decode_head.classifier.*`` of the checkpoint is ignored and
        the variables' ``classifier`` is kept, e.g. to put a ``num_labels = 150`` ADE20k
        head's decoder under a ``SegFormer(out_dim=256)``.

    Returns:
      New variables (same structure, float32 ``jax.Array`` leaves): every encoder leaf from the
      checkpoint; every decoder leaf too when the checkpoint has a ``decode_head``; when it has
      none (an encoder-only checkpoint), the decoder of ``variables`` is kept as given.

    Raises:
      ValueError (naming the file and the key): an encoder (or, when present, decoder) key the
        model needs is missing; the checkpoint has a key the model does not use (e.g. a decoder
        given to ``MiTEncoder`` variables, or a deeper variant); a tensor has another shape than
        the model's (both shapes in PyTorch layout; for the classifier, with the hint to set
        ``out_dim = num_labels`` or ``load_classifier=False``); or a kept leaf is abstract.
      TypeError: ``variables`` has no ``params`` mapping.
      FileNotFoundError / ImportError / TypeError: see ``read_state_dict``.
    """
    name = _describe(source)
    sd = canonical_keys(read_state_dict(source))
    has_decoder = any(k.startswith("decode_head.") for k in sd)
    if not load_classifier:
        sd = {k: v for k, v in sd.items() if not k.startswith("decode_head.classifier.")}
    params = variables.get("params") if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping):
        raise TypeError("load_segformer: variables must be a mapping with a 'params' collection")
    model_has_decoder = "decode_head" in params
    if has_decoder and not model_has_decoder:
        raise ValueError(
            f"{name} has a decode_head (keys 'decode_head.*') but the variables are an encoder only (MiTEncoder); "
            "load it into SegFormer variables"
        )

    used = set()
    leaves, treedef = jax.tree_util.tree_flatten_with_path({k: variables[k] for k in variables})
    out = []
    for path, leaf in leaves:
        path = tuple(getattr(p, "key", str(p)) for p in path)
        key, layout = _hf_key(path)
        in_decoder = key.startswith("decode_head.")
        skip = in_decoder and (not has_decoder or (not load_classifier and key.startswith("decode_head.classifier.")))
        if skip:
            if isinstance(leaf, jax.ShapeDtypeStruct):
                raise ValueError(
                    f"{name} has no {key!r} and the variables' leaf {'/'.join(path)} is abstract; "
                    "pass initialised variables to keep it"
                )
            out.append(leaf)
            continue
        if key not in sd:
            raise ValueError(f"{name} is missing key {key!r} (expected shape {_hf_shape(leaf.shape, layout)})")
        value = sd[key]
        expected = _hf_shape(tuple(leaf.shape), layout)
        if tuple(value.shape) != expected:
            hint = ""
            if key.startswith("decode_head.classifier."):
                hint = (f"; the checkpoint's decoder has num_labels={value.shape[0]}: build SegFormer("
                        f"out_dim={value.shape[0]}) or pass load_classifier=False")
            raise ValueError(f"{name}: key {key!r} has shape {tuple(value.shape)}, expected {expected}{hint}")
        used.add(key)
        out.append(jax.numpy.asarray(np.ascontiguousarray(_from_hf(value, layout)), dtype=leaf.dtype))
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise ValueError(
            f"{name} has {len(unexpected)} key(s) the model does not use, e.g. {unexpected[:5]} "
            "(another MiT variant or model?)"
        )
    return jax.tree_util.tree_unflatten(treedef, out)
