"""The train state every stage carries (step, parameters, optimiser state, BatchNorm
statistics), its gradient update, and the optimiser of a stage block.

A stage whose training updates several networks (a GAN's generator and discriminator, a
backbone and a head with their own optimisers) carries a ``dict[str, TrainState]``: the
loop, the checkpoints and resume treat it as one pytree, and the loop logs each state's
learning rate as ``learning_rate/<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("step", "warmup_cosine")


@flax.struct.dataclass
class TrainState:
    """A pytree of (step, params, opt_state, batch_stats) with its optimiser and schedule.

    Attributes:
      step: int32 scalar, the number of optimiser updates applied.
      params: the Linen ``params`` collection.
      opt_state: the optax state of ``tx``.
      batch_stats: the Linen ``batch_stats`` collection (``{}`` for models without BatchNorm).
      tx: the optimiser (static: not a leaf, not checkpointed).
      schedule: step → learning rate, for logging (static; None when not known).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any = flax.struct.field(default_factory=dict)
    tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False, default=None)
    schedule: Schedule | None = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def create(
        cls, params: Any, tx: optax.GradientTransformation, batch_stats: Any = None, schedule: Schedule | None = None
    ) -> "TrainState":
        """A fresh state at step 0 with ``tx.init(params)``."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            batch_stats={} if batch_stats is None else batch_stats,
            tx=tx,
            schedule=schedule,
        )

    def apply_gradients(self, grads: Any, **changes: Any) -> "TrainState":
        """One optimiser update: ``tx.update`` → ``optax.apply_updates``, step + 1; ``changes``
        replaces other fields (the new ``batch_stats``).

        Raises:
          ValueError: for a state made without an optimiser.
        """
        if self.tx is None:
            raise ValueError("TrainState.apply_gradients needs a state made by TrainState.create(params, tx)")
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)

    def learning_rate(self, step: int) -> float | None:
        """The learning rate at ``step`` (None without a schedule)."""
        return None if self.schedule is None else float(self.schedule(step))


def adam_with_step_decay(
    learning_rate: float,
    *,
    weight_decay: float = 0.0,
    decay_factor: float = 1.0,
    decay_every: int = 0,
    b1: float = 0.9,
    b2: float = 0.999,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam (β1 = ``b1``, β2 = ``b2``; PyTorch's defaults 0.9, 0.999) with PyTorch-style L2
    weight decay and a staircase learning-rate schedule.

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
    return optax.chain(*parts, optax.scale_by_adam(b1=b1, b2=b2), optax.scale_by_learning_rate(schedule)), schedule


def warmup_cosine_adamw(
    learning_rate: float, *, total_steps: int, warmup_steps: int, weight_decay: float, final_fraction: float = 0.01
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (decoupled weight decay) with a linear warm-up from 0 over ``warmup_steps`` (at
    least 1, at most ``total_steps`` − 1) and a cosine decay to ``final_fraction`` ×
    ``learning_rate`` at ``total_steps`` (SegFormer's recipe; Laparoflow-SSL gives none)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps=max(1, min(warmup_steps, total_steps - 1)),
        decay_steps=max(total_steps, 2), end_value=learning_rate * final_fraction,
    )
    return optax.adamw(schedule, weight_decay=weight_decay), schedule


def make_optimizer(block: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimiser, schedule) of a resolved stage block (``jaxsurg.config.stage_block``).

    ``optimizer``: "adam" (L2 weight decay added to the gradient, as PyTorch's Adam) or
    "adamw" (decoupled). ``lr_schedule``: "step" (``adam_with_step_decay``'s staircase:
    ``lr_decay_factor`` every ``lr_decay_every`` steps; constant when either is neutral) or
    "warmup_cosine" (``warmup_steps`` of linear warm-up, then cosine to 1 % of the rate).

    Raises:
      ValueError: an unknown optimiser or schedule, or a combination jaxsurg does not build
        (adam + warmup_cosine, adamw + step, warm-up steps with the step schedule); the
        message names the block's keys.
    """
    opt, sched = block.optimizer, block.lr_schedule
    if opt not in OPTIMIZERS or sched not in LR_SCHEDULES:
        raise ValueError(f"optimizer={opt!r}, lr_schedule={sched!r}: known optimizers {OPTIMIZERS}, schedules {LR_SCHEDULES}")
    if sched == "step":
        if opt != "adam" or block.warmup_steps:
            raise ValueError(
                f"lr_schedule='step' is built with optimizer='adam' and warmup_steps=0 (got {opt!r}, "
                f"{block.warmup_steps}); use lr_schedule='warmup_cosine' for a warm-up"
            )
        return adam_with_step_decay(
            block.learning_rate, weight_decay=block.weight_decay,
            decay_factor=block.lr_decay_factor, decay_every=block.lr_decay_every,
        )
    if opt != "adamw" or block.lr_decay_every or block.lr_decay_factor != 1.0:
        raise ValueError(
            f"lr_schedule='warmup_cosine' is built with optimizer='adamw' and no step decay (got {opt!r}, "
            f"lr_decay_every={block.lr_decay_every}, lr_decay_factor={block.lr_decay_factor})"
        )
    return warmup_cosine_adamw(
        block.learning_rate, total_steps=block.total_steps, warmup_steps=block.warmup_steps, weight_decay=block.weight_decay
    )
