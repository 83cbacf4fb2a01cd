"""The stage kit: one stage-config schema resolved once, optimisers from a block, reuse of
another run's stages (stages_from) with its refusals, restoring a finished stage, and the
checkpoint-format refusal."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsurg.config import STAGE_FIELDS, resolve_stage, stage_block
from jaxsurg.train import checkpoint, stage
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train.state import TrainState, adam_with_step_decay, make_optimizer

from toy_stage import toy_stage  # tests/toy_stage.py


def test_stage_block_has_every_field_and_refuses_unknown_ones():
    block = stage_block({"base_features": 8}, total_steps=5, learning_rate=1e-3)
    assert set(STAGE_FIELDS) | {"base_features"} == set(block.keys())
    assert (block.total_steps, block.learning_rate, block.log_every) == (5, 1e-3, STAGE_FIELDS["log_every"])
    with pytest.raises(KeyError, match=r"unknown stage field\(s\) \['total_step'\].*total_steps, epochs"):
        stage_block(total_step=5)
    with pytest.raises(KeyError, match="shadow stage fields"):
        stage_block({"batch_size": 3})


def test_resolve_stage_turns_epochs_into_steps():
    block = stage_block(epochs=3, batch_size=4, lr_decay_every_epochs=2)
    resolve_stage(block, 10)  # ceil(10 / 4) = 3 steps per epoch
    assert (block.total_steps, block.lr_decay_every) == (9, 6)
    block = stage_block(total_steps=7)
    resolve_stage(block, 0)  # steps given: the epoch size does not matter
    assert block.total_steps == 7
    with pytest.raises(ValueError, match="an epoch has 0 examples"):
        resolve_stage(stage_block(epochs=1), 0)


def test_make_optimizer_builds_the_schedules_and_refuses_mixtures():
    tx, schedule = make_optimizer(stage_block(learning_rate=0.1, lr_decay_factor=0.5, lr_decay_every=2))
    ref, _ = adam_with_step_decay(0.1, decay_factor=0.5, decay_every=2)
    assert [float(schedule(s)) for s in (0, 1, 2, 5)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    p, g = {"w": jnp.ones(2)}, {"w": jnp.array([1.0, -3.0])}
    np.testing.assert_array_equal(tx.update(g, tx.init(p), p)[0]["w"], ref.update(g, ref.init(p), p)[0]["w"])
    _, cosine = make_optimizer(stage_block(optimizer="adamw", lr_schedule="warmup_cosine", warmup_steps=10, total_steps=100, learning_rate=1.0))
    assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1.0) and float(cosine(100)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="warmup_cosine"):
        make_optimizer(stage_block(warmup_steps=5))
    with pytest.raises(ValueError, match="built with optimizer='adamw'"):
        make_optimizer(stage_block(lr_schedule="warmup_cosine"))
    with pytest.raises(ValueError, match="known optimizers"):
        make_optimizer(stage_block(optimizer="sgd"))


def _config(**kw):
    c = ml_collections.ConfigDict(dict(
        method="m", dataset="synthetic", data_dir="", task="binary", resize=(64, 64), label_interval=1,
        train_fraction=0.5, seed=0, stages_from="", log_every=5, total_steps=10, first=dict(width=8, log_every=1),
        second=dict(width=4),
    ))
    c.update(kw)
    return c


SPECS = (stage.StageSpec("first", ("first",)), stage.StageSpec("second", ("second",)))


def _source(tmp_path, config):
    src = tmp_path / "src"
    for name in ("first", "second"):
        os.makedirs(src / name / "checkpoints")
        (src / name / "marker.txt").write_text(name)
    (src / "config.json").write_text(json.dumps(config.to_dict(), default=list))
    return str(src)


def test_stages_from_takes_matching_stages_and_stops_at_the_first_that_differs(tmp_path, capsys):
    src = _source(tmp_path, _config())
    wd = str(tmp_path / "a")
    # Another log interval does not matter; another width of the second stage does.
    taken = stage.take_stages_from(_config(stages_from=src, log_every=1, second=dict(width=6)), wd, SPECS)
    assert taken == ["first"]
    assert open(os.path.join(wd, "first", "marker.txt")).read() == "first"
    assert not os.path.exists(os.path.join(wd, "second"))
    out = capsys.readouterr().out
    assert "'second' of" in out and "second.width (4 there, 6 here)" in out
    # Everything the same: both stages; a stage the workdir already has is kept.
    wd = str(tmp_path / "b")
    os.makedirs(os.path.join(wd, "first"))
    assert stage.take_stages_from(_config(stages_from=src), wd, SPECS) == ["second"]
    assert not os.path.exists(os.path.join(wd, "first", "marker.txt"))
    # Upstream differs: nothing is taken.
    assert stage.take_stages_from(_config(stages_from=src, first=dict(width=9, log_every=1)), str(tmp_path / "c"), SPECS) == []


def test_stages_from_refuses_other_data_and_non_workdirs(tmp_path):
    src = _source(tmp_path, _config())
    with pytest.raises(ValueError, match=r"other data settings \(label_interval: theirs 1, ours 5; task: theirs 'binary', ours 'parts'\)"):
        stage.take_stages_from(_config(stages_from=src, label_interval=5, task="parts"), str(tmp_path / "a"), SPECS)
    with pytest.raises(ValueError, match="resize: theirs \\[64, 64\\], ours \\[32, 32\\]"):
        stage.take_stages_from(_config(stages_from=src, resize=(32, 32)), str(tmp_path / "a"), SPECS)
    with pytest.raises(ValueError, match="no config.json there"):
        stage.take_stages_from(_config(stages_from=str(tmp_path)), str(tmp_path / "a"), SPECS)
    with pytest.raises(ValueError, match="this run's own workdir"):
        stage.take_stages_from(_config(stages_from=src), src, SPECS)


def _state():
    tx, schedule = adam_with_step_decay(0.1)
    return jax.device_put(TrainState.create({"w": jnp.arange(3.0)}, tx, schedule=schedule), mesh_lib.replicated(mesh_lib.make_mesh()))


def test_restore_finished_reads_another_run_and_refuses_an_unfinished_one(tmp_path):
    manager = checkpoint.make_manager(str(tmp_path), "fit", every=1, keep=2)
    saved = _state().replace(params={"w": jnp.array([7.0, 8.0, 9.0])}, step=jnp.array(4, jnp.int32))
    checkpoint.save(manager, 4, saved, force=True)
    manager.wait_until_finished()
    manager.close()
    restored = stage.restore_finished(str(tmp_path), "fit", _state(), 4, "first.from")
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), [7.0, 8.0, 9.0])
    with pytest.raises(ValueError, match=r"config.first.from=.*its fit stage is at step 4, not 10"):
        stage.restore_finished(str(tmp_path), "fit", _state(), 10, "first.from")
    with pytest.raises(ValueError, match="its other stage is at step 0, not 1"):
        stage.restore_finished(str(tmp_path), "other", _state(), 1, "first.from")


def test_checkpoints_of_another_format_or_another_state_are_refused(tmp_path):
    manager = checkpoint.make_manager(str(tmp_path), "fit", every=1, keep=2)
    checkpoint.save(manager, 1, _state(), force=True)
    manager.wait_until_finished()
    # Another model size: a clear refusal, not an orbax traceback.
    bigger = _state().replace(params={"w": jnp.zeros(5)})
    with pytest.raises(ValueError, match="does not fit this run's train state"):
        checkpoint.restore_latest(manager, bigger)
    # Written before the format was recorded (or by another format).
    os.remove(tmp_path / "fit" / "checkpoint_format.json")
    with pytest.raises(ValueError, match=f"format 1 \\(unrecorded\\), this jaxsurg reads format {checkpoint.FORMAT}"):
        checkpoint.restore_latest(manager, _state())
    manager.close()


def test_stage_train_runs_a_block_and_skips_when_complete(tmp_path):
    from jaxsurg.data.sequences import Identity  # the no-op grain transform

    mesh, examples, fit, fresh, block, config = toy_stage(total_steps=6, log_every=3, checkpoint_every=3, keep_checkpoints=2)
    out = stage.train("fit", block, config, str(tmp_path), fresh(), fit, examples, Identity(), mesh)
    assert int(out.step) == 6
    again = stage.train("fit", block, config, str(tmp_path), fresh(), fit, examples, Identity(), mesh)
    np.testing.assert_array_equal(np.asarray(out.params["w"]), np.asarray(again.params["w"]))
    seconds = {}
    with stage.timed(seconds, "x"):
        pass
    assert seconds["x"] >= 0.0 and stage.rounded({"x": 1.23456}) == {"x": 1.235}


def test_values_a_stage_declares_the_same_are_compared_as_one():
    specs = (stage.StageSpec("g", ("g",)), stage.StageSpec("seg", ("arm",), same=(("arm", (("dual_star", "dual"),)),)), stage.StageSpec("lstm", ("lstm",)))
    theirs, ours = {"g": 1, "arm": "dual", "lstm": 2}, {"g": 1, "arm": "dual_star", "lstm": 2}
    differ = dict((s.name, d) for s, d in stage.stage_differences(theirs, ours, specs))
    assert differ["g"] == {} and differ["seg"] == {}  # the same U-Net11 stage for both arms
    assert differ["lstm"] == {"arm": ("dual", "dual_star")}  # later stages compare the arm as it is
    assert dict((s.name, d) for s, d in stage.stage_differences(theirs, {**ours, "arm": "single"}, specs))["seg"] == {"arm": ("dual", "single")}


def test_a_stage_seeded_by_its_own_key_is_shared_across_run_seeds():
    """The run's seed counts from the first stage it seeds on; a stage with a seed key of its
    own compares that key, a negative value standing for the run's seed."""
    specs = (stage.StageSpec("pre", ("pre",), seed_key="pre.seed"), stage.StageSpec("down", ("down",)))

    def differ(theirs, ours):
        return dict((s.name, d) for s, d in stage.stage_differences(theirs, ours, specs))

    fixed = differ({"seed": 0, "pre.seed": 3, "down": 1}, {"seed": 1, "pre.seed": 3, "down": 1})
    assert fixed == {"pre": {}, "down": {"seed": (0, 1)}}
    own = differ({"seed": 0, "pre.seed": -1, "down": 1}, {"seed": 1, "pre.seed": -1, "down": 1})
    assert own["pre"] == {"pre.seed": (0, 1)}
    assert differ({"seed": 2, "pre.seed": -1}, {"seed": 5, "pre.seed": 2})["pre"] == {}  # -1 in a seed-2 run is 2
    plain = (stage.StageSpec("only", ("only",)),)
    assert dict((s.name, d) for s, d in stage.stage_differences({"seed": 0}, {"seed": 1}, plain)) == {"only": {"seed": (0, 1)}}
