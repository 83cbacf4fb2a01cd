"""The pretraining-length curve: cells of a sweep root grouped by head and pretraining step,
averaged over seeds, No SSL as the band; cells of other settings refused."""

import json
import os

import cv2
import pytest

from jaxsurg import sweep
from jaxsurg.methods.laparoflow import pretraining_curve


def _cell(root, spec, shared, values, instrument, steps=300, head="side_tune", pretrain_step=2000):
    cell = sweep.make_cells(spec, shared, [[k, v] for k, v in values])[0]
    workdir = os.path.join(root, "cells", cell.name)
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(cell.config().to_dict(), f, default=list)
    nossl = "nossl" in spec
    summary = {
        "method": "laparoflow_nossl" if nossl else "laparoflow", "dice_mean": (instrument + 0.9) / 2, "class_names": ["background", "instrument"],
        "per_class": {"background": {"dice": 0.9}, "instrument": {"dice": instrument}},
        "head": head, "pretrain_step": None if nossl else pretrain_step, "finetune": {"steps": steps},
    }
    with open(os.path.join(workdir, "eval", "summary.json"), "w") as f:
        json.dump(summary, f)


SHARED = ["--config.pretrain.total_steps=2000", "--config.pretrain.seed=0", "--config.val_frames=16"]


def test_points_average_seeds_per_head_and_step_and_no_ssl_is_the_band(tmp_path):
    root = str(tmp_path)
    for seed, d in (("0", 0.5), ("1", 0.7)):
        _cell(root, "laparoflow:variant=tiny", SHARED, [("pretrain.use_step", "0"), ("seed", seed)], d, pretrain_step=0)
        _cell(root, "laparoflow:variant=tiny", SHARED, [("pretrain.use_step", "-1"), ("seed", seed)], d + 0.2, steps=400)
        _cell(root, "laparoflow:variant=tiny", SHARED, [("pretrain.use_step", "-1"), ("head", "linear_probe"), ("seed", seed)], d,
              head="linear_probe")
        _cell(root, "laparoflow:variant=tiny,baseline=nossl", SHARED, [("seed", seed)], 0.65)
    os.makedirs(os.path.join(root, "cells", "unfinished"))  # no summary: left out, named
    record = pretraining_curve.write_curve(root)
    assert record["figure"] == "dice/instrument"
    side = record["lines"]["side_tune"]
    assert [p["pretrain_step"] for p in side] == [0, 2000] and side[0]["seeds"] == [0, 1]
    assert side[0]["dice/instrument"]["mean"] == pytest.approx(0.6)
    assert side[0]["dice/instrument"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert side[1]["dice/instrument"]["mean"] == pytest.approx(0.8) and side[1]["finetune_steps"]["mean"] == 400
    assert [p["pretrain_step"] for p in record["lines"]["linear_probe"]] == [2000]
    assert record["nossl"]["dice/instrument"] == {"mean": pytest.approx(0.65), "std": 0.0, "n": 2}
    assert json.load(open(os.path.join(root, "curve.json")))["lines"]["side_tune"][1]["seeds"] == [0, 1]
    picture = cv2.imread(os.path.join(root, "curve.png"))
    assert picture is not None and picture.shape[1] >= 720


def test_cells_of_other_settings_are_refused_not_averaged(tmp_path):
    root = str(tmp_path)
    _cell(root, "laparoflow:variant=tiny", SHARED, [("seed", "0")], 0.5)
    _cell(root, "laparoflow:variant=tiny", SHARED[:2] + ["--config.val_frames=8"], [("seed", "1")], 0.5)
    with pytest.raises(ValueError, match=r"differ in val_frames \(16 vs 8\)"):
        pretraining_curve.write_curve(root)
    with pytest.raises(ValueError, match="no cells/ folder"):
        pretraining_curve.write_curve(str(tmp_path / "nothing"))
