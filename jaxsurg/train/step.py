"""One way to build a train step: a gradient update of a ``TrainState`` and its jit over the
device mesh (state replicated and donated, batch split over ``data``, frozen extras such as
VGG16 parameters passed replicated and never donated).

A step is ``step(state, batch) -> (state, metrics)`` where ``state`` is a ``TrainState`` or
a dict of them (several networks with their own optimisers: a GAN's discriminator and
generator are updated one after the other inside one step) and ``metrics`` a dict of
scalars with at least ``loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train.state import TrainState

BATCH_STATS = "batch_stats"


def gradient_step(
    state: TrainState, loss_fn: Callable[[Any], tuple[jax.Array, dict[str, Any]]]
) -> tuple[TrainState, jax.Array, dict[str, Any], Any]:
    """``value_and_grad`` of ``loss_fn(params) -> (loss, aux)`` and one optimiser update.

    ``aux`` is a dict of metrics; its entry ``"batch_stats"``, if any, is the new BatchNorm
    statistics and replaces ``state.batch_stats`` (it is not returned among the metrics).

    Returns:
      (new state, loss, the other aux entries, the gradients).
    """
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    aux = dict(aux)
    changes = {"batch_stats": aux.pop(BATCH_STATS)} if BATCH_STATS in aux else {}
    return state.apply_gradients(grads, **changes), loss, aux, grads


def jit_step(step: Callable[..., tuple[Any, dict[str, jax.Array]]], mesh: jax.sharding.Mesh, *, frozen: Any = None):
    """``step`` jitted over ``mesh``: ``state`` and metrics replicated, the batch split along
    its leading axis, the input state donated (its buffers are reused for the output).

    Args:
      step: ``step(state, batch)``, or ``step(state, batch, frozen)`` when ``frozen`` is given.
      mesh: the device mesh (``jaxsurg.train.mesh.make_mesh``).
      frozen: a pytree of arrays the step reads but does not train (e.g. VGG16 parameters of
        a perceptual loss): put on the devices once, replicated, passed to every call.

    Returns:
      ``fn(state, batch) -> (state, metrics)``.
    """
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    if frozen is None:
        return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)
    jitted = jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)
    frozen = jax.device_put(frozen, rep)

    def with_frozen(state, batch):
        return jitted(state, batch, frozen)

    with_frozen.frozen = frozen  # the device copy every call reads (tests check it is not donated)
    return with_frozen


def put_replicated(state: Any, mesh: jax.sharding.Mesh) -> Any:
    """``state`` (host or device arrays) replicated on every device of ``mesh``."""
    return jax.device_put(state, mesh_lib.replicated(mesh))
