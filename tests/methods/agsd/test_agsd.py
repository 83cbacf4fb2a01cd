"""AGSD end to end at variant=tiny (SS on synthetic, resumed; TT on the real clip with the
unlabelled video), the anchors' store, a training step whose loss decreases, the crop both
frames of a pair share, and the early config errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from predict_helpers import assert_reload_reproduces_eval

from jaxsurg.configs import agsd as agsd_config
from jaxsurg.data import pipeline
from jaxsurg.methods import agsd
from jaxsurg.methods.agsd import anchor_generation, frames as frames_lib, prediction, training
from jaxsurg.methods.agsd.networks import build_network
from jaxsurg.train import mesh as mesh_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # tests/methods/agsd/ → repo
DATA = os.path.join(ROOT, "..", "shared", "data")
CLIP, VIDEO, BING = (os.path.join(DATA, d) for d in ("cholecseg8k_clip", "cholec_video", "bing_objectness"))


def _run(workdir, tfds_dir, *extra, arg="variant=tiny"):
    cmd = [sys.executable, "-m", "jaxsurg.main", f"--config=configs/agsd.py:{arg}", f"--workdir={workdir}", *extra]
    env = dict(os.environ, JAXSURG_TFDS_DIR=str(tfds_dir))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_agsd_tiny_on_synthetic_runs_every_stage_stores_the_anchors_and_resumes(tmp_path):
    w = tmp_path / "w"
    out = _run(w, tmp_path / "tfds")
    assert "anchors: computing" in out.stdout
    summary = json.load(open(w / "eval" / "summary.json"))
    config = json.load(open(w / "config.json"))
    assert summary["method"] == "agsd" and summary["setting"] == "SS" and summary["loss_terms"] == ["anchor", "bg", "fg"]
    assert 0.0 <= summary["iou_mean"] <= summary["dice_mean"] <= 1.0
    # SS scores every labelled frame of the dataset: the tiny synthetic build has 3 clips of 8.
    assert summary["num_frames"] == summary["frames"]["evaluated"] == 24
    assert summary["frames"]["pairs"] == 21 and config["total_steps"] == 3
    assert set(summary["anchors_alone"]) == {"a_pos", "1 - a_neg"}
    assert summary["threshold"]["method"] == "otsu" and 0 < summary["threshold"]["mean"] < 1
    assert set(summary["stage_seconds"]) == {"frames", "anchors", "features", "train", "eval"}
    assert 0.0 <= summary["network_auc"] <= 1.0 and (w / "eval" / "probability.png").stat().st_size > 0
    # What jaxsurg.predict applies scores the evaluated frames as the run did.
    resolved = ml_collections.ConfigDict(config)
    loaded = frames_lib.load_frames(resolved, pipeline.load(resolved))
    rows = np.flatnonzero(loaded.evaluated)
    frames = ((int(i), {"image": loaded.images[i], "mask": loaded.truth[i]}) for i in rows)
    assert_reload_reproduces_eval(w, tmp_path / "tfds", tmp_path / "reloaded", frames=frames, num_frames=len(rows))
    cues = json.load(open(w / "anchors" / "cues.json"))
    assert cues["frames"] == 24 and set(cues["auc"]) == {"colour", "objectness", "location", "a_pos", "1 - a_neg"}
    # The synthetic instruments are grey on red tissue: the colour cue carries signal.
    assert cues["auc"]["colour"] > 0.7
    assert (w / "anchors" / "anchors.png").stat().st_size > 0 and os.listdir(w / "eval" / "overlays")
    store = json.load(open(w / "anchors" / "store.json"))["directory"]
    assert os.path.isdir(store) and not os.path.exists(store + ".incomplete")
    records = [json.loads(line) for line in open(w / "metrics.jsonl")]
    assert {"anchor", "fg", "bg", "loss"} <= set(records[-1]) and records[-1]["step"] == 3
    # Again: the anchors are reused, the train stage is complete, the scores are the same.
    out = _run(w, tmp_path / "tfds")
    assert "anchors: reusing" in out.stdout
    again = json.load(open(w / "eval" / "summary.json"))
    assert again["dice_mean"] == summary["dice_mean"] and len(open(w / "metrics.jsonl").readlines()) == len(records)


@pytest.mark.slow
@pytest.mark.skipif(not all(os.path.isdir(d) for d in (CLIP, VIDEO, BING)), reason="../shared/data clip, video or BING files are absent")
def test_agsd_tiny_tt_on_the_real_clip_with_the_video_and_bing(tmp_path):
    w = tmp_path / "w"
    _run(
        w, tmp_path / "tfds", "--config.dataset=cholecseg8k", f"--config.data_dir={CLIP}", "--config.setting=TT",
        f"--config.video_dir={VIDEO}", "--config.cues.objectness=bing", f"--config.cues.bing_dir={BING}",
        "--config.resize=(64,96)", "--config.predict.threshold=fixed", "--config.loss.anchor=paper", "--config.loss.margins=code",
    )
    summary = json.load(open(w / "eval" / "summary.json"))
    # TT: the first two thirds of the clip (49 frames) and the video train; the last third
    # (24 frames, 23 of them labelled) is scored.
    assert summary["setting"] == "TT" and summary["frames"]["video"] > 0
    assert summary["num_frames"] == 23 and summary["frames"]["trained"] == 49 + summary["frames"]["video"]
    assert summary["threshold"] == {"method": "fixed", "mean": 0.6, "min": 0.6, "max": 0.6, "fixed_threshold": 0.6,
                                    "min_area_fraction": pytest.approx(10000 / (1024 * 1280))}
    cues = json.load(open(w / "anchors" / "cues.json"))
    assert cues["settings"]["objectness"] == "bing" and cues["frames"] == 72
    # BING finds the grasper, even at 64×96 (REFERENCE.md measured 0.966 at full size).
    assert cues["auc"]["objectness"] > 0.7


def _tiny(**changes):
    c = agsd_config.get_config("variant=tiny")
    for k, v in changes.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        with node.ignore_type():
            node[leaf] = v
    return c


@pytest.mark.parametrize("change, match", [
    ({"task": "parts"}, "only 'binary'"),
    ({"setting": "XX"}, "setting"),
    ({"resize": (64, 80)}, "multiples of 32"),
    ({"loss.terms": "anchor+edges"}, "loss.terms"),
    ({"loss.anchor": "log"}, "loss.anchor"),
    ({"model.arch": "vit"}, "model.arch"),
    ({"features": "dino"}, "features"),
    ({"features": "laparoflow:/nonexistent"}, "no config.json"),
    ({"cues.objectness": "bing"}, "bing_dir"),
    ({"cues.objectness": "bing", "cues.bing_dir": "/nonexistent"}, "nonexistent"),
    ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
    ({"predict.threshold": "mean"}, "predict.threshold"),
    ({"loss.edge_margin": 0.3}, "loss.edge_margin"),
])
def test_bad_configs_are_refused_before_any_data_is_built(change, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        agsd.check_config(_tiny(**change))


def test_loss_arm_shorthand():
    assert agsd_config.get_config("variant=tiny,loss=anchor").loss.terms == "anchor"
    with pytest.raises(KeyError, match="unknown loss arm"):
        agsd_config.get_config("loss=edges")


def test_crop_resize_cuts_the_same_box_from_maps_of_any_resolution():
    h, w = 32, 48
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    frame = np.stack([yy / h, xx / w], -1)[None].astype(np.float32)  # normalised coordinates
    small = frame.reshape(1, h // 4, 4, w // 4, 4, 2).mean((2, 4))  # the same maps at 1/4
    box = jnp.array([[0.25, 0.5, 0.5, 0.5]])
    for flip in (False, True):
        big = frames_lib.crop_resize(jnp.asarray(frame), box, jnp.array([flip]), (16, 24))
        low = frames_lib.crop_resize(jnp.asarray(small), box, jnp.array([flip]), (16, 24))
        # An affine ramp is reproduced exactly by linear interpolation inside the frame.
        ys = 0.25 + 0.5 * (np.arange(16) + 0.5) / 16
        xs = 0.5 + 0.5 * (np.arange(24) + 0.5) / 24
        np.testing.assert_allclose(big[0, :, 0, 0], ys, atol=1e-5)
        np.testing.assert_allclose(big[0, 0, :, 1], xs[::-1] if flip else xs, atol=1e-5)
        np.testing.assert_allclose(low[0, 2:-2, 2:-2], big[0, 2:-2, 2:-2], atol=1e-4)
    identity = frames_lib.crop_resize(jnp.asarray(frame), jnp.array([[0.0, 0.0, 1.0, 1.0]]), jnp.array([False]), (h, w))
    np.testing.assert_allclose(identity, frame, atol=1e-6)


def test_pair_augment_shares_the_crop_and_jitters_each_frame():
    aug = frames_lib.PairAugment((0.85, 1.0), True, (0.2, 0.2, 0.2, 10.0))
    rng = np.random.default_rng(0)
    image = np.full((2, 8, 8, 3), 128, np.uint8)
    out = aug.random_map({"image": image}, rng)
    top, left, hh, ww = out["box"]
    assert 0.85 <= hh * ww <= 1.0 and hh == ww and 0 <= top <= 1 - hh and 0 <= left <= 1 - ww
    assert not np.array_equal(out["image"][0], out["image"][1])  # each frame its own jitter


def test_a_training_step_lowers_the_loss_and_updates_batch_norm():
    c = _tiny(**{"model.arch": "resnet18_unet", "resize": (64, 64), "learning_rate": 1e-3})
    mesh = mesh_lib.make_mesh()
    model = build_network(c.model)
    state = training.init_state(c, model, mesh)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2, 2, 64, 64, 3), dtype=np.uint8)
    a_pos = np.zeros((2, 2, 64, 64), np.float32)
    a_pos[..., 20:40, 20:40] = 1
    batch = {
        "image": image, "a_pos": a_pos, "a_neg": 1 - a_pos, "features": rng.normal(size=(2, 2, 4, 4, 8)).astype(np.float16),
        "box": np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (2, 1)), "flip": np.zeros(2, bool),
        "view": np.pad(np.ones((2, 2, 64, 56), np.float16), ((0, 0), (0, 0), (0, 0), (8, 0))),  # the diffusion pools inside it
    }
    step = training.make_train_step(model, c, mesh)
    stats0 = jax.device_get(state.batch_stats)
    losses = []
    for _ in range(8):
        state, m = step(state, mesh_lib.global_batch(batch, mesh))
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert not np.allclose(jax.device_get(state.batch_stats)["encoder"]["bn1"]["mean"], stats0["encoder"]["bn1"]["mean"])


def test_binarize_otsu_and_fixed_with_small_components_removed():
    prob = np.zeros((1, 40, 40), np.float32)
    prob[0, 5:25, 5:25] = 0.9  # 400 px
    prob[0, 30:32, 30:32] = 0.8  # 4 px
    otsu, t = prediction.binarize(prob, "otsu")
    assert otsu.sum() == 404 and 0 < t[0] < 0.8
    fixed, t = prediction.binarize(prob, "fixed", fixed_threshold=0.6, min_area_fraction=10 / 1600)
    assert fixed.sum() == 400 and t[0] == pytest.approx(0.6)
    # The exportable class map of jaxsurg.predict thresholds the same way (Otsu inside the
    # function; the fixed threshold's component removal as its host step).
    logits = np.log(prob / (1 - prob + 1e-12) + 1e-12)[..., None]
    images = np.zeros((1, 40, 40, 3), np.uint8)
    config = ml_collections.ConfigDict({"threshold": "otsu", "fixed_threshold": 0.6, "min_area_fraction": 10 / 1600})
    classes, host = prediction.classes_fn(lambda v, x: logits + 0 * x[..., :1], config)
    assert host is None
    np.testing.assert_array_equal(np.asarray(jax.jit(classes)({}, images)), otsu)
    config.threshold = "fixed"
    classes, host = prediction.classes_fn(lambda v, x: logits + 0 * x[..., :1], config)
    np.testing.assert_array_equal(host(np.asarray(classes({}, images))[0]), fixed[0])


def test_anchors_are_stored_atomically_and_resume_from_their_chunks(tmp_path, monkeypatch):
    n, h, w = 5, 32, 32
    rng = np.random.default_rng(0)
    frames = frames_lib.AgsdFrames(
        images=rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8), truth=(rng.random((n, h, w)) < 0.3).astype(np.uint8),
        run=np.array([0, 0, 0, 1, 1]), trained=np.ones(n, bool), evaluated=np.ones(n, bool), record=np.arange(n), part=["all"] * n,
    )
    config = _tiny(tfds_dir=str(tmp_path))
    calls = []
    real = anchor_generation.objectness_lib.objectness_cue

    def counting(images, **kw):
        calls.append(len(images))
        return real(images, **kw)

    monkeypatch.setattr(anchor_generation.objectness_lib, "objectness_cue", counting)
    settings = anchor_generation.cue_settings(config)
    final = os.path.join(tmp_path, "agsd_anchors", anchor_generation._digest(frames, settings))
    # An interrupted computation left its objectness chunk: it is reused, not recomputed.
    os.makedirs(final + ".incomplete")
    np.save(os.path.join(final + ".incomplete", "objectness-000000.npy"), np.full((n, h, w), 0.5, np.float16))
    anchors = anchor_generation.anchors_for(config, frames)
    assert calls == [] and np.all(anchors.maps["objectness"] == np.float16(0.5))
    assert anchors.directory == final and not os.path.exists(final + ".incomplete")
    # Location is the per-run mean of the colour cue; the anchors are the cue products, smoothed.
    colour = anchors.maps["colour"].astype(np.float32)
    np.testing.assert_allclose(anchors.maps["location"][0], colour[:3].mean(0), atol=2e-3)
    np.testing.assert_allclose(anchors.maps["location"][4], colour[3:].mean(0), atol=2e-3)
    a_pos, a_neg = anchor_generation.fuse(colour, 0.5, anchors.maps["location"])
    np.testing.assert_allclose(anchors.a_pos, anchor_generation.smooth(a_pos, config.cues.smooth_factor), atol=2e-3)
    assert json.load(open(os.path.join(final, "cues.json")))["frames"] == n
    # Reused the second time, untouched.
    assert anchor_generation.anchors_for(config, frames).directory == final and calls == []


def test_the_black_border_is_a_negative_anchor(tmp_path):
    n, h, w = 2, 32, 32
    images = np.full((n, h, w, 3), 128, np.uint8)
    images[:, :, :6] = 0  # a black endoscope border on the left
    frames = frames_lib.AgsdFrames(
        images=images, truth=np.full((n, h, w), 255, np.uint8), run=np.zeros(n, int), trained=np.ones(n, bool),
        evaluated=np.zeros(n, bool), record=np.arange(n), part=["all"] * n,
    )
    masked = anchor_generation.anchors_for(_tiny(tfds_dir=str(tmp_path)), frames)
    assert np.all(masked.a_pos[:, :, :6] == 0) and np.all(masked.a_neg[:, :, :6] == 1)
    plain = anchor_generation.anchors_for(_tiny(tfds_dir=str(tmp_path), **{"cues.mask_border": False}), frames)
    assert plain.directory != masked.directory and plain.a_pos[:, :, :6].max() > 0  # black looks like an instrument


def test_network_auc_ranks_inside_the_field_of_view_where_the_truth_is_known():
    n, h, w = 3, 32, 32
    images = np.full((n, h, w, 3), 128, np.uint8)
    images[:, :, :6] = 0  # a black border on the left: outside the field of view
    truth = np.zeros((n, h, w), np.uint8)
    truth[:, 10:20, 10:20] = 1
    truth[2] = 255  # a frame without ground truth
    frames = frames_lib.AgsdFrames(
        images=images, truth=truth, run=np.zeros(n, int), trained=np.ones(n, bool), evaluated=np.ones(n, bool),
        record=np.arange(n), part=["all"] * n,
    )
    rows = np.array([0, 1, 2])
    p = (truth == 1).astype(np.float32) * 0.5 + 0.25
    assert agsd.network_auc(frames, rows, p) == 1.0
    p[:, :, :6] = 1.0  # certain "instrument" on the border: not counted
    assert agsd.network_auc(frames, rows, p) == 1.0
    p[1] = 1 - p[1]  # one frame ranked backwards: half of the pairs across the two frames
    assert 0.3 < agsd.network_auc(frames, rows, p) < 0.7
    assert agsd.network_auc(frames, rows[2:], p[2:]) is None  # no known pixel
    picture = prediction.probability_picture(images, p, p, truth, np.full(n, 0.5))
    assert picture.dtype == np.uint8 and picture.ndim == 3


def test_the_diffusion_pools_inside_the_view_and_away_from_the_image_edges():
    n, h, w = 2, 32, 40
    images = np.full((n, h, w, 3), 128, np.uint8)
    images[:, :, :6] = 0  # a black border on the left
    frames = frames_lib.AgsdFrames(
        images=images, truth=np.full((n, h, w), 255, np.uint8), run=np.zeros(n, int), trained=np.ones(n, bool),
        evaluated=np.zeros(n, bool), record=np.arange(n), part=["all"] * n,
    )
    loss = _tiny().loss
    assert agsd.diffusion_view(frames, loss) is None  # the paper: every pixel
    loss.field_of_view = True
    view = agsd.diffusion_view(frames, loss)
    assert not view[:, :, :6].any() and view[:, 4:-4, 10:-4].all()
    loss.field_of_view, loss.edge_margin = False, 0.125  # 4 px of the shorter side, 32
    view = agsd.diffusion_view(frames, loss)
    assert view.sum() == n * (h - 8) * (w - 8) and view[:, 4:-4, 4:-4].all()
