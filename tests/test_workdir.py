"""A workdir knows what made it (jaxsurg.train.workdir): a run with another config is refused
with the keys that differ, or redone as --overwrite / --resume says; a changed dataset build
is refused; keys that change no result may differ."""

import json
import os

import ml_collections
import pytest

from jaxsurg.train import stage
from jaxsurg.train import workdir as workdir_lib

STAGES = (stage.StageSpec("first", ("first",)), stage.StageSpec("second", ("second",)))


def _config(**changes):
    c = ml_collections.ConfigDict(dict(
        method="m", dataset="synthetic", data_dir="", task="binary", resize=None, label_interval=1,
        train_fraction=0.5, seed=0, num_overlays=8, log_every=10, study="fractions",
        grid=dict(fractions=(1.0, 0.5), subsets=2), first=dict(width=8, total_steps=4), second=dict(lr=1e-3, total_steps=4),
    ))
    for key, value in changes.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def _finished(w, config):
    """A workdir as a finished run of ``config`` leaves it."""
    workdir_lib.claim(config, w, STAGES)
    for name in ("first/checkpoints", "second/checkpoints", "eval"):
        os.makedirs(os.path.join(w, name))
    open(os.path.join(w, "metrics.jsonl"), "w").close()
    open(os.path.join(w, "mine.txt"), "w").close()  # a user's own file


def test_same_config_passes_and_keys_that_change_no_result_may_differ(tmp_path):
    w = str(tmp_path / "w")
    _finished(w, _config())
    workdir_lib.claim(_config(), w, STAGES)
    workdir_lib.claim(_config(num_overlays=2, log_every=1), w, STAGES)
    # A study's grid says which runs exist, not what one gives: an extended grid is claimed.
    workdir_lib.claim(_config(num_overlays=2, log_every=1, **{"grid.subsets": 3, "grid.fractions": (1.0, 0.5, 0.25)}), w, STAGES)
    assert os.path.isdir(os.path.join(w, "second", "checkpoints"))
    record = json.load(open(os.path.join(w, workdir_lib.RECORD)))
    assert record["config"]["num_overlays"] == 2 and record["config"]["first.width"] == 8


def test_another_config_is_refused_with_the_keys_and_the_ways_on(tmp_path):
    w = str(tmp_path / "w")
    _finished(w, _config())
    with pytest.raises(workdir_lib.WorkdirConflict) as e:
        workdir_lib.claim(_config(dataset="cholecseg8k", **{"second.lr": 1e-4}), w, STAGES)
    message = str(e.value)
    for words in ("dataset: 'synthetic' there, 'cholecseg8k' now", "second.lr: 0.001 there, 0.0001 now", "a new --workdir",
                  "--overwrite", "--resume", "here none"):
        assert words in message
    with pytest.raises(workdir_lib.WorkdirConflict, match=r"second.lr.*--resume \(keep the stages the change leaves valid: here first"):
        workdir_lib.claim(_config(**{"second.lr": 1e-4}), w, STAGES)
    assert os.path.isdir(os.path.join(w, "second"))  # a refusal deletes nothing


def test_overwrite_deletes_the_outputs_and_keeps_other_files(tmp_path):
    w = str(tmp_path / "w")
    _finished(w, _config())
    workdir_lib.claim(_config(**{"first.width": 16}), w, STAGES, policy="overwrite")
    assert sorted(os.listdir(w)) == [workdir_lib.RECORD, "mine.txt"]
    assert json.load(open(os.path.join(w, workdir_lib.RECORD)))["config"]["first.width"] == 16


def test_resume_keeps_the_stages_the_change_leaves_valid(tmp_path):
    w = str(tmp_path / "w")
    _finished(w, _config())
    workdir_lib.claim(_config(**{"second.lr": 1e-4}), w, STAGES, policy="resume")
    assert sorted(os.listdir(w)) == ["first", workdir_lib.RECORD, "mine.txt"]
    # A change upstream (the first stage's keys) leaves no stage valid.
    _finished(str(tmp_path / "v"), _config())
    workdir_lib.claim(_config(**{"first.width": 4}), str(tmp_path / "v"), STAGES, policy="resume")
    assert sorted(os.listdir(tmp_path / "v")) == [workdir_lib.RECORD, "mine.txt"]


def test_outputs_without_a_record_are_refused(tmp_path):
    w = tmp_path / "w"
    (w / "first" / "checkpoints").mkdir(parents=True)
    with pytest.raises(workdir_lib.WorkdirConflict, match="no made_by.json: it was made by an older jaxsurg"):
        workdir_lib.claim(_config(), str(w), STAGES)


def test_a_changed_dataset_build_is_refused(tmp_path):
    w = str(tmp_path / "w")
    workdir_lib.claim(_config(), w, STAGES)
    workdir_lib.check_data(w, "cholecseg8k/default-aaaa/1.0.0", STAGES)
    workdir_lib.check_data(w, "cholecseg8k/default-bbbb/1.0.0", STAGES)  # no stage trained yet: recorded
    os.makedirs(os.path.join(w, "first", "checkpoints"))
    workdir_lib.claim(_config(), w, STAGES)  # the record keeps its build across a claim
    with pytest.raises(workdir_lib.WorkdirConflict, match="made from the dataset build 'cholecseg8k/default-bbbb/1.0.0'"):
        workdir_lib.check_data(w, "cholecseg8k/default-cccc/1.0.0", STAGES)
    workdir_lib.claim(_config(), w, STAGES, policy="overwrite")
    workdir_lib.check_data(w, "cholecseg8k/default-cccc/1.0.0", STAGES)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        workdir_lib.claim(_config(), str(tmp_path / "f"), STAGES)
    with pytest.raises(NotADirectoryError, match="is a file"):
        workdir_lib.claim(_config(), str(tmp_path / "f" / "below"), STAGES)


def test_every_config_key_is_compared_by_some_stage_or_changes_no_result():
    """--resume keeps a stage only if none of its keys changed: every leaf of every config
    must belong to DATA_KEYS, a stage's keys or seed key, EVAL_KEYS (evaluation only), or
    change no result (NOT_RESULTS leaves, NOT_RESULT_BLOCKS)."""
    import importlib

    from jaxsurg import cli
    from jaxsurg.cli import METHODS

    for name in cli.config_names():
        config = cli.load_config(name)
        stages = importlib.import_module(METHODS[config.method]).STAGES
        flat = stage._normalised(config)
        covered = set(stage._select(flat, list(stage.DATA_KEYS) + list(stage.EVAL_KEYS) + [k for s in stages for k in (*s.keys, s.seed_key)]))
        loose = [k for k in flat if k not in covered and not stage.changes_no_result(k)]
        assert not loose, (name, loose)
