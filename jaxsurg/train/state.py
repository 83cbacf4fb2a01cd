"""The train state every stage carries: step, parameters, optimiser state."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """A pytree of (step, params, opt_state); ``batch_stats`` is empty for models without BN.

    Attributes:
      step: int32 scalar, the number of optimiser updates applied.
      params: the Linen ``params`` collection.
      opt_state: the optax state of ``tx``.
      batch_stats: the Linen ``batch_stats`` collection (``{}`` when unused).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any = flax.struct.field(default_factory=dict)

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, batch_stats: Any = None) -> "TrainState":
        """A fresh state at step 0 with ``tx.init(params)``."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            batch_stats={} if batch_stats is None else batch_stats,
        )


def adam_with_step_decay(
    learning_rate: float,
    *,
    weight_decay: float = 0.0,
    decay_factor: float = 1.0,
    decay_every: int = 0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with PyTorch-style L2 weight decay and a staircase learning-rate schedule.

    The learning rate is ``learning_rate · decay_factor ** floor(step / decay_every)``
    (constant when ``decay_every`` is 0), as in Dual MF's "×0.9 every 5 epochs" and
    TernausNet's step from 1e-4 to 1e-5. ``weight_decay`` is added to the gradient before
    Adam (``torch.optim.Adam(weight_decay=...)``), not decoupled as in AdamW.

    Returns:
      (optimiser, schedule) — the schedule maps a step to its learning rate (for logging).
    """
    if decay_every > 0 and decay_factor != 1.0:
        schedule = optax.exponential_decay(
            learning_rate, transition_steps=decay_every, decay_rate=decay_factor, staircase=True
        )
    else:
        schedule = optax.constant_schedule(learning_rate)
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    return optax.chain(*parts, optax.scale_by_adam(), optax.scale_by_learning_rate(schedule)), schedule
