"""The shared train step: TrainState.apply_gradients, gradient_step, jit_step, and a GAN
(discriminator, then generator, in one jitted step) run by the unchanged loop on a toy
two-player problem."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsurg.train import loop
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import step as step_lib
from jaxsurg.train.state import TrainState, adam_with_step_decay

MU, SIGMA = 2.0, 0.5  # the toy GAN's data: N(MU, SIGMA²) in 1-D


def test_apply_gradients_is_one_optax_update():
    tx = optax.adam(0.1)
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    state = TrainState.create(params, tx).apply_gradients(grads)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(state.params["w"], optax.apply_updates(params, updates)["w"])
    assert int(state.step) == 1
    with pytest.raises(ValueError, match="needs a state made by TrainState.create"):
        TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=()).apply_gradients(grads)


def test_gradient_step_takes_batch_stats_from_aux_and_returns_the_rest():
    tx, _ = adam_with_step_decay(0.1)
    state = TrainState.create({"w": jnp.ones(3)}, tx, batch_stats={"mean": jnp.zeros(3)})
    x = jnp.array([1.0, 2.0, 3.0])

    def loss_fn(p):
        return jnp.sum((p["w"] * x) ** 2), {"batch_stats": {"mean": x}, "norm": jnp.sum(p["w"])}

    new, loss, aux, grads = step_lib.gradient_step(state, loss_fn)
    assert float(loss) == pytest.approx(14.0)
    np.testing.assert_array_equal(grads["w"], 2 * x * x)
    np.testing.assert_array_equal(new.batch_stats["mean"], x)
    assert set(aux) == {"norm"}
    assert float(new.params["w"][0]) == pytest.approx(0.9, abs=1e-6)  # Adam's first step: lr · sign


def _discriminator(p, x):
    return p["w"][0] * x + p["w"][1] * x * x + p["c"]  # least-squares D on (x, x²)


def _generator(p, z):
    return p["a"] * z + p["b"]


def gan_step(states, batch):
    """LSGAN: D on real and fake, then G against the updated D, in one step."""
    real, z = batch["real"], batch["z"]
    fake = jax.lax.stop_gradient(_generator(states["generator"].params, z))

    def d_loss(p):
        return jnp.mean((_discriminator(p, real) - 1) ** 2) + jnp.mean(_discriminator(p, fake) ** 2), {}

    d, loss_d, _, _ = step_lib.gradient_step(states["discriminator"], d_loss)

    def g_loss(p):
        return jnp.mean((_discriminator(d.params, _generator(p, z)) - 1) ** 2), {}

    g, loss_g, _, _ = step_lib.gradient_step(states["generator"], g_loss)
    return {"generator": g, "discriminator": d}, {"loss": loss_d + loss_g, "loss_d": loss_d, "loss_g": loss_g}


def _gan_setup(mesh):
    tx_g, sched_g = adam_with_step_decay(0.02)
    tx_d, sched_d = adam_with_step_decay(0.05, decay_factor=0.5, decay_every=1000)
    states = {
        "generator": TrainState.create({"a": jnp.ones(()), "b": jnp.zeros(())}, tx_g, schedule=sched_g),
        "discriminator": TrainState.create({"w": jnp.zeros(2), "c": jnp.zeros(())}, tx_d, schedule=sched_d),
    }
    return step_lib.put_replicated(states, mesh), (tx_g, tx_d)


def _gan_batch(step):
    rng = np.random.default_rng(step)
    return {"real": (MU + SIGMA * rng.standard_normal(64)).astype(np.float32), "z": rng.standard_normal(64).astype(np.float32)}


def test_gan_step_updates_the_discriminator_first_then_the_generator_against_it():
    mesh = mesh_lib.make_mesh()
    states, (tx_g, tx_d) = _gan_setup(mesh)
    batch = _gan_batch(0)
    new, metrics = step_lib.jit_step(gan_step, mesh)(states, mesh_lib.global_batch(batch, mesh))
    # By hand: D's Adam step on its loss, then G's gradient through the NEW discriminator.
    g0 = {"a": jnp.ones(()), "b": jnp.zeros(())}
    d0 = {"w": jnp.zeros(2), "c": jnp.zeros(())}
    real, z = jnp.asarray(batch["real"]), jnp.asarray(batch["z"])
    fake = _generator(g0, z)
    d_grads = jax.grad(lambda p: jnp.mean((_discriminator(p, real) - 1) ** 2) + jnp.mean(_discriminator(p, fake) ** 2))(d0)
    d_upd, _ = tx_d.update(d_grads, tx_d.init(d0), d0)
    d1 = optax.apply_updates(d0, d_upd)
    g_grads = jax.grad(lambda p: jnp.mean((_discriminator(d1, _generator(p, z)) - 1) ** 2))(g0)
    g_upd, _ = tx_g.update(g_grads, tx_g.init(g0), g0)
    g1 = optax.apply_updates(g0, g_upd)
    for k in d1:
        np.testing.assert_allclose(new["discriminator"].params[k], d1[k], rtol=1e-6, atol=1e-7)
    for k in g1:
        np.testing.assert_allclose(new["generator"].params[k], g1[k], rtol=1e-6, atol=1e-7)
    assert int(new["generator"].step) == int(new["discriminator"].step) == 1
    assert g_grads["b"] != 0.0  # the generator really saw the discriminator's gradient
    assert float(metrics["loss_d"]) == pytest.approx(1.0)  # D starts at 0: (0 − 1)² + 0²


def _gan_train(workdir, total, mesh):
    states, _ = _gan_setup(mesh)
    cfg = loop.LoopConfig(stage="gan", total_steps=total, log_every=50, checkpoint_every=200, keep_checkpoints=2, examples_per_step=64)

    def batches_from(start):
        s = start
        while True:
            yield mesh_lib.global_batch(_gan_batch(s), mesh)
            s += 1

    return loop.train(cfg, str(workdir), states, step_lib.jit_step(gan_step, mesh), batches_from)


def test_gan_trains_with_the_shared_loop_resumes_and_logs_each_learning_rate(tmp_path):
    mesh = mesh_lib.make_mesh()
    full = _gan_train(tmp_path / "a", 600, mesh)
    _gan_train(tmp_path / "b", 200, mesh)  # interrupted after the checkpoint at 200 ...
    resumed = _gan_train(tmp_path / "b", 600, mesh)  # ... and the same job run again to 600
    for name in ("generator", "discriminator"):
        for a, b in zip(jax.tree.leaves(full[name].params), jax.tree.leaves(resumed[name].params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(resumed[name].step) == 600
    # The generator's mean moved from 0 to the data's mean.
    assert abs(float(full["generator"].params["b"]) - MU) < 0.5
    records = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert records[0]["learning_rate/generator"] == pytest.approx(0.02)
    assert records[0]["learning_rate/discriminator"] == pytest.approx(0.05)
    assert {"loss", "loss_d", "loss_g", "examples_per_sec"} <= set(records[0])


def test_jit_step_passes_frozen_extras_without_donating_them():
    mesh = mesh_lib.make_mesh()
    tx, _ = adam_with_step_decay(0.1)
    state = step_lib.put_replicated(TrainState.create({"w": jnp.zeros(2)}, tx), mesh)
    frozen = {"target": jnp.array([1.0, -1.0])}

    def step(state, batch, frozen):
        def loss_fn(p):
            return jnp.mean((p["w"] * batch["x"][:, None] - frozen["target"]) ** 2), {}

        state, loss, _, _ = step_lib.gradient_step(state, loss_fn)
        return state, {"loss": loss}

    fn = step_lib.jit_step(step, mesh, frozen=frozen)
    batch = mesh_lib.global_batch({"x": np.ones(jax.device_count() * 2, np.float32)}, mesh)
    losses = []
    for _ in range(20):
        state, m = fn(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_array_equal(np.asarray(fn.frozen["target"]), [1.0, -1.0])  # still alive: not donated
