"""Laparoflow-SSL fine-tuning options: the head of config.head and its loss, the validation
frames beside the training ones, fine-tuning to a plateau of the validation loss (stop, best
variables kept, resume, report) on a toy train state, and what jaxsurg.predict restores."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsurg.data.sequences import Identity
from jaxsurg.losses.segmentation import cross_entropy
from jaxsurg.methods.laparoflow import finetune
from jaxsurg.methods.laparoflow.heads import LinearProbeHead, SideTuneSegmentationHead
from jaxsurg.train.state import TrainState, adam_with_step_decay
from toy_stage import toy_stage


def test_head_of_the_config_and_its_loss():
    c = ml_collections.ConfigDict(dict(head="linear_probe"))
    assert isinstance(finetune.segmentation_head(c, 3), LinearProbeHead) and finetune.head_loss(c) is finetune.probe_loss
    c.head = "side_tune"
    assert isinstance(finetune.segmentation_head(c, 3), SideTuneSegmentationHead) and finetune.head_loss(c) is finetune.segmentation_loss
    old = ml_collections.ConfigDict(dict(seed=0))  # a config.json written before config.head existed
    assert isinstance(finetune.segmentation_head(old, 3), SideTuneSegmentationHead)
    with pytest.raises(ValueError, match="config.head='mlp'"):
        finetune.segmentation_head(ml_collections.ConfigDict(dict(head="mlp")), 3)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 5, 6, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, (2, 5, 6)), jnp.uint8).at[0, 0, 0].set(255)
    ce = float(cross_entropy(logits, labels.astype(jnp.int32)))
    assert float(finetune.probe_loss(logits, labels)[0]) == pytest.approx(ce)
    total, parts = finetune.segmentation_loss(logits, labels)
    assert float(total) == pytest.approx(ce + float(parts["lovasz"]))  # App. D.3: the SUM of CE and Lovász


def test_validation_frames_are_other_labelled_frames_chosen_by_the_seed():
    rows = np.arange(100, 140)
    train = finetune.choose_labelled(rows, 16, seed=3)
    val = finetune.choose_validation(rows, train, 8, seed=3)
    assert len(set(val.tolist())) == 8 and not set(val.tolist()) & set(train.tolist()) and set(val.tolist()) <= set(rows.tolist())
    np.testing.assert_array_equal(val, finetune.choose_validation(rows, train, 8, seed=3))
    assert not np.array_equal(val, finetune.choose_validation(rows, train, 8, seed=4))
    with pytest.raises(ValueError, match="val_frames=30 but only 24"):
        finetune.choose_validation(rows, train, 30, seed=3)


class _Toy(nn.Module):
    """A per-pixel linear classifier of the image, with BackboneWithHead's call signature."""

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(2)(x)


def test_validation_loss_is_the_mean_over_frames_of_each_frames_loss():
    rng = np.random.default_rng(1)
    frames = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 2, (h, w), dtype=np.uint8))
              for h, w in [(8, 12), (8, 12), (6, 10), (8, 12)]]
    model = _Toy()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 12, 3)))["params"]
    state = TrainState.create(params, adam_with_step_decay(1e-3)[0])
    got = finetune.make_validation(model, frames, finetune.segmentation_loss, batch_size=2)(state)
    want = np.mean([
        float(finetune.segmentation_loss(model.apply({"params": params}, jnp.asarray(im[None], jnp.float32) / 255.0), jnp.asarray(m[None]))[0])
        for im, m in frames
    ])
    assert got == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- plateau

# Scripted validation losses by step: best at 2, 4, then 8; no improvement at 10 and 12.
LOSSES = {2: 5.0, 4: 4.0, 6: 4.5, 8: 3.9, 10: 4.2, 12: 4.1, 14: 1.0, 16: 1.0}


def _toy_stage():
    return toy_stage(total_steps=16, log_every=1, checkpoint_every=3, keep_checkpoints=2)


def _plateau(workdir, validate):
    mesh, examples, step, fresh, block, config = _toy_stage()
    return finetune.train_to_plateau(
        "finetune", block, config, str(workdir), fresh(), step, examples, Identity(), mesh, validate=validate, every=2, patience=2,
    )


def _params_after(workdir, steps):
    from jaxsurg.train import stage

    mesh, examples, step, fresh, block, config = _toy_stage()
    block.total_steps = steps
    return np.asarray(stage.train("fit", block, config, str(workdir), fresh(), step, examples, Identity(), mesh).params["w"])


def test_fine_tuning_stops_at_a_plateau_keeps_the_best_and_resumes(tmp_path):
    calls = []

    def validate(state):
        calls.append(int(state.step))
        return LOSSES[int(state.step)]

    state, record = _plateau(tmp_path / "a", validate)
    # Scored every 2 steps; no improvement on step 8's 3.9 at 10 and 12 (patience 2): stop at 12 of 16.
    assert calls == [2, 4, 6, 8, 10, 12]
    assert (record["steps"], record["best_step"], record["best_loss"], record["stopped"]) == (12, 8, 3.9, "plateau")
    assert record["history"] == [[s, LOSSES[s]] for s in calls] and (record["every"], record["patience"]) == (2, 2)
    np.testing.assert_allclose(np.asarray(state.params["w"]), _params_after(tmp_path / "ref", 8))  # the best, not the last
    saved = json.load(open(tmp_path / "a" / "finetune" / "validation.json"))
    assert saved["steps"] == 12 and saved["best_step"] == 8
    # Finished: the same call trains and scores nothing and returns the same variables.
    again, record_again = _plateau(tmp_path / "a", validate)
    assert calls == [2, 4, 6, 8, 10, 12] and record_again == record
    np.testing.assert_array_equal(np.asarray(again.params["w"]), np.asarray(state.params["w"]))
    # What jaxsurg.predict restores: the best variables.
    c = ml_collections.ConfigDict(dict(val_frames=4, total_steps=16))
    np.testing.assert_array_equal(finetune.final_variables(c, str(tmp_path / "a"))["params"]["w"], np.asarray(state.params["w"]))

    # Killed while scoring step 10: the command again resumes there and ends as the uninterrupted run.
    def killed(state):
        if int(state.step) == 10:
            raise KeyboardInterrupt
        return LOSSES[int(state.step)]

    with pytest.raises(KeyboardInterrupt):
        _plateau(tmp_path / "b", killed)
    with pytest.raises(ValueError, match="has not reached its plateau"):
        finetune.final_variables(c, str(tmp_path / "b"))
    resumed, record_b = _plateau(tmp_path / "b", validate)
    assert record_b == record
    np.testing.assert_allclose(np.asarray(resumed.params["w"]), np.asarray(state.params["w"]))
    with pytest.raises(ValueError, match="validation.json is missing"):
        finetune.final_variables(c, str(tmp_path / "none"))


def test_fine_tuning_without_a_plateau_stops_at_total_steps(tmp_path):
    state, record = _plateau(tmp_path, lambda s: 10.0 - int(s.step))  # always improving
    assert (record["steps"], record["best_step"], record["stopped"]) == (16, 16, "total_steps")
    np.testing.assert_allclose(np.asarray(state.params["w"]), _params_after(tmp_path / "ref", 16))
    with pytest.raises(ValueError, match="validation loss at step 2 is nan"):
        _plateau(tmp_path / "nan", lambda s: float("nan"))
    with pytest.raises(ValueError, match="patience=0"):
        mesh, examples, step, fresh, block, config = _toy_stage()
        finetune.train_to_plateau("f", block, config, str(tmp_path / "x"), fresh(), step, examples, Identity(), mesh,
                                  validate=lambda s: 1.0, every=2, patience=0)
    assert not os.path.exists(tmp_path / "x")
