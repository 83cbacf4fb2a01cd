"""The main job end to end at variant=tiny: the workdir contract of DESIGN.md."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "..", "shared", "data", "cholecseg8k_clip")


def _run(workdir, tfds_dir, *extra):
    cmd = [sys.executable, "-m", "jaxsurg.main", "--config=configs/unet11.py:variant=tiny", f"--workdir={workdir}", *extra]
    env = dict(os.environ, JAXSURG_TFDS_DIR=str(tfds_dir))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _check_workdir(workdir, dataset):
    config = json.load(open(workdir / "config.json"))
    assert config["method"] == "unet11" and config["variant"] == "tiny" and config["dataset"] == dataset
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records and all({"step", "stage", "loss", "learning_rate", "examples_per_sec"} <= set(r) for r in records)
    assert records[-1]["step"] == config["total_steps"]
    assert str(config["total_steps"]) in os.listdir(workdir / "train" / "checkpoints")
    summary = json.load(open(workdir / "eval" / "summary.json"))
    for key in ("method", "dataset", "task", "num_frames", "iou_mean", "iou_std", "dice_mean", "dice_std", "per_class", "convention"):
        assert key in summary, key
    assert 0.0 <= summary["iou_mean"] <= summary["dice_mean"] <= 1.0
    assert set(summary["per_class"]) == {"background", "instrument"}
    overlays = os.listdir(workdir / "eval" / "overlays")
    assert overlays and all(name.endswith(".png") for name in overlays)
    return config, summary


@pytest.mark.slow
def test_main_tiny_on_synthetic_and_rerun_resumes(tmp_path):
    out = _run(tmp_path / "w", tmp_path / "tfds")
    _, summary = _check_workdir(tmp_path / "w", "synthetic")
    assert summary["num_frames"] > 0
    # The run ends with a human summary; a tiny variant says it is a smoke test.
    assert f"Dice {summary['dice_mean']:.3f} ± {summary['dice_std']:.3f}" in out.stdout
    assert "smoke test of the code path, not a result" in out.stdout and "eval/overlays/ (2)" in out.stdout
    # Starting the same command again (with a key that changes no result: the evaluation
    # batch) finds the finished checkpoint and evaluates the same model.
    logged = len(open(tmp_path / "w" / "metrics.jsonl").readlines())
    _run(tmp_path / "w", tmp_path / "tfds", "--config.eval_batch_size=1")
    again = json.load(open(tmp_path / "w" / "eval" / "summary.json"))
    assert again["iou_mean"] == summary["iou_mean"]
    assert len(open(tmp_path / "w" / "metrics.jsonl").readlines()) == logged  # no step was run again
    # The same workdir with another model size is refused before anything runs (it used to
    # fail in orbax; with another dataset it used to score the old model on the new data).
    for extra, words in (
        ("--config.model.num_filters=16", "model.num_filters: 8 there, 16 now"),
        ("--config.dataset=cholecseg8k", "dataset: 'synthetic' there, 'cholecseg8k' now"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "jaxsurg.main", "--config=configs/unet11.py:variant=tiny", f"--workdir={tmp_path / 'w'}", extra],
            cwd=ROOT, env=dict(os.environ, JAXSURG_TFDS_DIR=str(tmp_path / "tfds")),
            capture_output=True, text=True, timeout=300,
        )
        assert out.returncode != 0 and words in out.stderr and "--overwrite" in out.stderr, out.stderr[-2000:]
    assert json.load(open(tmp_path / "w" / "eval" / "summary.json")) == again  # nothing was touched


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(CLIP), reason="../shared/data/cholecseg8k_clip is absent")
def test_main_tiny_on_the_real_cholecseg8k_clip(tmp_path):
    _run(tmp_path / "w", tmp_path / "tfds", "--config.dataset=cholecseg8k", f"--config.data_dir={CLIP}")
    config, summary = _check_workdir(tmp_path / "w", "cholecseg8k")
    split = summary["split"]
    assert split["mode"] == "temporal"
    (video,) = split["videos"].values()
    assert video == {"train_frames": [561, 609], "test_frames": [610, 633]}
    assert summary["num_frames"] == 23  # frames 610–632; 633 has no ground truth
    assert config["resize"] == [192, 352]


def test_human_summary_says_undefined_where_no_key_point_was_detected(tmp_path):
    """A key-point head that detects nothing has no precision (None in keypoints.json): the
    run's closing lines say so instead of failing after every stage has finished."""
    import ml_collections

    from jaxsurg.main import human_summary

    config = ml_collections.ConfigDict(dict(method="laparoflow", dataset="synthetic", task="binary", variant="default"))
    summary = {"num_frames": 2, "dice_mean": 0.5, "dice_std": 0.1, "iou_mean": 0.4, "iou_std": 0.1,
               "keypoints": {"overall": {"f1": 0.0, "recall": 0.0, "precision": None}}}
    text = human_summary(summary, config, str(tmp_path))
    assert "key points: F1 0.000 (recall 0.000, precision undefined)" in text
