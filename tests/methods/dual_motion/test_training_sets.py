"""What each arm of Dual Motion Flow trains on, known before anything trains: the layout of
the training part, the sizes of D_L, D_R, D_C and Dual MF★'s clips, the budget in epochs
resolved to steps from the arm's own set (the default's cost on the real clip's layout),
the stages each arm runs (D_L only: none but segment; Dual MF★: Dual MF's segment stage,
then its ConvLSTM stage) and their fingerprints."""

from __future__ import annotations

import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxsurg import cli
from jaxsurg.config import STAGE_FIELDS
from jaxsurg.data.sequences import LabelledFrames
from jaxsurg.methods.dual_motion import config as dm_config
from jaxsurg.methods.dual_motion import segment as dm_segment
from jaxsurg.methods.dual_motion import training_sets as ts
from jaxsurg.methods.dual_motion.convlstm import UNet11ConvLSTM
from jaxsurg.train import stage
from jaxsurg.train.state import make_optimizer

from dmf_helpers import _panning_sequence  # tests/methods/dual_motion/dmf_helpers.py


def _config(arg: str = "") -> ml_collections.ConfigDict:
    return cli.load_config(f"dual_motion:{arg}" if arg else "dual_motion")


def _data(rows, video_id, label_interval: int):
    """What ``layout_of`` and ``resolve`` read of a ``pipeline.LoadedDataset``: the training
    rows, the labelled subset (every ``label_interval``-th frame of each run) and video ids."""
    rows = np.asarray(rows, np.int64)
    labelled = []
    for v in np.unique(np.asarray(video_id)[rows]):
        mine = rows[np.asarray(video_id)[rows] == v]
        labelled.extend(mine[::label_interval])
    return types.SimpleNamespace(
        train_all_rows=rows, train_rows=np.asarray(sorted(labelled)), train_index=types.SimpleNamespace(video_id=np.asarray(video_id)),
    )


def _real_clip(label_interval: int):
    """The layout of the CholecSeg8k clip beside the project: 73 frames of one video, the
    first 49 train (the temporal split), every one with ground truth."""
    return _data(np.arange(49), np.zeros(73, np.int64), label_interval)


def test_layout_of_lays_out_runs_of_consecutive_records_of_a_video():
    video_id = np.array([0] * 8 + [1] * 5)
    data = _data([0, 1, 2, 3, 5, 6, 8, 9, 10], video_id, 2)  # row 4 missing: 5, 6 are a run of their own
    lay = ts.layout_of(data)
    np.testing.assert_array_equal(lay.starts, [0, 0, 0, 0, 4, 4, 6, 6, 6])
    np.testing.assert_array_equal(lay.ends, [3, 3, 3, 3, 5, 5, 8, 8, 8])
    np.testing.assert_array_equal(lay.position, [0, 1, 2, 3, 0, 1, 0, 1, 2])
    np.testing.assert_array_equal(lay.video_id, [0, 0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(lay.labelled, np.isin([0, 1, 2, 3, 5, 6, 8, 9, 10], data.train_rows))
    assert len(lay) == 9
    with pytest.raises(ValueError, match="no training frames"):
        ts.layout_of(_data([], video_id, 1))


def test_training_set_sizes_are_what_the_stages_train_on():
    seq, _ = _panning_sequence()  # 8 frames, labels at 0 and 5, k = 2
    c = _config("variant=tiny")
    sizes = {arm: ts.training_set_sizes(_arm(c, arm), seq) for arm in dm_config.SEGMENT_MODES}
    assert sizes["dl_only"] == {"D_L": 2, "D_R": 0, "D_C": 0, "examples": 2, "clips": 0, "windows": 5, "pairs": 7}
    assert sizes["single"]["examples"] == 2 + 6 and sizes["single"]["D_C"] == 0
    assert sizes["dual"] == {**sizes["dl_only"], "D_R": 6, "D_C": 7, "examples": 15}
    assert sizes["dual_convlstm"] == {**sizes["dual"], "clips": 11}  # positions 0, 0.5, …, 7: 15 entries
    # The same counts as the stages' own: D_R's rows, D_C's rows and the clips of the rebuilt sequence.
    plan = ts.propagation_plan(seq, 2)
    assert sorted(plan) == [1, 2, 3, 4, 6, 7] and ts.d_c_rows(seq, plan) == list(range(7))

    class Positions:
        def __init__(self, positions):
            self.position = np.asarray(positions, float)
            self.video_id = np.zeros(len(positions), int)

        def __len__(self):
            return len(self.position)

    d_r, d_c = Positions(sorted(plan)), Positions([f + 0.5 for f in ts.d_c_rows(seq, plan)])
    clips = dm_segment.convlstm_clips(dm_segment.rebuilt_sequence(LabelledFrames(seq), [d_r, d_c]), 5)
    assert len(clips) == sizes["dual_convlstm"]["clips"]
    # k = 1: frames 2 and 3 have no D_R pair, so no D_C pair starts there either.
    c1 = _arm(c, "dual")
    c1.propagation_steps = 1
    assert ts.training_set_sizes(c1, seq)["D_R"] == 3 and ts.training_set_sizes(c1, seq)["D_C"] == 5


def _arm(c, arm):
    c = ml_collections.ConfigDict(c.to_dict())
    c.segment = arm
    return c


def _resolved(arg: str, label_interval: int):
    c = _config(arg)
    c.label_interval = label_interval
    return dm_config.resolve(c, _real_clip(label_interval))


def test_the_default_budget_is_epochs_over_each_arms_own_set_on_the_real_clip():
    # D_L-only: 24 epochs × ceil(|D_L| / 4), |D_L| = 49, 25, 17, 13, 10 at label_interval 1..5
    dl_only = [_resolved("segment=dl_only", h).total_steps for h in range(1, 6)]
    assert dl_only == [24 * math.ceil(n / 4) for n in (49, 25, 17, 13, 10)] == [312, 168, 120, 96, 72]
    assert np.mean(dl_only) == pytest.approx(153.6)  # about the 150 steps every arm had before
    dual = [_resolved("segment=dual", h) for h in range(1, 6)]
    assert [c.total_steps for c in dual] == [600, 600, 600, 600, 576]  # 97 (96) pairs: 25 (24) steps an epoch
    assert all(c.epochs == 24 and c.batch_size == 4 for c in dual)
    star = _resolved("segment=dual_convlstm", 5)
    assert star.total_steps == 576 and star.convlstm.total_steps == 2 * 92  # 2 epochs of 92 clips, batch 1
    # Equal steps instead: epochs=0 and total_steps=N give N to every arm.
    for arm in dm_config.SEGMENT_MODES:
        assert _resolved(f"segment={arm},epochs=0,total_steps=150", 5).total_steps == 150
    # The paper's 50 epochs with ×0.9 every 5 epochs, counted over the arm's own set.
    paper = _resolved("variant=paper", 5)
    assert (paper.total_steps, paper.lr_decay_every) == (50 * 24, 5 * 24)
    assert paper.flow_predictor.total_steps == 300 * math.ceil(46 / 4)  # G's epoch: its 46 windows of 4 frames
    assert paper.compensator.total_steps == 300 * math.ceil(48 / 2)  # the compensator's: 48 consecutive pairs
    # Stages an arm does not run are left as given.
    dl_paper = _resolved("variant=paper,segment=dl_only", 5)
    assert (dl_paper.flow_predictor.total_steps, dl_paper.total_steps) == (1000, 50 * 3)


def test_budget_records_epochs_steps_and_set_sizes_per_stage():
    c = _resolved("segment=dual_convlstm", 5)
    sizes = ts.training_set_sizes(c, ts.layout_of(_real_clip(5)))
    assert sizes == {"D_L": 10, "D_R": 38, "D_C": 48, "examples": 96, "clips": 92, "windows": 46, "pairs": 48}
    b = ts.budget(c, sizes)
    assert list(b) == ["flow_predictor", "compensator", "segment", "convlstm"]
    assert b["segment"] == {"epochs": 24, "total_steps": 576, "batch_size": 4, "examples_per_epoch": 96, "epochs_trained": 24.0, "steps_per_epoch": 24}
    assert b["convlstm"]["examples_per_epoch"] == 92 and b["convlstm"]["total_steps"] == 184
    assert b["flow_predictor"] == {"epochs": 0, "total_steps": 60, "batch_size": 4, "examples_per_epoch": 46,
                                   "epochs_trained": round(240 / 46, 3), "steps_per_epoch": 12}
    steps = _resolved("segment=dl_only,epochs=0,total_steps=150", 5)
    assert ts.budget(steps, ts.training_set_sizes(steps, ts.layout_of(_real_clip(5)))) == {
        "segment": {"epochs": 0, "total_steps": 150, "batch_size": 4, "examples_per_epoch": 10, "epochs_trained": 60.0, "steps_per_epoch": 3},
    }


def test_resolve_refuses_an_arm_with_nothing_to_train_on():
    with pytest.raises(ValueError, match="no 200 consecutive entries"):
        _resolved("segment=dual_convlstm,convlstm.clip_length=200", 5)  # the clip's 96 entries
    short = _data([0, 1, 2, 4, 5, 6], np.zeros(8, np.int64), 2)  # runs of 3 frames
    with pytest.raises(ValueError, match="4 consecutive training frames"):
        dm_config.resolve(_config(), short)
    assert dm_config.resolve(_config("segment=dl_only"), short).total_steps == 24  # no flow predictor there
    assert dm_config.resolve(_config("segment=single,motion=optical_flow"), short).segment == "single"
    with pytest.raises(ValueError, match=r"config.segment='unet11'; expected one of \('dl_only', 'single', 'dual', 'dual_convlstm'\)"):
        dm_config.check(_config("segment=unet11"))
    for key, value in (("flow_predictor.inputs", "future"), ("flow_predictor.flow_stats", "mean")):
        with pytest.raises(ValueError, match=f"config.{key}='{value}'"):
            dm_config.check(_config(f"{key}={value}"))


def _names(specs):
    return [s.name for s in specs]


def test_each_arm_runs_its_own_stages_and_takes_only_those():
    assert ts.stages_run(_config("segment=dl_only")) == ("segment",)
    assert ts.stages_run(_config("segment=single")) == ("flow_predictor", "propagate", "segment")
    assert ts.stages_run(_config()) == ("flow_predictor", "propagate", "compensator", "segment")
    assert ts.stages_run(_config("segment=dual_convlstm")) == ("flow_predictor", "propagate", "compensator", "segment", "convlstm")
    assert ts.stages_run(_config("segment=dual_convlstm,convlstm.init_from=/runs/dmf")) == ("flow_predictor", "propagate", "compensator", "convlstm")
    assert ts.stages_run(_config("motion=optical_flow")) == ("propagate", "compensator", "segment")
    keys = {s.name: s.keys for s in dm_config.STAGES}
    # D_L only: no G, no D_R, no D_C — only the segment stage is taken from another run, and
    # the skipped stages' keys do not fingerprint it (it reads none of their outputs).
    (only,) = dm_config.arm_stages(_config("segment=dl_only"))
    assert only.name == "segment" and only.keys == keys["segment"]
    differ = dict((s.name, d) for s, d in stage.stage_differences(
        stage._normalised(_config("segment=dl_only")), stage._normalised(_config("segment=dl_only,flow_predictor.inputs=past")), (only,)))
    assert differ == {"segment": {}}
    flow = dm_config.arm_stages(_config("motion=optical_flow"))
    assert _names(flow) == ["propagate", "compensator", "segment"] and {"warp", "motion", "flow_method"} <= set(flow[0].keys)
    star = dm_config.arm_stages(_config("segment=dual_convlstm,convlstm.init_from=/runs/dmf"))
    assert _names(star) == ["flow_predictor", "propagate", "compensator", "convlstm"]
    assert star[-1].keys == keys["segment"] + keys["convlstm"]
    assert dm_config.arm_stages(_config("segment=dual_convlstm")) == dm_config.STAGES


def test_dual_mf_star_fingerprints_its_convlstm_apart_from_its_unet11():
    flat = lambda c: stage._normalised(c)
    star = _config("segment=dual_convlstm")
    changed = _config("segment=dual_convlstm,convlstm.lr_convlstm=3e-4,convlstm.epochs=5")
    differ = {spec.name: d for spec, d in stage.stage_differences(flat(star), flat(changed), dm_config.STAGES)}
    assert not differ["segment"] and set(differ["convlstm"]) == {"convlstm.lr_convlstm", "convlstm.epochs"}
    # The U-Net11 it starts from is the segment stage: its settings invalidate the ConvLSTM too.
    differ = {spec.name: d for spec, d in stage.stage_differences(flat(star), flat(_config("segment=dual_convlstm,epochs=3")), dm_config.STAGES)}
    assert set(differ["segment"]) == set(differ["convlstm"]) == {"epochs"} and not differ["compensator"]
    # G's input mode and normalisation are G's settings: everything from the flow predictor on.
    differ = {spec.name: d for spec, d in stage.stage_differences(flat(star), flat(_config("segment=dual_convlstm,flow_predictor.inputs=past")), dm_config.STAGES)}
    assert all(differ[name] for name in ("flow_predictor", "propagate", "segment", "convlstm"))


def test_the_convlstm_stage_block_and_its_two_learning_rates():
    for variant in ("tiny", "default", "paper"):
        block = _config(f"variant={variant},segment=dual_convlstm").convlstm
        assert set(STAGE_FIELDS) <= set(block.keys())
        make_optimizer(block)
    block = _config("segment=dual_convlstm").convlstm
    assert (block.learning_rate, block.lr_convlstm, block.batch_size, block.epochs) == (1e-5, 1e-4, 1, 2)
    template = jax.eval_shape(UNet11ConvLSTM(num_filters=4, convlstm_layers=1).init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 32, 32, 3)))["params"]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
    tx, schedule = dm_segment.convlstm_optimizer(block, params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # Adam's first step moves every parameter by its learning rate.
    np.testing.assert_allclose(updates["convlstm"]["layer0"]["conv"]["kernel"], -1e-4, rtol=1e-3)
    np.testing.assert_allclose(updates["center"]["conv"]["kernel"], -1e-5, rtol=1e-3)
    assert float(schedule(0)) == pytest.approx(1e-5)  # the U-Net11 layers' rate is the one logged
    assert isinstance(tx, optax.GradientTransformation)


def test_init_from_refuses_a_folder_that_is_no_dual_mf_run(tmp_path):
    c = _config("variant=tiny,segment=dual_convlstm")
    with pytest.raises(ValueError, match="config.convlstm.init_from=.*no config.json"):
        dm_segment.load_segment_params(c, str(tmp_path), 2)
    (tmp_path / "config.json").write_text('{"method": "unet11", "total_steps": 3}')
    with pytest.raises(ValueError, match="made by method 'unet11', not dual_motion"):
        dm_segment.load_segment_params(c, str(tmp_path), 2)
    (tmp_path / "config.json").write_text('{"method": "dual_motion", "total_steps": 3}')
    with pytest.raises(ValueError, match=r"config.convlstm.init_from=.*'segment' stage's checkpoints"):
        dm_segment.load_segment_params(c, str(tmp_path), 2)
    assert not os.path.exists(tmp_path / "segment")
