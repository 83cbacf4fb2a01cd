"""Laparoflow-SSL end to end at variant=tiny (the main job), and its stage wiring."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from predict_helpers import assert_reload_reproduces_eval

from jaxsurg import inference, predict

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # tests/methods/laparoflow/ → repo
CLIP = os.path.join(ROOT, "..", "shared", "data", "cholecseg8k_clip")
VIDEO = os.path.join(ROOT, "..", "shared", "data", "cholec_video")


def _run(workdir, tfds_dir, *extra, arg="variant=tiny"):
    cmd = [sys.executable, "-m", "jaxsurg.main", f"--config=configs/laparoflow.py:{arg}", f"--workdir={workdir}", *extra]
    env = dict(os.environ, JAXSURG_TFDS_DIR=str(tfds_dir))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _records(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


@pytest.mark.slow
def test_laparoflow_tiny_on_synthetic_runs_every_stage_and_resumes(tmp_path):
    w = tmp_path / "w"
    _run(w, tmp_path / "tfds")
    config = json.load(open(w / "config.json"))
    assert config["method"] == "laparoflow" and config["task"] == "binary"
    records = _records(w)
    stages = {r["stage"] for r in records}
    assert stages == {"pretrain", "finetune", "keypoints"}
    assert max(r["step"] for r in records if r["stage"] == "pretrain") == config["pretrain"]["total_steps"]
    for stage in stages:
        assert os.listdir(w / stage / "checkpoints"), stage
    tau = json.load(open(w / "pretrain" / "tau.json"))
    assert 0 < tau["tau_p"] < tau["tau_n"]
    assert (w / "pretrain" / "pca.png").stat().st_size > 0
    summary = json.load(open(w / "eval" / "summary.json"))
    assert summary["method"] == "laparoflow" and summary["num_labelled"] == config["num_labelled"]
    assert set(summary["per_class"]) == {"background", "instrument"}
    assert 0.0 <= summary["iou_mean"] <= summary["dice_mean"] <= 1.0
    for key in ("recall", "precision", "f1"):
        assert 0.0 <= summary["keypoints"]["overall"][key] <= 1.0
    assert_reload_reproduces_eval(w, tmp_path / "tfds", tmp_path / "reloaded")  # what jaxsurg.predict applies
    # predict also runs the key-point head: each frame's detections, in the frame's pixels.
    model = inference.load(str(w))
    assert model.keypoints is not None and model.keypoints.names == tuple(summary["keypoints"]["per_type"])
    subprocess.run([sys.executable, "-m", "jaxsurg.data.synthetic", "--frames", "3", "--height", "96", "--width", "160",
                    "--out", str(tmp_path / "c.png"), "--video", str(tmp_path / "c.mp4")], check=True, capture_output=True)
    predict.predict(model, predict.Source(str(tmp_path / "c.mp4")), str(tmp_path / "p"), batch_size=2)
    rows = [json.loads(line) for line in open(tmp_path / "p" / "predictions.jsonl")]
    assert len(rows) == 3 and all(set(r["keypoints"]) == set(model.keypoints.names) for r in rows)
    points = [p for r in rows for pts in r["keypoints"].values() for p in pts]
    assert all(0 <= x < 160 and 0 <= y < 96 and 0 <= s <= 1 for x, y, s in points)
    assert os.listdir(w / "eval" / "overlays") and os.listdir(w / "eval" / "keypoint_overlays")
    # The same command again finds every stage finished and reproduces the evaluation.
    _run(w, tmp_path / "tfds")
    assert len(_records(w)) == len(records)
    again = json.load(open(w / "eval" / "summary.json"))
    assert again["dice_mean"] == summary["dice_mean"] and again["keypoints"] == summary["keypoints"]
    # The finished run's backbone serves another method as frozen features: unit-norm
    # 256-d representations at 1/4, and AGSD's diffusion features end to end.
    from jaxsurg.methods.laparoflow.pretrain import load_pretrained_backbone

    model, variables = load_pretrained_backbone(str(w))
    rep = model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=False)
    assert rep.shape == (1, 16, 16, 256)
    np.testing.assert_allclose(jnp.linalg.norm(rep, axis=-1), 1.0, atol=1e-4)
    agsd = subprocess.run(
        [sys.executable, "-m", "jaxsurg.main", "--config=configs/agsd.py:variant=tiny", f"--workdir={tmp_path / 'agsd'}",
         f"--config.features=laparoflow:{w}", "--config.setting=TT"],
        cwd=ROOT, env=dict(os.environ, JAXSURG_TFDS_DIR=str(tmp_path / "tfds")), capture_output=True, text=True, timeout=1200,
    )
    assert agsd.returncode == 0, agsd.stdout[-4000:] + agsd.stderr[-4000:]
    agsd_summary = json.load(open(tmp_path / "agsd" / "eval" / "summary.json"))
    assert agsd_summary["features"] == f"laparoflow:{w}" and agsd_summary["setting"] == "TT"
    with pytest.raises(ValueError, match="not a Laparoflow-SSL pretraining"):
        load_pretrained_backbone(str(tmp_path / "agsd"))


@pytest.mark.slow
def test_nossl_baseline_skips_pretraining_and_trains_everything(tmp_path):
    w = tmp_path / "w"
    _run(w, tmp_path / "tfds", "--config.keypoints.enabled=False", arg="variant=tiny,baseline=nossl")
    assert {r["stage"] for r in _records(w)} == {"finetune"}
    assert not (w / "pretrain").exists()
    summary = json.load(open(w / "eval" / "summary.json"))
    assert summary["method"] == "laparoflow_nossl" and "keypoints" not in summary


@pytest.mark.slow
@pytest.mark.skipif(not (os.path.isdir(CLIP) and os.path.isdir(VIDEO)), reason="../shared/data clip or video is absent")
def test_laparoflow_tiny_on_the_real_clip_and_video(tmp_path):
    w = tmp_path / "w"
    _run(
        w, tmp_path / "tfds", "--config.dataset=cholecseg8k", f"--config.data_dir={CLIP}",
        "--config.pretrain.sources=('train','video')", f"--config.pretrain.video_dir={VIDEO}",
    )
    summary = json.load(open(w / "eval" / "summary.json"))
    assert summary["task"] == "laparoflow4"
    assert set(summary["per_class"]) == {"background", "fat", "instrument", "gallbladder"}
    assert "keypoints" not in summary  # CholecSeg8k has no key points
    (video,) = summary["split"]["videos"].values()
    assert video["test_frames"] == [610, 633]
    # Labelled frames come from the first two thirds only.
    assert all(r < 49 for r in summary["labelled_records"])


def test_choose_labelled_is_seeded_and_checks_the_count():
    from jaxsurg.methods.laparoflow import finetune

    rows = np.arange(100, 140)
    a = finetune.choose_labelled(rows, 16, seed=3)
    assert len(set(a.tolist())) == 16 and set(a.tolist()) <= set(rows.tolist())
    np.testing.assert_array_equal(a, finetune.choose_labelled(rows, 16, seed=3))
    assert not np.array_equal(a, finetune.choose_labelled(rows, 16, seed=4))
    with pytest.raises(ValueError, match="num_labelled=50"):
        finetune.choose_labelled(rows, 50, seed=0)


def test_resolve_task_and_bad_options():
    import ml_collections

    from jaxsurg.methods import laparoflow

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    try:
        import laparoflow as config_module  # configs/laparoflow.py
    finally:
        sys.path.pop(0)
    c = config_module.get_config("variant=tiny")
    assert laparoflow.resolve_task(c).task == "binary"
    c2 = ml_collections.ConfigDict(c.to_dict())
    c2.dataset = "cholecseg8k"
    assert laparoflow.resolve_task(c2).task == "laparoflow4"
    c3 = ml_collections.ConfigDict(c.to_dict())
    c3.pretrain.loss = "simclr"
    with pytest.raises(ValueError, match="pretrain.loss"):
        laparoflow.resolve_task(c3)
    c4 = ml_collections.ConfigDict(c.to_dict())
    c4.pretrain.view_size = (30, 32)
    with pytest.raises(ValueError, match="multiples of 4"):
        laparoflow.resolve_task(c4)


@pytest.mark.parametrize("loss", ["flow", "flow_only", "view", "flow+view"])
def test_every_pretraining_loss_variant_gives_a_finite_loss_and_gradient(loss):
    import ml_collections

    from jaxsurg.methods.laparoflow import pretrain, views

    p = ml_collections.ConfigDict(dict(
        loss=loss, num_anchors=4, min_flow=1 / 3, tau0=0.07, negative_weight=10.0, counterpart_weight=4.0,
        radius_fraction=1 / 3, view_size=(32, 32), num_pairs=0,
    ))
    key = jax.random.PRNGKey(0)
    image = jax.random.uniform(key, (2, 40, 48, 3))
    yy, xx = jnp.mgrid[:40, :48]
    flow = jnp.stack([jnp.where(xx > 24, 3.0, 0.5), jnp.where(yy > 20, -2.0, 0.5)], -1)[None].repeat(2, 0).astype(jnp.float32)
    valid = jnp.ones((2, 40, 48), bool)
    v = views.make_views(key, image, flow, valid, (32, 32), stride=4)
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 16))

    def f(z):
        z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
        return pretrain.pretrain_loss(z[:2], z[2:], v, jax.random.PRNGKey(2), p, 0.5, 2.0)[0]

    value, grad = jax.jit(jax.value_and_grad(f))(z)
    assert np.isfinite(value) and value > 0
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0


def _small_backbone(monkeypatch):
    """Every stage builds a narrow SegFormer (MiT-B0's kernels, strides and reduction ratios,
    widths 8–64, one block per stage, 16-d representations) so that a run compiles quickly."""
    from jaxsurg.methods.laparoflow import finetune, keypoint_stage, pretrain
    from jaxsurg.methods.laparoflow.segformer import SegFormer

    def small(config):
        return SegFormer(embed_dims=(8, 16, 40, 64), depths=(1, 1, 1, 1), decoder_dim=32, out_dim=16)

    for module in (pretrain, finetune, keypoint_stage):
        monkeypatch.setattr(module, "build_backbone", small)


def _config_module():
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    try:
        import laparoflow as config_module  # configs/laparoflow.py
    finally:
        sys.path.pop(0)
    return config_module


def _plateau_args(tmp_path):
    return ("variant=tiny,keypoints.enabled=False,val_frames=2,val_every=1,patience=1,total_steps=4,"
            f"tfds_dir={tmp_path / 'tfds'}")


@pytest.mark.slow
def test_kept_pretraining_step_linear_probe_and_plateau_end_to_end(tmp_path, monkeypatch):
    """One pretraining keeping step 1, fine-tuned from that step to a validation plateau with
    the linear probe; summary.json reports the step, the head and the fine-tuning's steps."""
    from jaxsurg.methods import laparoflow
    from jaxsurg.methods.laparoflow import finetune, pretrain

    _small_backbone(monkeypatch)
    arg = _plateau_args(tmp_path) + ",pretrain.keep_steps=(1,),pretrain.use_step=1,head=linear_probe"
    a = tmp_path / "a"
    summary = laparoflow.run(_config_module().get_config(arg), str(a))
    assert (a / "pretrain" / "kept" / "step_00000001.msgpack").exists()
    assert summary["pretrain_step"] == 1 and summary["head"] == "linear_probe"
    f = summary["finetune"]
    assert f["head"] == "linear_probe" and f["val_frames"] == 2 and len(f["val_records"]) == 2
    assert not set(f["val_records"]) & set(summary["labelled_records"])
    assert 1 <= f["best_step"] <= f["steps"] <= 4 and f["stopped"] in ("plateau", "total_steps")
    assert [s for s, _ in f["history"]] == list(range(1, f["steps"] + 1))
    assert {"pretrain", "finetune", "eval"} <= set(summary["stage_seconds"])
    reloaded = finetune.final_variables(laparoflow.resolve_task(_config_module().get_config(arg)), str(a))
    assert set(reloaded) == {"params", "batch_stats"} and "classifier" in reloaded["params"]["head"]
    # pretrain.use_step=0: frozen random features (the pretraining's starting point) under the
    # side-tune head, the pretraining taken from the run above (use_step is not one of its keys),
    # by a run of another seed: pretrain.seed=0 is the seed the run above pretrained with
    arg0 = _plateau_args(tmp_path) + f",pretrain.keep_steps=(1,),pretrain.use_step=0,stages_from={a},seed=1,pretrain.seed=0"
    summary0 = laparoflow.run(_config_module().get_config(arg0), str(tmp_path / "b"))
    assert summary0["pretrain_step"] == 0 and summary0["head"] == "side_tune" and summary0["method"] == "laparoflow"
    assert summary0["finetune"]["steps"] >= 1
    assert {json.loads(line)["stage"] for line in open(tmp_path / "b" / "metrics.jsonl")} == {"finetune"}  # no pretraining here
    config0 = laparoflow.resolve_task(_config_module().get_config(arg0))
    _, start = pretrain.initial_backbone(pretrain.pretraining_config(config0))
    backbone = finetune.final_variables(config0, str(tmp_path / "b"))["params"]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, backbone, start["params"])  # the random start, untouched
    _, run_seed_start = pretrain.initial_backbone(config0)  # seed 1: not what the pretraining started from
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(run_seed_start), jax.tree.leaves(start)))
    assert summary0["labelled_records"] != summary["labelled_records"]  # the run's own seed draws its frames
