"""Dual Motion Flow: the generated-dataset format, joint propagation on a scene with known
motion, the rebuilt sequence for Dual MF★, and a tiny end-to-end run of every stage."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from jaxsurg.data import generated, pipeline
from jaxsurg.methods import dual_motion as dm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(n: int, h: int = 12, w: int = 16, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        dict(
            image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            mask=rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w)),
            video_id=i % 2, position=i + 0.5 * (i % 2), source=generated.SOURCES[i % 3], k=i % 4,
        )
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- generated.py


def test_generated_round_trip_over_several_shards(tmp_path):
    recs = _records(5)
    path = str(tmp_path / "ds")
    assert generated.write_dataset(path, recs, shard_size=2, info={"note": "x"}) == 5
    assert sorted(f for f in os.listdir(path) if f.endswith(".npz")) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    ds = generated.GeneratedDataset(path)
    assert len(ds) == 5 and ds.meta["info"] == {"note": "x"}
    assert ds.meta["sources"] == {"raw": 2, "propagated": 2, "compensated": 1}
    for i, r in enumerate(recs):
        got = ds[i]
        assert got["image"].dtype == np.uint8 and got["image"].shape == (12, 16, 3)
        np.testing.assert_array_equal(got["image"], r["image"])  # PNG is lossless, RGB order kept
        np.testing.assert_array_equal(got["mask"], r["mask"])  # 255 = ignore survives
        assert (got["video_id"], got["position"], got["source"], got["k"]) == (r["video_id"], r["position"], r["source"], r["k"])
    np.testing.assert_array_equal(ds[-1]["image"], recs[-1]["image"])
    np.testing.assert_allclose(ds.position, [r["position"] for r in recs])
    assert list(ds.source) == [r["source"] for r in recs]
    with pytest.raises(IndexError, match="out of range"):
        ds[5]


def test_reusable_checks_the_recorded_settings(tmp_path):
    path = str(tmp_path / "d_r")
    info = {"task": "binary", "num_classes": 2, "resize": (64, 64)}
    assert not generated.reusable(path, info)  # nothing there yet
    generated.write_dataset(path, _records(2), info=info)
    assert generated.reusable(path, info)  # the tuple came back from JSON as a list
    assert generated.reusable(path, {**info, "new_key": 1})  # keys it does not record are not compared
    with pytest.raises(ValueError, match=r"d_r was generated with other settings \(num_classes: written with 2, this run wants 4, task: written with 'binary', this run wants 'parts'\)"):
        generated.reusable(path, {**info, "task": "parts", "num_classes": 4})


def test_generated_examples_feed_the_grain_pipeline(tmp_path):
    recs = _records(4, h=20, w=24)
    ds = generated.GeneratedDataset(str(tmp_path / "ds")) if generated.write_dataset(str(tmp_path / "ds"), recs) else None
    clips = generated.FrameExamples([[(ds, 0), (ds, 1)], [(ds, 2), (ds, 3)]])
    assert clips[1]["image"].shape == (2, 20, 24, 3) and clips[1]["mask"].shape == (2, 20, 24)
    np.testing.assert_array_equal(clips[1]["mask"][1], recs[3]["mask"])
    frames = generated.FrameExamples([[(ds, i)] for i in range(4)])
    augment = pipeline.Augment(resize=None, crop=(16, 16), hflip=False)
    batch = next(pipeline.local_batches(frames, augment, seed=0, per_process_batch=2, num_threads=1))
    assert batch["image"].shape == (2, 16, 16, 3) and batch["mask"].shape == (2, 16, 16)
    # every batch image is a 16×16 crop of one of the records, with its own mask
    for img, msk in zip(batch["image"], batch["mask"]):
        found = [
            (y, x) for r in recs for y in range(5) for x in range(9)
            if np.array_equal(r["image"][y : y + 16, x : x + 16], img) and np.array_equal(r["mask"][y : y + 16, x : x + 16], msk)
        ]
        assert found


def test_interrupted_write_leaves_no_complete_dataset(tmp_path):
    path = str(tmp_path / "ds")
    recs = _records(3)
    with pytest.raises(RuntimeError, match="killed"):
        with generated.GeneratedWriter(path, shard_size=1) as w:
            for r in recs[:2]:
                w.add(r["image"], r["mask"], video_id=0, position=0.0, source="raw")
            raise RuntimeError("killed")
    assert not os.path.exists(path) and not generated.is_complete(path)
    assert os.listdir(tmp_path) == []  # the temporary directory is removed
    # A process killed before close (no cleanup at all) leaves only a hidden temporary dir.
    w = generated.GeneratedWriter(path, shard_size=1)
    w.add(recs[0]["image"], recs[0]["mask"], video_id=0, position=0.0, source="raw")
    assert not os.path.exists(path) and not generated.is_complete(path)
    with pytest.raises(FileNotFoundError, match="no complete generated dataset"):
        generated.GeneratedDataset(path)
    w.close()
    assert generated.is_complete(path) and len(generated.GeneratedDataset(path)) == 1
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_generated_bad_input_errors(tmp_path):
    path = str(tmp_path / "ds")
    img, msk = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    with generated.GeneratedWriter(path) as w:
        with pytest.raises(ValueError, match="image must be uint8"):
            w.add(img.astype(np.float32), msk, video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="image must be uint8"):
            w.add(img[..., 0], msk, video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="mask must be uint8"):
            w.add(img, msk[:4], video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="source must be one of"):
            w.add(img, msk, video_id=0, position=0, source="interpolated")
        w.add(img, msk, video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="differs from the dataset"):
            w.add(np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8), video_id=0, position=0, source="raw")
    with pytest.raises(FileExistsError, match="already exists"):
        generated.GeneratedWriter(path)
    with pytest.raises(ValueError, match="shard_size"):
        generated.GeneratedWriter(str(tmp_path / "other"), shard_size=0)
    with pytest.raises(ValueError, match="closed"):
        w.add(img, msk, video_id=0, position=0, source="raw")
    assert generated.write_dataset(path, _records(2, 8, 8), overwrite=True) == 2
    assert len(generated.GeneratedDataset(path)) == 2


# ----------------------------------------------------------------------------- joint propagation


V = np.array([2.0, 1.0])  # camera pan per frame, pixels: content moves by −V


def _panning_sequence(num_frames=8, h=32, w=32, label_interval=5, seed=0) -> dm.TrainSequence:
    """A camera panning over a textured canvas with two labelled rectangles; the exact
    flow is −V everywhere (frame t → t + 1)."""
    rng = np.random.default_rng(seed)
    ch, cw = h + num_frames * 2, w + num_frames * 3
    canvas = rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8)
    labels = np.zeros((ch, cw), np.uint8)
    labels[10:30, 12:26] = 1
    labels[26:40, 20:44] = 2
    frames = np.stack([canvas[t * 1 : t * 1 + h, t * 2 : t * 2 + w] for t in range(num_frames)])
    truth = np.stack([labels[t * 1 : t * 1 + h, t * 2 : t * 2 + w] for t in range(num_frames)])
    labelled = np.arange(num_frames) % label_interval == 0
    masks = np.where(labelled[:, None, None], truth, 255).astype(np.uint8)
    fwd = np.broadcast_to(-V, (num_frames, h, w, 2)).astype(np.float32).copy()
    bwd = -fwd
    fwd[-1] = 0
    bwd[0] = 0
    n = np.arange(num_frames)
    seq = dm.TrainSequence(frames, masks, labelled, np.zeros(num_frames, np.int64), n, fwd, bwd, np.zeros_like(n), np.full_like(n, num_frames - 1),
                           true_masks=truth)
    return seq, truth


def test_propagation_plan_takes_the_nearest_labelled_frame():
    seq, _ = _panning_sequence(label_interval=5)
    assert dm.propagation_plan(seq, 2) == {1: (0, 1, 1), 2: (0, 1, 2), 3: (5, -1, 2), 4: (5, -1, 1), 6: (5, 1, 1), 7: (5, 1, 2)}
    assert dm.propagation_plan(seq, 1) == {1: (0, 1, 1), 4: (5, -1, 1), 6: (5, 1, 1)}
    seq4, _ = _panning_sequence(label_interval=4)  # frame 2 is 2 from frames 0 and 4: forward wins
    assert dm.propagation_plan(seq4, 4)[2] == (0, 1, 2)
    assert dm.propagation_plan(seq4, 4)[7] == (4, 1, 3)


def test_history_repeats_edge_frames_with_zero_flow():
    seq, _ = _panning_sequence()
    frames, flows = dm.history(seq, 1, +1)  # rows −1 (outside → row 0), 0, 1
    np.testing.assert_array_equal(frames, seq.frames[[0, 0, 1]])
    np.testing.assert_array_equal(flows[0], 0)
    np.testing.assert_array_equal(flows[1], seq.flow_fwd[0])
    frames, flows = dm.history(seq, 5, -1)  # rows 7, 6, 5; backward flows 7→6, 6→5
    np.testing.assert_array_equal(frames, seq.frames[[7, 6, 5]])
    np.testing.assert_array_equal(flows, seq.flow_bwd[[7, 6]])


@pytest.mark.parametrize("warp", ["forward", "backward"])
def test_joint_propagation_with_the_true_flow_recovers_the_true_labels(warp):
    seq, truth = _panning_sequence()
    plan = dm.propagation_plan(seq, 2)
    h, w = seq.frames.shape[1:3]

    def true_motion(frames, flows, rows, directions):
        # forward warp: the flow on the source grid, p → p + d; backward warp: on the target
        # grid, pointing back at the source (the opposite flow)
        sign = 1.0 if warp == "forward" else -1.0
        return np.stack([np.broadcast_to(-V * d * sign, (h, w, 2)) for d in directions]).astype(np.float32)

    pairs = dm.joint_propagation(seq, plan, true_motion, num_classes=3, warp=warp, batch_size=4)
    assert sorted(pairs) == [1, 2, 3, 4, 6, 7]
    for u, (image, label) in pairs.items():
        j = plan[u][2]
        if warp == "forward":  # the image border the chain could not fill is a hole (ignore)
            covered = label != 255
            assert covered.mean() >= (h - j * 1) * (w - j * 2) / (h * w) - 1e-6
        else:  # clamped sampling fills the border with replicated pixels: check the interior
            covered = np.zeros((h, w), bool)
            covered[j : h - j, 2 * j : w - 2 * j] = True
        np.testing.assert_array_equal(label[covered], truth[u][covered])
        np.testing.assert_array_equal(image[covered], seq.frames[u][covered])  # the pair stays aligned
        assert set(np.unique(label[covered])) == set(np.unique(truth[u][covered])) and (label[covered] > 0).any()
    # config.motion='optical_flow' chains the sequence's stored flows (here exact), picked
    # for the warp's grid: the same pairs as the true motion.
    by_flow = dm.joint_propagation(seq, plan, dm.optical_flow_motion(seq, warp), num_classes=3, warp=warp, batch_size=4)
    assert sorted(by_flow) == sorted(pairs)
    for u in pairs:
        np.testing.assert_array_equal(by_flow[u][0], pairs[u][0])
        np.testing.assert_array_equal(by_flow[u][1], pairs[u][1])
    # A padded chain's extra step from the video's edge rows stays inside the video.
    edge = dm.optical_flow_motion(seq, warp)(None, None, np.array([len(seq) - 1, 0]), np.array([1, -1]))
    assert edge.shape == (2, h, w, 2)


def test_propagation_quality_scores_d_r_against_the_held_back_labels():
    seq, truth = _panning_sequence()
    plan = dm.propagation_plan(seq, 2)
    h, w = seq.frames.shape[1:3]
    exact = lambda frames, flows, rows, directions: np.stack([np.broadcast_to(-V * d, (h, w, 2)) for d in directions]).astype(np.float32)
    still = lambda frames, flows, rows, directions: np.zeros((len(rows), h, w, 2), np.float32)
    # The exact motion recovers every held-back label (where it covers) and the frame itself.
    q = dm.propagation_quality(seq, dm.joint_propagation(seq, plan, exact, num_classes=3, warp="forward", batch_size=4), plan, 3)
    assert sorted(q) == ["all", "k=1", "k=2"] and q["all"]["frames"] == q["all"]["labelled_frames"] == 6
    assert q["k=1"]["frames"] == 3 and q["all"]["label_iou"] == q["all"]["label_dice"] == 1.0
    assert q["all"]["psnr_db"] > 100 and q["all"]["zero_motion_psnr_db"] < 20  # random texture, shifted
    # Border holes: a k-step chain leaves the strips the pan uncovered (1 row and 2 columns per step).
    assert q["k=1"]["coverage"] == pytest.approx((h - 1) * (w - 2) / (h * w))
    # Copying L_l unchanged scores what the metric gives for it, on the covered pixels.
    u, (l, _, k) = 3, plan[3]
    covered = np.zeros((h, w), bool)
    covered[k:, 2 * k :] = True  # from l = 5 back to 3, the top k rows and left 2k columns are holes
    counts = dm.metrics.confusion_counts(seq.masks[l][None].astype(np.int32), np.where(covered, truth[u], 255)[None], 3)
    expect = dm.metrics.frame_scores(counts)["dice"][0]
    pairs = dm.joint_propagation(seq, {u: (l, -1, k)}, exact, num_classes=3, warp="forward", batch_size=1)
    np.testing.assert_array_equal(pairs[u][1] != 255, covered)
    assert dm.propagation_quality(seq, pairs, {u: (l, -1, k)}, 3)["all"]["zero_motion_dice"] == pytest.approx(expect)
    assert expect < 0.95
    # No motion at all is no better than copying the label.
    q0 = dm.propagation_quality(seq, dm.joint_propagation(seq, plan, still, num_classes=3, warp="forward", batch_size=4), plan, 3)
    assert q0["all"]["label_dice"] == pytest.approx(q0["all"]["zero_motion_dice"]) and q0["all"]["coverage"] == 1.0
    # Frames without ground truth are counted but not scored.
    seq.true_masks = np.full_like(truth, 255)
    blind = dm.propagation_quality(seq, pairs, {u: (l, -1, k)}, 3)["all"]
    assert blind["frames"] == 1 and blind["labelled_frames"] == 0 and blind["label_dice"] is None and blind["psnr_db"] > 100


def test_rebuilt_sequence_clips_never_cross_a_gap():
    seq, _ = _panning_sequence()

    class Fake:
        def __init__(self, positions):
            self.position = np.asarray(positions, float)
            self.video_id = np.zeros(len(positions), int)

        def __len__(self):
            return len(self.position)

    d_l = dm.LabelledFrames(seq)  # positions 0, 5
    d_r = Fake([1, 2, 4, 6, 7])  # 3 unreachable
    d_c = Fake([p + 0.5 for p in range(7) if p != 3])
    (video,) = dm.rebuilt_sequence(d_l, [d_r, d_c])
    assert [e[0] for e in video] == [0, 0.5, 1, 1.5, 2, 2.5, 4, 4.5, 5, 5.5, 6, 6.5, 7]
    clips = dm.convlstm_clips([video], 5)
    assert len(clips) == 2 + 3  # 0…2.5 (6 entries) gives 2 clips, 4…7 (7 entries) 3
    assert clips[0][0] == (d_l, 0) and clips[0][1] == (d_c, 0)


# ----------------------------------------------------------------------------- end to end


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
    assert d_r[0]["image"].shape == (64, 64, 3)
    assert os.path.getsize(os.path.join(w, "propagate", "sequence.png")) > 0
    s = json.load(open(os.path.join(w, "eval", "summary.json")))
    assert s["method"] == "dual_motion" and s["optical_flow"]["backward"] == "dis"
    assert s["train_sizes"] == {"D_L": 4, "D_R": 12, "D_C": 14, "examples": 30}
    assert 0.0 <= s["iou_mean"] <= s["dice_mean"] <= 1.0 and s["num_frames"] == 8
    # D_R scored against the synthetic ground truth the run held back (every frame has one)
    quality_path = os.path.join(w, "propagate", "quality.json")
    quality = json.load(open(quality_path))
    assert s["d_r_quality"] == quality and quality["all"]["frames"] == quality["all"]["labelled_frames"] == 12
    assert 0.0 <= quality["all"]["label_iou"] <= quality["all"]["label_dice"] <= 1.0 and 0.0 < quality["all"]["coverage"] <= 1.0
    # The same run again finds every stage complete: no new steps, the same evaluation; a
    # quality.json missing (a workdir from before it existed) is rebuilt from D_R on disk.
    os.remove(quality_path)
    again = dm.run(_config("variant=tiny", str(tmp_path / "tfds")), w)
    assert len(open(os.path.join(w, "metrics.jsonl")).readlines()) == len(records)
    assert again["iou_mean"] == summary["iou_mean"] and again["dice_mean"] == summary["dice_mean"]
    assert json.load(open(quality_path)) == quality  # the same uint8 pairs, read back from disk
    # A workdir whose D_R holds binary labels refuses a parts run instead of training on them.
    parts = _config("variant=tiny", str(tmp_path / "tfds"))
    parts.task = "parts"
    with pytest.raises(ValueError, match="task: written with 'binary', this run wants 'parts'"):
        dm.run(parts, w)
    # Dual MF★ can start from this run's trained U-Net11 (config.convlstm.init_from).
    import jax

    from jaxsurg.models.convlstm import UNet11ConvLSTM
    from jaxsurg.train import mesh as mesh_lib

    mesh = mesh_lib.make_mesh()
    loaded = dm.load_segment_params(config, w, 2, mesh)
    star = jax.eval_shape(UNet11ConvLSTM(num_classes=1, num_filters=8, convlstm_layers=2).init,
                          jax.random.PRNGKey(0), np.zeros((1, 5, 64, 64, 3), np.float32))["params"]
    assert set(loaded) < set(star) and all("convlstm" in k for k in set(star) - set(loaded))
    fresh = dm.unet11_method.build_model(config, 2).init(jax.random.PRNGKey(config.seed), np.zeros((1, 64, 64, 3), np.float32))["params"]
    assert jax.tree.structure(fresh) == jax.tree.structure(loaded)
    assert not np.allclose(fresh["final"]["kernel"], loaded["final"]["kernel"])  # trained, not a fresh init
    with pytest.raises(ValueError, match="segment stage is at step 0"):
        dm.load_segment_params(config, str(tmp_path / "empty"), 2, mesh)


@pytest.mark.slow
def test_single_mf_by_optical_flow_skips_the_flow_predictor_and_compensator(tmp_path):
    w = str(tmp_path / "w")
    config = _config("variant=tiny,segment=single", str(tmp_path / "tfds"))
    config.motion = "optical_flow"
    s = dm.run(config, w)
    assert sorted(os.listdir(w)) == ["config.json", "eval", "metrics.jsonl", "propagate", "segment", "tensorboard"]
    assert {json.loads(line)["stage"] for line in open(os.path.join(w, "metrics.jsonl"))} == {"segment"}
    assert s["motion"] == "optical_flow" and s["train_sizes"] == {"D_L": 4, "D_R": 12, "D_C": 0, "examples": 16}
    assert generated.GeneratedDataset(os.path.join(w, "propagate", "d_r")).meta["info"]["motion"] == "optical_flow"
    config.motion = "sideways"
    with pytest.raises(ValueError, match=r"config.motion='sideways'; expected one of \('learned', 'optical_flow'\)"):
        dm.run(config, str(tmp_path / "w2"))
