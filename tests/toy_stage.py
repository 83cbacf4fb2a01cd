"""A toy training stage for tests of the stage machinery around a method (resume, kept
steps, plateaus): one parameter vector w fitted to the examples 0 … 7 by Adam, so a run is
a few milliseconds a step and its numbers are known."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsurg.config import stage_block
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, adam_with_step_decay


def toy_stage(*, total_steps, log_every, checkpoint_every, keep_checkpoints, **schedule):
    """(mesh, examples, jitted step, fresh-state function, stage block, config) of the toy
    stage; ``schedule``: ``adam_with_step_decay``'s decay arguments (learning rate 0.1)."""
    mesh = mesh_lib.make_mesh()
    examples = [{"x": np.full((1,), i, np.float32)} for i in range(8)]

    def fit(state, batch):
        def loss_fn(p):
            return jnp.mean((p["w"][0] - batch["x"]) ** 2), {}

        state, loss, _, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss}

    def fresh():
        tx, lr = adam_with_step_decay(0.1, **schedule)
        return step_lib.put_replicated(TrainState.create({"w": jnp.arange(3.0)}, tx, schedule=lr), mesh)

    block = stage_block(total_steps=total_steps, batch_size=2 * jax.device_count(), log_every=log_every, checkpoint_every=checkpoint_every)
    config = ml_collections.ConfigDict(dict(seed=0, data_threads=1, keep_checkpoints=keep_checkpoints))
    return mesh, examples, step_lib.jit_step(fit, mesh), fresh, block, config
