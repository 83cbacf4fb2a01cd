"""jaxsurg.sweep: the cells of a grid, their folders, shared stages, and the results tables."""

import json
import os

import cv2
import numpy as np
import pytest

from jaxsurg import sweep


def _summary(dice, iou, instrument, frames=5):
    return {
        "method": "unet11", "dataset": "synthetic", "task": "binary", "num_frames": frames,
        "dice_mean": dice, "dice_std": 0.1, "iou_mean": iou, "iou_std": 0.05, "class_names": ["background", "instrument"],
        "per_class": {"background": {"dice": 0.99, "iou": 0.98, "frames": frames}, "instrument": {"dice": instrument, "iou": iou, "frames": frames}},
    }


def _finish(root, cell, summary):
    workdir = os.path.join(root, "cells", cell.name)
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, sweep.CELL_RECORD), "w") as f:
        json.dump({"args": cell.args(), "values": dict(cell.values)}, f)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(cell.config().to_dict(), f)
    if summary is not None:
        with open(os.path.join(workdir, sweep.SUMMARY), "w") as f:
            json.dump(summary, f)
    return workdir


def test_cells_are_every_combination_last_grid_fastest_with_config_file_arguments():
    cells = sweep.make_cells("unet11:variant=tiny", ["--config.total_steps=3"], [["seed", "0", "1"], [":variant", "tiny", "default"]])
    assert [c.name for c in cells] == ["seed=0,:variant=tiny", "seed=0,:variant=default", "seed=1,:variant=tiny", "seed=1,:variant=default"]
    assert cells[1].args() == ["--config=unet11:variant=tiny,variant=default", "--config.total_steps=3", "--config.seed=0"]
    assert cells[1].config().variant == "default" and cells[1].config().total_steps == 3
    assert sweep.make_cells("unet11", [], [["resize", "(64,128)"]])[0].name == "resize=_64,128_"
    with pytest.raises(ValueError, match=r"\['seed'\] set both by --grid and after --"):
        sweep.make_cells("unet11", ["--config.seed=1"], [["seed", "0"]])
    with pytest.raises(ValueError, match="give a key and at least one value"):
        sweep.make_cells("unet11", [], [["seed"]])
    with pytest.raises(ValueError, match="is not --config.KEY=VALUE"):
        sweep.make_cells("unet11", ["--workdir=/tmp"], [])
    with pytest.raises(ValueError, match="sweep cell nosuchkey=1: unknown config key 'nosuchkey'"):
        sweep.make_cells("unet11", [], [["nosuchkey", "1"]])[0].config()


def test_results_average_over_seeds_per_row_and_name_missing_cells(tmp_path):
    root = str(tmp_path)
    cells = sweep.make_cells("unet11:variant=tiny", [], [["label_interval", "1", "5"], ["seed", "0", "1", "2"]])
    dice = {(1, 0): 0.8, (1, 1): 0.7, (1, 2): 0.6, (5, 0): 0.5, (5, 1): 0.3}  # (5, 2) did not finish
    for cell in cells:
        key = (int(cell.values[0][1]), int(cell.values[1][1]))
        _finish(root, cell, _summary(dice[key], dice[key] - 0.1, dice[key]) if key in dice else None)
    record = sweep.write_results(root, cells, ["seed"], "python -m jaxsurg.sweep ...")
    row = record["rows"]["label_interval=1"]
    assert row["dice"]["n"] == 3 and row["dice"]["mean"] == pytest.approx(0.7) and row["dice"]["std"] == pytest.approx(0.1)
    assert record["rows"]["label_interval=5"]["dice"]["n"] == 2
    assert record["rows"]["label_interval=5"]["dice"]["std"] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert record["missing"] == ["label_interval=5,seed=2"]
    md = open(os.path.join(root, "results.md")).read()
    assert "| label_interval=1 | 3 | 0.700 ± 0.100 | 0.600 ± 0.100 | 0.700 ± 0.100 |" in md
    assert "| label_interval=5,seed=0 | 5 | 0.500 ± 0.100 | 0.400 ± 0.050 | 0.500 |" in md
    assert "Missing (not finished, not averaged): label_interval=5,seed=2" in md
    assert json.load(open(os.path.join(root, "results.json")))["rows"] == record["rows"]
    picture = cv2.imread(os.path.join(root, "results.png"))
    assert picture is not None and picture.shape[1] >= 720


def test_the_tables_show_the_figures_a_method_names_beside_dice(tmp_path):
    """Dual MF names D_R's quality and the segment stage's steps (SWEEP_FIGURES): each cell's
    values and each row's mean ± std reach results.md, steps (integers in the summary) as
    whole numbers however few; a cell lacking one shows a dash."""
    root = str(tmp_path)
    cells = sweep.make_cells("dual_motion:variant=tiny", [], [["seed", "0", "1"]])
    for cell, dice, steps in zip(cells, (0.8, 0.6), (72, 80)):
        summary = {**_summary(0.7, 0.6, 0.7), "method": "dual_motion", "budget": {"segment": {"total_steps": steps}},
                   "d_r_quality": {"all": {"label_dice": dice, "zero_motion_dice": 0.5, "optical_flow_dice": 0.9, "psnr_db": 31.0}}}
        _finish(root, cell, summary)
    record = sweep.write_results(root, cells, ["seed"], "python -m jaxsurg.sweep ...")
    assert record["method_figures"] == ["D_R Dice", "copy Dice", "optical-flow Dice", "D_R PSNR", "segment steps"]
    assert record["rows"]["all"]["D_R Dice"]["mean"] == pytest.approx(0.7)
    assert record["count_figures"] == ["segment steps"]
    md = open(os.path.join(root, "results.md")).read()
    assert "| D_R Dice | copy Dice | optical-flow Dice | D_R PSNR | segment steps |" in md
    assert "| 0.700 ± 0.141 | 0.500 ± 0.000 | 0.900 ± 0.000 | 31.000 ± 0.000 | 76 ± 6 |" in md
    assert "| seed=0 | 5 | 0.700 ± 0.100 | 0.600 ± 0.050 | 0.700 | 0.800 | 0.500 | 0.900 | 31.000 | 72 |" in md


def test_a_cell_folder_of_other_arguments_is_refused_and_a_partial_one_resumes(tmp_path):
    root = str(tmp_path)
    cell = sweep.make_cells("unet11:variant=tiny", [], [["seed", "0"]])[0]
    assert sweep.cell_state(root, cell) == "new"
    _finish(root, cell, None)
    assert sweep.cell_state(root, cell) == "partial"
    other = sweep.make_cells("unet11:variant=tiny", ["--config.total_steps=9"], [["seed", "0"]])[0]
    with pytest.raises(ValueError, match="was run with other arguments"):
        sweep.cell_state(root, other)


def test_a_cell_takes_the_stages_of_the_cell_agreeing_on_their_settings(tmp_path):
    root = str(tmp_path)
    first, second = sweep.make_cells("unet11:variant=tiny", [], [["seed", "0", "1"]])
    source = _finish(root, first, None)
    assert sweep.shared_stages_source(root, second) == ""  # another seed: nothing shared
    cross = sweep.make_cells("unet11:variant=tiny", [], [["seed", "0"], ["test_dataset", "cholecseg8k"]])[0]
    assert sweep.shared_stages_source(root, cross) == source  # evaluation only differs
    steps = sweep.make_cells("unet11:variant=tiny", [], [["seed", "0"], ["total_steps", "7"]])[0]
    assert sweep.shared_stages_source(root, steps) == ""


def test_cells_of_other_seeds_share_a_pretraining_seeded_by_its_own_key(tmp_path):
    """Laparoflow-SSL's pretraining is seeded by pretrain.seed (-1: the run's seed): with a fixed
    one, a cell of another seed takes the pretraining and trains its own downstream stages."""
    root = str(tmp_path)
    fixed = ["--config.pretrain.seed=0"]
    first, second = sweep.make_cells("laparoflow:variant=tiny", fixed, [["seed", "0", "1"]])
    source = _finish(root, first, None)
    assert sweep.shared_stages_source(root, second) == source
    own = sweep.make_cells("laparoflow:variant=tiny", [], [["seed", "1"]])[0]
    assert sweep.shared_stages_source(root, own) == ""  # pretrain.seed -1 is the run's seed 1 here, 0 there


def test_a_dual_mf_cell_compares_its_own_arms_stages():
    """Dual MF's D_L-only arm reads no G: a cell differing only in G's input mode takes its
    U-Net11; a Single MF cell takes G and D_R from a Dual MF cell of the same G."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        grid = [[":segment", "dl_only"], ["flow_predictor.inputs", "reconstruct", "past"]]
        recon, past = sweep.make_cells("dual_motion:variant=tiny", [], grid)
        source = _finish(root, recon, None)
        assert sweep.shared_stages_source(root, past) == source
        dual = _finish(root, sweep.make_cells("dual_motion:variant=tiny", [], [[":segment", "dual"]])[0], None)
        single = sweep.make_cells("dual_motion:variant=tiny", [], [[":segment", "single"]])[0]
        assert sweep.shared_stages_source(root, single) == dual
        other_g = sweep.make_cells("dual_motion:variant=tiny", [], [[":segment", "single"], ["flow_predictor.inputs", "past"]])[0]
        assert sweep.shared_stages_source(root, other_g) == ""


def test_a_no_ssl_cell_takes_no_pretraining_and_its_own_kind_s_fine_tuning():
    """No SSL reads no pretraining: it takes none from a Laparoflow-SSL cell (its fine-tuning
    differs), but a No-SSL cell that differs only in the test set takes the fine-tuning."""
    import tempfile

    from jaxsurg.methods import laparoflow

    with tempfile.TemporaryDirectory() as root:
        ssl, nossl = sweep.make_cells("laparoflow:variant=tiny", [], [[":baseline", "", "nossl"]])
        assert [spec.name for spec in laparoflow.stages_for(nossl.config())] == ["finetune", "keypoints"]
        assert [spec.name for spec in laparoflow.stages_for(ssl.config())] == ["pretrain", "finetune", "keypoints"]
        _finish(root, ssl, None)
        assert sweep.shared_stages_source(root, nossl) == ""
        source = _finish(root, nossl, None)
        other_test = sweep.make_cells("laparoflow:variant=tiny", [], [[":baseline", "nossl"], ["test_dataset", "synthetic"]])[0]
        assert sweep.shared_stages_source(root, other_test) == source


def test_a_sweep_runs_its_cells_and_a_cross_dataset_cell_reuses_the_trained_stage(tmp_path, capsys):
    root = str(tmp_path / "sweep")
    argv = ["--config=unet11:variant=tiny", f"--root={root}", "--grid", "test_dataset", "", "synthetic"]
    assert sweep.main(argv) == 0
    first, second = (os.path.join(root, "cells", n) for n in ("test_dataset=", "test_dataset=synthetic"))
    assert json.load(open(os.path.join(second, "config.json")))["stages_from"] == first
    a, b = (json.load(open(os.path.join(d, "eval", "summary.json"))) for d in (first, second))
    assert b["split"]["test"]["test_dataset"] == "synthetic"
    assert a["dice_mean"] == b["dice_mean"]  # the same model on the same (synthetic test) frames
    assert "stage_seconds" in b and "train" in b["stage_seconds"]
    capsys.readouterr()
    assert sweep.main(argv) == 0  # finished cells are skipped
    assert capsys.readouterr().out.count(": finished") == 2
