"""PAT end to end at variant=tiny on the synthetic data (every stage, its files, a rerun that
resumes without training), the early config errors, the weight transfer of the fine-tuning
(every layer of G but ``final``), the labelled / validation split and the plateau controller
(against PyTorch's ReduceLROnPlateau rule, and inside the jitted step)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from predict_helpers import assert_reload_reproduces_eval

from jaxsurg.configs import pat as pat_config
from jaxsurg.methods import pat
from jaxsurg.methods.pat import fine_tuning, pretraining
from jaxsurg.train import mesh as mesh_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # tests/methods/pat/ → repo


def _run(workdir, tfds_dir, *extra, arg="variant=tiny"):
    cmd = [sys.executable, "-m", "jaxsurg.main", f"--config=configs/pat.py:{arg}", f"--workdir={workdir}", *extra]
    env = dict(os.environ, JAXSURG_TFDS_DIR=str(tfds_dir))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_pat_tiny_on_synthetic_runs_every_stage_and_resumes(tmp_path):
    w = tmp_path / "w"
    out = _run(w, tmp_path / "tfds")
    summary = json.load(open(w / "eval" / "summary.json"))
    assert summary["method"] == "pat" and summary["task"] == "binary"
    assert 0.0 <= summary["iou_mean"] <= summary["dice_mean"] <= 1.0
    assert set(summary["stage_seconds"]) == {"pretrain", "finetune", "eval"}
    # The tiny build: 16 labelled training frames; half of them, 2 for validation.
    assert summary["num_labelled"] == 6 and summary["num_validation"] == 2
    split = json.load(open(w / "finetune" / "split.json"))
    assert split["labelled_pool"] == 16 and len(split["train_records"]) == 6 and len(split["validation_records"]) == 2
    assert not set(split["train_records"]) & set(split["validation_records"])
    assert split["train_records"] == summary["labelled_records"]
    plateau = json.load(open(w / "finetune" / "plateau.json"))
    assert plateau["steps_per_epoch"] == 3 and plateau["epochs"] == 2
    assert all(v is not None and v > 0 for v in plateau["validation_loss"])
    # The histograms were counted before training, over every pretraining frame (the 16
    # training frames at 32×32), and their weights grow with rarity.
    with np.load(w / "pretrain" / "histograms.npz") as f:
        counts, weights = f["counts"], f["weights"]
    assert counts.shape == (2, 256) and weights.shape == (2, 256) and (counts.sum(1) == 16 * 32 * 32).all()
    record = json.load(open(w / "pretrain" / "histograms.json"))
    assert record["frames"] == 16 and record["form"] == "rarity"
    for c in range(2):
        used = counts[c] > 0
        assert weights[c][counts[c].argmax()] < weights[c][~used].max()
    for name in ("recolor.png", "histograms.png"):
        assert (w / "pretrain" / name).stat().st_size > 0
    assert os.listdir(w / "eval" / "overlays")
    records = [json.loads(line) for line in open(w / "metrics.jsonl")]
    assert {"d_loss", "g_loss", "g_rebalanced"} <= set(records[0])
    assert {"validation_loss", "learning_rate", "plateau_reductions"} <= set(records[-1])
    assert_reload_reproduces_eval(w, tmp_path / "tfds", tmp_path / "reloaded")  # what jaxsurg.predict applies
    # Again: both stages complete (restored, not trained), the same scores, no new metrics.
    out = _run(w, tmp_path / "tfds")
    assert "stage 'pretrain': complete" in out.stdout and "stage 'finetune': complete" in out.stdout
    again = json.load(open(w / "eval" / "summary.json"))
    assert again["dice_mean"] == summary["dice_mean"] and len(open(w / "metrics.jsonl").readlines()) == len(records)


def _tiny(**changes):
    c = pat_config.get_config("variant=tiny")
    for k, v in changes.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        with node.ignore_type():
            node[leaf] = v
    return c


def test_the_variants_pass_the_checks():
    for variant in pat_config.VARIANTS:
        pat.check_config(pat_config.get_config(f"variant={variant}"))


@pytest.mark.parametrize("change, match", [
    ({"task": "parts"}, "only 'binary'"),
    ({"resize": None}, "resize is unset"),
    ({"resize": (48, 64)}, "multiples of 32"),
    ({"pretrain.discriminator": "vgg"}, "pretrain.discriminator"),
    ({"pretrain.rebalancing": "inverse"}, "pretrain.rebalancing"),
    ({"pretrain.discriminator_mode": "frozen"}, "discriminator_mode"),
    ({"pretrain.sources": ("train", "web")}, "pretrain.sources"),
    ({"pretrain.sources": ("video",)}, "video_dir is empty"),
    ({"pretrain.video_dir": "/videos"}, "'video' is not in"),
    ({"pretrain.optimizer": "adamw"}, "Adam with beta1"),
    ({"pretrain.beta1": 1.0}, "betas"),
    ({"pretrain.discriminator_learning_rate": 0.0}, "discriminator_learning_rate"),
    ({"pretrain.rebalancing_mix": 0.0}, "rebalancing_mix"),
    ({"labelled_fraction": 0.0}, "labelled_fraction"),
    ({"num_labelled": -1}, "num_labelled"),
    ({"finetune.validation_fraction": 1.0}, "validation_fraction"),
    ({"finetune.plateau_factor": 0.0}, "plateau_factor"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"ext.enabled": True, "pretrain.enabled": False}, "needs config.pretrain.enabled"),
    ({"ext.enabled": True, "ext.dataset": "mnist"}, "ext.dataset"),
    ({"ext.enabled": True, "ext.build": ""}, "target data itself"),
    ({"ext.enabled": True, "ext.label_interval": 0}, "ext.label_interval"),
])
def test_bad_configs_are_refused_before_any_data_is_built(change, match):
    with pytest.raises(ValueError, match=match):
        pat.check_config(_tiny(**change))


def test_a_bad_config_is_refused_by_run_before_the_data_is_built(tmp_path, monkeypatch):
    from jaxsurg.data import pipeline

    def no_data(config):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(pipeline, "load", no_data)
    with pytest.raises(ValueError, match="pretrain.discriminator"):
        pat.run(_tiny(**{"pretrain.discriminator": "vgg", "tfds_dir": str(tmp_path)}), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_finetune_keeps_every_pretrained_layer_but_the_last():
    c = _tiny()
    generator = pretraining.build_generator(c)
    g_params = jax.jit(generator.init)(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 1)))["params"]
    assert g_params["final"]["kernel"].shape[-1] == 2 and g_params["encoder"]["conv1"]["kernel"].shape == (3, 3, 1, 64)
    mesh = mesh_lib.make_mesh()
    model = fine_tuning.build_segmenter(c)
    state, _ = fine_tuning.init_state(c, c, model, {"params": g_params}, 2, mesh)
    fresh, _ = fine_tuning.init_state(c, c, model, None, 2, mesh)
    params, fresh = jax.device_get(state.params), jax.device_get(fresh.params)
    assert set(params) == set(g_params) == {"encoder", "center", "dec5", "dec4", "dec3", "dec2", "dec1", "final"}
    for name in set(params) - {"final"}:
        jax.tree.map(np.testing.assert_array_equal, params[name], jax.device_get(g_params[name]))
    assert params["final"]["kernel"].shape[-1] == 1
    jax.tree.map(np.testing.assert_array_equal, params["final"], fresh["final"])  # re-initialised from the seed
    assert not np.allclose(fresh["dec1"]["kernel"], params["dec1"]["kernel"])  # "no pretraining": random everywhere
    # A generator of another width does not fit, and the message names the layer.
    other = pretraining.Recolorizer(num_filters=4).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
    with pytest.raises(ValueError, match="'center'"):
        fine_tuning.transfer_pretrained(fresh, other)


def test_the_labelled_split_is_seeded_nested_and_disjoint():
    rows = np.arange(100, 164)
    c = _tiny(labelled_fraction=0.25)
    train, val = fine_tuning.labelled_split(rows, c)
    assert len(train) + len(val) == 16 and len(val) == round(16 * c.finetune.validation_fraction)
    assert not set(train) & set(val) and set(train) | set(val) <= set(rows)
    again = fine_tuning.labelled_split(rows, c)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = fine_tuning.labelled_split(rows, _tiny(labelled_fraction=0.25, seed=1))
    assert not np.array_equal(other[0], train)
    train_n, val_n = fine_tuning.labelled_split(rows, _tiny(num_labelled=5))
    assert len(train_n) + len(val_n) == 5 and len(val_n) == 1
    with pytest.raises(ValueError, match="num_labelled=65"):
        fine_tuning.labelled_split(rows, _tiny(num_labelled=65))
    # Subsets: disjoint blocks of the same permutation while they fit, then fresh draws.
    blocks = [fine_tuning.labelled_split(rows, _tiny(labelled_fraction=0.25, labelled_subset=s)) for s in range(5)]
    assert np.array_equal(blocks[0][0], train) and np.array_equal(blocks[0][1], val)
    chosen = [set(t) | set(v) for t, v in blocks]
    assert all(len(x) == 16 for x in chosen) and set().union(*chosen[:4]) == set(rows)
    assert chosen[4] != chosen[0] and not chosen[4] <= chosen[0]
    with pytest.raises(ValueError, match="labelled_subset=-1"):
        fine_tuning.labelled_split(rows, _tiny(labelled_subset=-1))


def _torch_rule(losses, factor, patience, threshold):
    """PyTorch's ReduceLROnPlateau (mode min, rel, cooldown 0), written out: the scale after each epoch."""
    best, bad, scale, out = float("inf"), 0, 1.0, []
    for v in losses:
        if v < best * (1 - threshold):
            best, bad = v, 0
        else:
            bad += 1
        if bad > patience:
            scale, bad = scale * factor, 0
        out.append(scale)
    return out


def test_the_plateau_controller_follows_pytorchs_rule():
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.89999, 0.8, 0.85, 0.85, 0.85, 0.85]
    for patience in (0, 1, 2):
        state = fine_tuning.init_plateau(len(losses))
        update = jax.jit(lambda s, v, e: fine_tuning.plateau_update(s, v, e, factor=0.1, patience=patience, threshold=1e-4))
        scales = []
        for e, v in enumerate(losses):
            state = update(state, v, e)
            scales.append(float(state.scale))
        np.testing.assert_allclose(scales, _torch_rule(losses, 0.1, patience, 1e-4), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(state.history), losses, rtol=1e-6)
        assert int(state.reductions) == round(-np.log10(scales[-1]))


def test_the_finetune_step_validates_each_epoch_and_scales_the_rate():
    c = _tiny(**{"finetune.plateau_epochs": 0, "learning_rate": 1e-3})
    mesh = mesh_lib.make_mesh()
    model = fine_tuning.build_segmenter(c)
    state, schedule = fine_tuning.init_state(c, c, model, None, 3, mesh)
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 32, 32), np.int32)
    masks[:, 8:20, 8:20] = 1
    L = rng.uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
    validation = {"L": np.concatenate([L, np.zeros_like(L[:1])])[None], "mask": np.concatenate([masks, np.full_like(masks[:1], 255)])[None]}
    step = fine_tuning.make_finetune_step(model, c, 2, schedule, validation, mesh)
    batch = {"image": rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8), "mask": masks[:2].astype(np.uint8)}
    seen = []
    for _ in range(6):
        state, m = step(state, mesh_lib.global_batch(batch, mesh))
        seen.append({k: float(v) for k, v in m.items()})
    history = np.asarray(jax.device_get(state.opt_state.plateau.history))
    assert np.isfinite(history).all() and seen[0]["validation_loss"] == 0.0 and seen[1]["validation_loss"] == pytest.approx(history[0])
    scale = float(jax.device_get(state.opt_state.plateau.scale))
    assert seen[-1]["learning_rate"] == pytest.approx(1e-3 * scale)
    assert scale == pytest.approx(0.1 ** int(jax.device_get(state.opt_state.plateau.reductions)))


def test_the_histogram_picture_draws_both_channels():
    counts = np.zeros((2, 256), np.int64)
    counts[0, 120:140] = np.arange(1, 21)
    counts[1, 100:110] = 5
    from jaxsurg.methods.pat.colour_rebalancing import rebalancing_weights

    picture = pretraining.histogram_figure(counts, rebalancing_weights(counts), "rarity")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[0] > 2 * 256
