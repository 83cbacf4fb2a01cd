"""The shared training loop: resume equality, non-finite stop, metrics; mesh helpers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsurg.train import loop
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train.state import TrainState, adam_with_step_decay


def _batch(step: int):
    rng = np.random.default_rng(step)  # batch s depends on s only, like the real pipeline
    x = rng.normal(size=(4, 3)).astype(np.float32)
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}


def _setup(lr=0.1):
    mesh = mesh_lib.make_mesh()
    tx, schedule = adam_with_step_decay(lr, decay_factor=0.5, decay_every=4)
    state = jax.device_put(TrainState.create({"w": jnp.zeros(3)}, tx, schedule=schedule), mesh_lib.replicated(mesh))

    @jax.jit
    def step(state, batch):
        def loss_fn(p):
            return jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(state.params)
        u, o = tx.update(g, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, u), opt_state=o), {"loss": loss}

    def batches_from(start):
        s = start
        while True:
            yield mesh_lib.global_batch(_batch(s), mesh)
            s += 1

    return state, step, batches_from, schedule


def _cfg(total, every=3):
    return loop.LoopConfig(stage="fit", total_steps=total, log_every=2, checkpoint_every=every, keep_checkpoints=2, examples_per_step=4)


def test_restart_after_checkpoint_matches_uninterrupted_run(tmp_path):
    state, step, batches, sched = _setup()
    full = loop.train(_cfg(30), str(tmp_path / "a"), state, step, batches)
    # Interrupted: stop after 12 steps (a checkpoint at 12), then run the same job to 30.
    state, step, batches, sched = _setup()
    loop.train(_cfg(12), str(tmp_path / "b"), state, step, batches)
    state, step, batches, sched = _setup()
    resumed = loop.train(_cfg(30), str(tmp_path / "b"), state, step, batches)
    np.testing.assert_array_equal(np.asarray(full.params["w"]), np.asarray(resumed.params["w"]))
    assert int(resumed.step) == 30
    records = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [s for s in range(1, 31) if s % 2 == 0 or s % 3 == 0]
    assert {"step", "stage", "loss", "learning_rate", "examples_per_sec"} <= set(records[0])
    assert records[-1]["loss"] < records[0]["loss"]  # it learns
    assert records[-1]["learning_rate"] == pytest.approx(0.1 * 0.5 ** (29 // 4))
    assert os.path.isdir(tmp_path / "a" / "tensorboard" / "fit")


def test_non_finite_loss_stops_and_is_never_checkpointed(tmp_path):
    state, step, batches, sched = _setup()

    def poisoned(start):
        for i, b in enumerate(batches(start), start):
            if i == 4:  # step 5 sees a NaN
                b = {k: v * jnp.nan for k, v in b.items()}
            yield b

    with pytest.raises(FloatingPointError, match="step 5"):
        loop.train(_cfg(10), str(tmp_path), state, step, poisoned)
    ckpt_dir = tmp_path / "fit" / "checkpoints"
    steps = sorted(int(p) for p in os.listdir(ckpt_dir) if p.isdigit())
    assert steps == [3]  # the step-6 checkpoint, after the NaN, was never written


def test_one_line_per_stage_start_and_plain_progress(tmp_path, capsys):
    wd = str(tmp_path)
    state, step, batches, sched = _setup()
    loop.train(_cfg(6), wd, state, step, batches)
    first = capsys.readouterr()
    state, step, batches, sched = _setup()
    loop.train(_cfg(6), wd, state, step, batches)  # already complete
    second = capsys.readouterr()
    state, step, batches, sched = _setup()
    loop.train(_cfg(9), wd, state, step, batches)  # longer now: resumes from step 6
    third = capsys.readouterr()
    assert first.out == "jaxsurg: stage 'fit': 6 steps of batch 4, starting at step 0\n"
    assert second.out == "jaxsurg: stage 'fit': complete (6 steps), final checkpoint restored\n"
    assert third.out == "jaxsurg: stage 'fit': 9 steps of batch 4, resuming from the checkpoint at step 6\n"
    for err in (first.err, third.err):  # stderr is no terminal here: whole lines only
        assert "\r" not in err and "\x1b" not in err
    assert first.err.splitlines()[-1].startswith("fit: 6/6 steps (100%), ")
    assert third.err.splitlines()[-1].startswith("fit: 9/9 steps (100%), ")
    assert "fit:" not in second.err  # a complete stage shows no bar


def test_resume_after_a_kill_logs_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 10, "stage": "other", "loss": 1.0}) + "\n")
    state, step, batches, sched = _setup()

    def killed(start):
        for i, b in enumerate(batches(start), start):
            if i == 7:  # steps 1..7 ran, 2, 4 and 6 were logged, the last checkpoint is 4
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        loop.train(_cfg(12, every=4), str(tmp_path), state, step, killed)
    with open(path, "a") as f:  # a later row of another stage, and a torn write of this one
        f.write(json.dumps({"step": 20, "stage": "other", "loss": 2.0}) + "\n" + '{"step": 8, "sta')
    assert [r["step"] for r in map(json.loads, path.read_text().splitlines()[1:4])] == [2, 4, 6]
    state, step, batches, sched = _setup()
    loop.train(_cfg(12, every=4), str(tmp_path), state, step, batches)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pairs = [(r["stage"], r["step"]) for r in rows]
    assert pairs == [("other", 10), ("fit", 2), ("fit", 4), ("other", 20), ("fit", 6), ("fit", 8), ("fit", 10), ("fit", 12)]
    assert len(set(pairs)) == len(pairs)
    assert not os.path.exists(str(path) + ".tmp")


def test_distributed_requested_by_environment():
    assert not mesh_lib.distributed_requested({})
    assert mesh_lib.distributed_requested({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert mesh_lib.distributed_requested({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert not mesh_lib.distributed_requested({"TPU_WORKER_HOSTNAMES": "a"})
    assert mesh_lib.distributed_requested({"SLURM_NTASKS": "4"})


def test_batch_size_must_split_over_devices():
    mesh = mesh_lib.make_mesh()
    assert mesh_lib.per_process_batch_size(4 * mesh.devices.size, mesh) == 4 * mesh.devices.size
    if mesh.devices.size > 1:
        with pytest.raises(ValueError, match="multiple of the number of devices"):
            mesh_lib.per_process_batch_size(mesh.devices.size + 1, mesh)
