"""A finished run's segmentation network as a pure function of frames: what each method's
``trained_model`` returns, and what ``jaxsurg.predict`` runs, in process or exported.

A run is finished when ``WORKDIR/config.json`` (the resolved config), ``WORKDIR/eval/summary.json``
(with the ``frame_size`` and ``class_names`` evaluation records) and the final checkpoint of
the method's last training stage are there. Each method package exposes
``trained_model(config, workdir, summary) -> TrainedModel``; ``load`` finds it through
``jaxsurg.cli.METHODS`` by ``config.method``, so this module has no method branches.
``export``, ``write_export`` and ``load_exported`` make and read the self-contained
``jax.export`` artifact of ``jaxsurg.predict --export`` / ``--exported``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsurg.cli import METHODS


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # jaxsurg.predict --dtype


class RunNotUsable(ValueError):
    """A workdir that cannot give a trained model: not finished, made by another jaxsurg
    version, or of a method without a loader; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class KeypointDetector:
    """A trained key-point head (Laparoflow-SSL's), run beside the segmentation network.

    Attributes:
      detect: pure ``(variables, uint8 (B, h, w, 3)) → (xy float32 (B, K, P, 2) as (x, y)
        pixel centres of frames of ``frame_size``, scores float32 (B, K, P) in [0, 1], valid
        bool (B, K, P))``: up to P peaks per key-point type after non-maximum suppression.
      variables: its Linen variables (host arrays).
      frame_size: (h, w) px at which it detects.
      names: the K key-point types.
    """

    detect: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    variables: Any
    frame_size: tuple[int, int]
    names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained segmentation network, ready for frames of its ``frame_size``.

    Attributes:
      method: the run's method as its summary names it (``unet11``, ``laparoflow``,
        ``laparoflow_nossl``, ``dual_motion``, ``agsd``, ``pat``, ``pat_ext``, ...).
      classes: pure and traceable ``(variables, uint8 (B, H, W, 3)) → int32 (B, H, W)`` class
        indices of ``class_names`` (frames of ``frame_size``); with ``clip_length`` T > 1 the
        input is uint8 (B, T, H, W, 3), the T latest frames, and the map is the last one's.
      variables: the network's Linen variables (host arrays).
      frame_size: (H, W) px at which the run evaluated frames: new frames are resized to it.
      class_names: the task's classes, index 0 = background.
      clip_length: frames each prediction sees (1 = single frames).
      postprocess: a host step on each int32 (H, W) class map after ``classes`` (AGSD's
        removal of small components), or None. A model with one cannot be exported.
      postprocess_note: what ``postprocess`` does, for that refusal.
      keypoints: the run's key-point head, or None (not exported with the network).
    """

    method: str
    classes: Callable[[Any, jax.Array], jax.Array]
    variables: Any
    frame_size: tuple[int, int]
    class_names: tuple[str, ...]
    clip_length: int = 1
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None
    postprocess_note: str = ""
    keypoints: KeypointDetector | None = None

    def input_shape(self, batch: int | Any) -> tuple:
        """The ``classes`` input shape for ``batch`` frames (or clips)."""
        clip = (self.clip_length,) if self.clip_length > 1 else ()
        return (batch, *clip, *self.frame_size, 3)


def read_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The resolved config (``config.json``) and ``eval/summary.json`` of a finished run.

    Raises:
      RunNotUsable: either file is missing (the run did not finish its evaluation), or the
        summary predates the ``frame_size``/``class_names`` records (another jaxsurg version;
        ``--resume`` with the run's command re-evaluates it).
    """
    paths = {name: os.path.join(workdir, name) for name in ("config.json", os.path.join("eval", "summary.json"))}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise RunNotUsable(f"{workdir} is not a finished jaxsurg run: {', '.join(missing)} missing (a run writes them when its evaluation ends)")
    with open(paths["config.json"], encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths[os.path.join("eval", "summary.json")], encoding="utf-8") as f:
        summary = json.load(f)
    absent = [k for k in ("frame_size", "class_names") if not summary.get(k)]
    if absent:
        raise RunNotUsable(
            f"{paths[os.path.join('eval', 'summary.json')]} has no {' or '.join(absent)}: made by an older jaxsurg (or evaluated on frames of "
            "several sizes); rerun the run's command with --resume to evaluate it again with this version"
        )
    return config, summary


def load(workdir: str) -> TrainedModel:
    """The trained model of the finished run in ``workdir`` (``read_run``, then the method
    package's ``trained_model``).

    Raises:
      RunNotUsable: see ``read_run``; an unknown method; the final checkpoint missing or of
        another format (the message names the directory).
    """
    config, summary = read_run(workdir)
    if config.method not in METHODS:
        raise RunNotUsable(f"{workdir}/config.json: method {config.method!r} is unknown to this jaxsurg; known: {sorted(METHODS)}")
    try:
        return importlib.import_module(METHODS[config.method]).trained_model(config, workdir, summary)
    except RunNotUsable:
        raise
    except ValueError as e:  # the checkpoint's own messages (missing, unfinished, format)
        raise RunNotUsable(str(e)) from None


def frame_size(summary: dict[str, Any]) -> tuple[int, int]:
    """(H, W) of the summary's ``frame_size``."""
    h, w = summary["frame_size"]
    return int(h), int(w)


def cast(variables: Any, dtype: Any) -> Any:
    """``variables`` with every floating leaf cast to ``dtype`` (integer leaves as they are)."""
    return jax.tree.map(lambda v: np.asarray(v).astype(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v, variables)


def export(model: TrainedModel, dtype: Any = jnp.float32) -> jax.export.Exported:
    """``model.classes`` with its variables baked in, as a ``jax.export`` artifact (StableHLO)
    that takes any batch size: uint8 (b, [T,] H, W, 3) → int32 (b, H, W).

    Raises:
      ValueError: the model has a host ``postprocess`` that the artifact could not carry.
    """
    if model.postprocess is not None:
        raise ValueError(f"{model.method}: {model.postprocess_note}, on the host after the network; it cannot be exported (predict in process instead)")
    variables = cast(model.variables, dtype)
    batch = jax.export.symbolic_shape("b")[0]
    fn = jax.jit(lambda images: model.classes(variables, images))
    return jax.export.export(fn)(jax.ShapeDtypeStruct(model.input_shape(batch), jnp.uint8))


def write_export(model: TrainedModel, path: str, dtype: str, record: dict[str, Any]) -> None:
    """``export`` serialized to ``path`` and its description to ``path + '.json'``
    (each written to a temporary name, then renamed: no half-written artifact).

    Raises:
      ValueError: see ``export``.
    """
    data = export(model, DTYPES[dtype]).serialize()
    meta = {
        **record, "class_names": list(model.class_names), "frame_size": list(model.frame_size), "clip_length": model.clip_length,
        "dtype": dtype, "input": "uint8 (b, [clip_length,] H, W, 3) RGB frames of frame_size", "output": "int32 (b, H, W) class indices",
    }
    for target, content in ((path, data), (path + ".json", (json.dumps(meta, indent=2) + "\n").encode())):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with open(target + ".partial", "wb") as f:
            f.write(content)
        os.replace(target + ".partial", target)


def load_exported(path: str) -> tuple[TrainedModel, Any]:
    """An exported artifact as a ``TrainedModel`` without variables, and its ``call``.

    Raises:
      FileNotFoundError: ``path`` is missing. ValueError: not a jax.export artifact (names it),
        or ``path + '.json'`` missing.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        exported = jax.export.deserialize(bytearray(data))
    except Exception as e:  # noqa: BLE001 -- flatbuffers raises assorted errors on foreign bytes
        raise ValueError(f"--exported={path}: not a jax.export artifact written by jaxsurg.predict --export ({type(e).__name__})") from None
    shape = exported.in_avals[0].shape
    if not os.path.exists(path + ".json"):
        raise ValueError(f"--exported={path}: {path}.json (written beside it by --export: the class names) is missing")
    with open(path + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    model = TrainedModel(
        method=meta.get("method", "exported"), classes=None, variables=None, frame_size=(int(shape[-3]), int(shape[-2])),
        class_names=tuple(meta["class_names"]), clip_length=int(shape[1]) if len(shape) == 5 else 1,
    )
    return model, exported.call
