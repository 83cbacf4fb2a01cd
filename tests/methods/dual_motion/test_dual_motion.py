"""Dual Motion Flow end to end: the config variants, and a tiny run of every stage (with
resume), of Single MF by optical flow, of the D_L-only arm (segment only) and of Dual MF★
(its own Dual MF U-Net11, then the ConvLSTM; or a finished run's U-Net11)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from predict_helpers import assert_reload_reproduces_eval

from jaxsurg.data import generated
from jaxsurg.methods import dual_motion as dm
from jaxsurg.methods import unet11 as unet11_method
from jaxsurg.methods.dual_motion.segment import load_segment_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _config(arg: str, tfds_dir: str):
    spec = importlib.util.spec_from_file_location("dual_motion_config", os.path.join(ROOT, "configs", "dual_motion.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.tfds_dir = tfds_dir
    return config


def test_config_variants_and_bad_keys():
    for variant in ("tiny", "default", "paper"):
        c = _config(f"variant={variant}", "")
        assert c.method == "dual_motion" and c.label_interval == 5
        assert all(s % 64 == 0 for s in c.resize)
    c = _config("variant=paper", "")
    assert (c.flow_predictor.learning_rate, c.flow_predictor.batch_size) == (1e-4, 4)
    assert (c.compensator.learning_rate, c.compensator.batch_size) == (2e-4, 2)
    assert (c.compensator.lambda0, c.compensator.lambda_i, c.compensator.lambda1, c.compensator.lambda_p) == (1.0, 0.8, 2.0, 0.01)
    with pytest.raises(KeyError, match="unknown config key"):
        _config("variant=tiny,propagation=3", "")


@pytest.mark.slow
def test_dual_motion_tiny_runs_every_stage_and_resumes(tmp_path):
    w = str(tmp_path / "w")
    config = _config("variant=tiny", str(tmp_path / "tfds"))
    summary = dm.run(config, w)
    resolved = json.load(open(os.path.join(w, "config.json")))
    assert resolved["method"] == "dual_motion" and resolved["resize"] == [64, 64]
    records = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
    assert {r["stage"] for r in records} == {"flow_predictor", "compensator", "segment"}
    for stage in ("flow_predictor", "compensator", "segment"):
        assert os.listdir(os.path.join(w, stage, "checkpoints")), stage
    d_r = generated.GeneratedDataset(os.path.join(w, "propagate", "d_r"))
    d_c = generated.GeneratedDataset(os.path.join(w, "compensator", "d_c"))
    # tiny synthetic: 2 training clips of 8 frames, labels at 0 and 5 → 12 unlabelled frames,
    # all within k = 2 of a label; D_C: 7 consecutive pairs per clip
    assert len(d_r) == 12 and set(d_r.source) == {"propagated"} and set(d_r.k) == {1, 2}
    assert len(d_c) == 14 and set(d_c.source) == {"compensated"}
    assert np.all(d_c.position % 1 == 0.5)
    assert_reload_reproduces_eval(w, tmp_path / "tfds", tmp_path / "reloaded")  # what jaxsurg.predict applies
    assert d_r[0]["image"].shape == (64, 64, 3)
    assert os.path.getsize(os.path.join(w, "propagate", "sequence.png")) > 0
    s = json.load(open(os.path.join(w, "eval", "summary.json")))
    assert s["method"] == "dual_motion" and s["optical_flow"]["backward"] == "dis"
    assert s["train_sizes"] == {"D_L": 4, "D_R": 12, "D_C": 14, "examples": 30}
    assert 0.0 <= s["iou_mean"] <= s["dice_mean"] <= 1.0 and s["num_frames"] == 8
    # the budget of every stage: epochs as given, the steps run, the set an epoch is
    assert s["budget"]["segment"] == {"epochs": 0, "total_steps": 3, "batch_size": 2, "examples_per_epoch": 30, "epochs_trained": 0.2, "steps_per_epoch": 15}
    assert s["budget"]["flow_predictor"]["examples_per_epoch"] == 10 and s["budget"]["compensator"]["examples_per_epoch"] == 14
    assert s["stages"] == ["flow_predictor", "propagate", "compensator", "segment"] and s["flow_predictor_inputs"] == "reconstruct"
    # G's normalisation: zero mean, the training flows' scale, stored before G trained
    stats = json.load(open(os.path.join(w, "flow_predictor", "flow_stats.json")))
    assert s["flow_normalisation"] == stats and stats["mean"] == [0.0, 0.0] and min(stats["std"]) > 0 and stats["flow_fields"] == 28
    # D_R scored against the synthetic ground truth the run held back (every frame has one)
    quality_path = os.path.join(w, "propagate", "quality.json")
    quality = json.load(open(quality_path))
    assert s["d_r_quality"] == quality and quality["all"]["frames"] == quality["all"]["labelled_frames"] == 12
    assert 0.0 <= quality["all"]["label_iou"] <= quality["all"]["label_dice"] <= 1.0 and 0.0 < quality["all"]["coverage"] <= 1.0
    assert 0.0 <= quality["all"]["optical_flow_iou"] <= 1.0 and 0.0 < quality["all"]["optical_flow_coverage"] <= 1.0
    # The same run again finds every stage complete: no new steps, the same evaluation; a
    # quality.json missing (a workdir from before it existed) is rebuilt from D_R on disk.
    os.remove(quality_path)
    again = dm.run(_config("variant=tiny", str(tmp_path / "tfds")), w)
    assert len(open(os.path.join(w, "metrics.jsonl")).readlines()) == len(records)
    assert again["iou_mean"] == summary["iou_mean"] and again["dice_mean"] == summary["dice_mean"]
    assert json.load(open(quality_path)) == quality  # the same uint8 pairs, read back from disk
    # A binary workdir refuses a parts run before anything runs (made_by.json; D_R's own
    # record refuses it too, tests/data/test_generated.py).
    parts = _config("variant=tiny", str(tmp_path / "tfds"))
    parts.task = "parts"
    with pytest.raises(ValueError, match="task: 'binary' there, 'parts' now"):
        dm.run(parts, w)
    # Dual MF★ can start from this run's trained U-Net11 (config.convlstm.init_from).
    import jax

    from jaxsurg.methods.dual_motion.convlstm import UNet11ConvLSTM

    loaded = load_segment_params(config, w, 2)
    star = jax.eval_shape(UNet11ConvLSTM(num_classes=1, num_filters=8, convlstm_layers=2).init,
                          jax.random.PRNGKey(0), np.zeros((1, 5, 64, 64, 3), np.float32))["params"]
    assert set(loaded) < set(star) and all("convlstm" in k for k in set(star) - set(loaded))
    fresh = unet11_method.build_model(config, 2).init(jax.random.PRNGKey(config.seed), np.zeros((1, 64, 64, 3), np.float32))["params"]
    assert jax.tree.structure(fresh) == jax.tree.structure(loaded)
    assert not np.allclose(fresh["final"]["kernel"], loaded["final"]["kernel"])  # trained, not a fresh init
    with pytest.raises(ValueError, match="no config.json"):
        load_segment_params(config, str(tmp_path / "empty"), 2)
    # Dual MF★ (segment=dual_convlstm) trains Dual MF's U-Net11 as its own segment stage, then
    # the ConvLSTM from it: from this run, every stage up to that U-Net11 is taken, only the
    # ConvLSTM trains.
    star = _config("variant=tiny,segment=dual_convlstm", str(tmp_path / "tfds"))
    star.stages_from = w
    w_star = str(tmp_path / "w_star")
    s_star = dm.run(star, w_star)
    assert {json.loads(line)["stage"] for line in open(os.path.join(w_star, "metrics.jsonl"))} == {"convlstm"}
    assert s_star["stages"] == ["flow_predictor", "propagate", "compensator", "segment", "convlstm"]
    assert s_star["train_sizes"] == {"D_L": 4, "D_R": 12, "D_C": 14, "examples": 30, "clips": 22}
    assert s_star["budget"]["segment"]["examples_per_epoch"] == 30 and s_star["budget"]["convlstm"]["examples_per_epoch"] == 22
    assert_reload_reproduces_eval(w_star, tmp_path / "tfds", tmp_path / "reloaded_star")  # the ConvLSTM network is what predict applies


@pytest.mark.slow
def test_single_mf_by_optical_flow_skips_the_flow_predictor_and_compensator(tmp_path):
    w = str(tmp_path / "w")
    config = _config("variant=tiny,segment=single", str(tmp_path / "tfds"))
    config.motion = "optical_flow"
    s = dm.run(config, w)
    assert sorted(os.listdir(w)) == ["config.json", "eval", "made_by.json", "metrics.jsonl", "propagate", "segment", "tensorboard"]
    assert {json.loads(line)["stage"] for line in open(os.path.join(w, "metrics.jsonl"))} == {"segment"}
    assert s["motion"] == "optical_flow" and s["train_sizes"] == {"D_L": 4, "D_R": 12, "D_C": 0, "examples": 16}
    assert s["stages"] == ["propagate", "segment"] and "flow_normalisation" not in s
    q = s["d_r_quality"]["all"]  # G is the optical flow here: the baseline is the same propagation
    assert (q["optical_flow_iou"], q["optical_flow_coverage"]) == (q["label_iou"], q["coverage"])
    assert generated.GeneratedDataset(os.path.join(w, "propagate", "d_r")).meta["info"]["motion"] == "optical_flow"
    config.motion = "sideways"
    with pytest.raises(ValueError, match=r"config.motion='sideways'; expected one of \('learned', 'optical_flow'\)"):
        dm.run(config, str(tmp_path / "w2"))


@pytest.mark.slow
def test_dl_only_arm_trains_unet11_on_the_labelled_frames_alone(tmp_path):
    w = str(tmp_path / "w")
    s = dm.run(_config("variant=tiny,segment=dl_only", str(tmp_path / "tfds")), w)
    # no G, no D_R, no D_C: only the segment stage ran
    assert sorted(os.listdir(w)) == ["config.json", "eval", "made_by.json", "metrics.jsonl", "segment", "tensorboard"]
    assert {json.loads(line)["stage"] for line in open(os.path.join(w, "metrics.jsonl"))} == {"segment"}
    assert s["segment"] == "dl_only" and s["stages"] == ["segment"] and "d_r_quality" not in s
    assert s["train_sizes"] == {"D_L": 4, "D_R": 0, "D_C": 0, "examples": 4}
    assert s["budget"] == {"segment": {"epochs": 0, "total_steps": 3, "batch_size": 2, "examples_per_epoch": 4, "epochs_trained": 1.5, "steps_per_epoch": 2}}
    assert s["frame_size"] == [64, 64] and s["num_frames"] == 8  # the same resize and test frames as the other arms
    assert_reload_reproduces_eval(w, tmp_path / "tfds", tmp_path / "reloaded")
    # budget in epochs over its own set: 2 epochs of ceil(4 / 2) steps
    w2 = str(tmp_path / "w2")
    s2 = dm.run(_config("variant=tiny,segment=dl_only,epochs=2", str(tmp_path / "tfds")), w2)
    assert s2["budget"]["segment"]["total_steps"] == 4 and json.load(open(os.path.join(w2, "config.json")))["total_steps"] == 4
