"""PAT's labelled-fraction study at variant=tiny: every cell run once, the pretraining and
PAT-Ext's stage trained once and reused, disjoint subsets, study.json's means and standard
deviations from the cells' own summaries, study.png, a rerun that runs nothing; the grid's
errors before any data is built. PAT-Ext's stage (the related build, all its labelled frames)
and a target fine-tuning that starts from it are checked on the grid's PAT-Ext cells."""

import json
import os

import numpy as np
import pytest

from jaxsurg.configs import pat as pat_config
from jaxsurg.methods import pat
from jaxsurg.methods.pat import study


def _grid(tmp_path, **changes):
    c = pat_config.get_config("variant=tiny,study=fractions")
    c.tfds_dir = str(tmp_path / "tfds")
    c.grid.fractions, c.grid.subsets, c.grid.arms = (0.25,), 2, ("pat", "pat_ext")
    for k, v in changes.items():
        c.grid[k] = v
    return c


def _metrics_stages(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    return {json.loads(line)["stage"] for line in open(path)} if os.path.exists(path) else set()


@pytest.mark.slow
def test_the_fractions_study_trains_pretraining_and_ext_once_and_tabulates_every_cell(tmp_path, monkeypatch):
    w = str(tmp_path / "w")
    out = pat.run(_grid(tmp_path), w)
    cells = {(c["arm"], c["subset"]): c for c in out["cells"]}
    assert set(cells) == {("pat", 0), ("pat", 1), ("pat_ext", 0), ("pat_ext", 1)}
    # The GAN ran in the first PAT cell only, the ext stage in the first PAT-Ext cell only.
    trained = {k: _metrics_stages(c["workdir"]) for k, c in cells.items()}
    assert trained[("pat", 0)] == {"pretrain", "finetune"} and trained[("pat", 1)] == {"finetune"}
    assert trained[("pat_ext", 0)] == {"ext", "finetune"} and trained[("pat_ext", 1)] == {"finetune"}
    # 4 of the 16 labelled frames per cell; the two subsets disjoint; the arms share each subset.
    splits = {k: json.load(open(os.path.join(c["workdir"], "finetune", "split.json"))) for k, c in cells.items()}
    frames = {k: set(s["train_records"]) | set(s["validation_records"]) for k, s in splits.items()}
    assert all(len(f) == 4 for f in frames.values()) and not frames[("pat", 0)] & frames[("pat", 1)]
    assert frames[("pat", 0)] == frames[("pat_ext", 0)] and frames[("pat", 1)] == frames[("pat_ext", 1)]
    # PAT-Ext's stage: the related build (other scenes), all of its 16 labelled frames, 3 steps.
    ext = json.load(open(os.path.join(cells[("pat_ext", 0)]["workdir"], "eval", "summary.json")))
    assert ext["method"] == "pat_ext" and set(ext["stage_seconds"]) == {"pretrain", "ext", "finetune", "eval"}
    assert ext["ext"]["build"].startswith("synthetic_surgery/tiny-") and ext["ext"]["steps"] == 3
    ext_dir = os.path.join(cells[("pat_ext", 0)]["workdir"], "ext")
    ext_split = json.load(open(os.path.join(ext_dir, "split.json")))
    assert len(ext_split["train_records"]) + len(ext_split["validation_records"]) == ext_split["labelled_pool"] == 16
    assert json.load(open(os.path.join(ext_dir, "plateau.json")))["validation_loss"][0] > 0
    # The target fine-tuning started from the ext stage, not from G: the same split and the
    # same re-initialised last layer (same seed), other hidden layers, so another first loss.
    def first_finetune_loss(d):
        return next(r["loss"] for r in map(json.loads, open(os.path.join(d, "metrics.jsonl"))) if r["stage"] == "finetune")

    assert first_finetune_loss(cells[("pat_ext", 0)]["workdir"]) != first_finetune_loss(cells[("pat", 0)]["workdir"])
    # The table is the cells' own test Dice: mean and sample std over the subsets.
    record = json.load(open(os.path.join(w, "study.json")))
    for arm in ("pat", "pat_ext"):
        dice = [json.load(open(os.path.join(cells[(arm, s)]["workdir"], "eval", "summary.json")))["dice_mean"] for s in (0, 1)]
        row = record["arms"][arm]["0.25"]
        assert row["dice"] == [round(d, 6) for d in dice] and row["subsets"] == 2
        assert row["dice_mean"] == pytest.approx(np.mean(dice)) and row["dice_std"] == pytest.approx(np.std(dice, ddof=1))
    tested = json.load(open(os.path.join(cells[("pat", 0)]["workdir"], "eval", "summary.json")))["num_frames"]
    assert record["num_frames"] == out["num_frames"] == tested > 0
    assert record["labelled_pool"] == 16 and os.path.getsize(os.path.join(w, "study.png")) > 0
    assert not any(os.path.exists(os.path.join(c["workdir"], "finetune", "checkpoints")) for c in cells.values())
    # Again: every cell is read from its summary, nothing runs.

    def no_run(*a, **k):
        raise AssertionError("a complete cell ran again")

    monkeypatch.setattr(study, "_run_cell", no_run)
    again = pat.run(_grid(tmp_path), w)
    assert again["arms"] == out["arms"]


@pytest.mark.parametrize("change, match", [
    ({"arms": ("pat", "supervised")}, "grid.arms"),
    ({"arms": ()}, "grid.arms"),
    ({"fractions": (0.5, 1.5)}, "grid.fractions"),
    ({"fractions": (0.5, 0.5)}, "grid.fractions"),
    ({"subsets": 0}, "grid.subsets"),
])
def test_bad_grids_are_refused_before_any_data_is_built(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        pat.run(_grid(tmp_path, **change), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists() and not (tmp_path / "tfds").exists()


def test_an_arm_error_names_the_arm(tmp_path):
    c = _grid(tmp_path)
    c.ext.build = ""  # the target data itself: refused for the PAT-Ext arm only
    with pytest.raises(ValueError, match="arm 'pat_ext'.*target data itself"):
        study.check_grid(c)
    c.grid.arms = ("none", "pat")
    study.check_grid(c)


def test_unknown_study_is_refused():
    c = pat_config.get_config("variant=tiny,study=ablation")
    with pytest.raises(ValueError, match="config.study='ablation'"):
        study.check_grid(c)


def test_cells_tested_on_different_frames_are_refused(tmp_path):
    c = _grid(tmp_path, arms=("none",))
    cell = {"arm": "none", "fraction": 0.25, "subset": 0, "dice": 0.5, "num_labelled": 4, "num_validation": 1, "num_frames": 8, "workdir": "w/none/k0.25/s0"}
    record = study._table(c, [cell, {**cell, "subset": 1}], [0.25], 16)
    assert record["num_frames"] == 8 and record["arms"]["none"]["0.25"]["dice_mean"] == 0.5
    with pytest.raises(ValueError, match=r"different numbers of frames \[7, 8\] \(7: e.g. w/none/k0.25/s1; 8: e.g. w/none/k0.25/s0\)"):
        study._table(c, [cell, {**cell, "subset": 1, "num_frames": 7, "workdir": "w/none/k0.25/s1"}], [0.25], 16)
