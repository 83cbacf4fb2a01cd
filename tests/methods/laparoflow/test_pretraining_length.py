"""Laparoflow-SSL's measurement of the effect of pretraining length: backbones kept at given
steps of one pretraining (the same as an uninterrupted run's there), the backbone the
downstream stages read (pretrain.use_step), the stage fingerprints that let runs differing in
use_step share one pretraining (stages_from), and the config checks."""

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsurg.data.sequences import Identity
from jaxsurg.methods import laparoflow
from jaxsurg.methods.laparoflow import pretrain
from jaxsurg.methods.laparoflow.config import check_pretrain_steps, resolve_task
from jaxsurg.train import stage
from toy_stage import toy_stage

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _config(arg="variant=tiny"):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    try:
        import laparoflow as config_module  # configs/laparoflow.py
    finally:
        sys.path.pop(0)
    return config_module.get_config(arg)


def _toy_stage():
    return toy_stage(total_steps=9, log_every=2, checkpoint_every=4, keep_checkpoints=1, decay_factor=0.5, decay_every=4)  # the schedule spans the whole run


def _train(workdir, steps=None, keep=()):
    mesh, examples, step, fresh, block, config = _toy_stage()
    if steps is not None:
        block.total_steps = steps
    path_of = lambda k: os.path.join(workdir, "pretrain", "kept", f"{k}.msgpack")  # noqa: E731
    out = pretrain.train_keeping("pretrain", block, config, str(workdir), fresh(), step, examples, Identity(), mesh, keep, path_of)
    return np.asarray(out.params["w"]), path_of


def test_kept_steps_hold_the_run_at_those_steps_and_the_run_is_unchanged(tmp_path):
    final, path_of = _train(tmp_path / "kept", keep=(3, 6, 9))
    np.testing.assert_array_equal(final, _train(tmp_path / "plain")[0])  # segments change nothing
    template = {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, "batch_stats": {}}
    for k in (3, 6):
        kept = pretrain.load_variables(path_of(k), template)
        np.testing.assert_allclose(kept["params"]["w"], _train(tmp_path / f"only{k}", steps=k)[0])
    assert not os.path.exists(path_of(9))  # the final backbone is the stage's own checkpoint
    # Complete: the same call trains nothing more and writes nothing new.
    before = os.path.getmtime(path_of(3))
    np.testing.assert_array_equal(_train(tmp_path / "kept", keep=(3, 6, 9))[0], final)
    assert os.path.getmtime(path_of(3)) == before
    # A step to keep that the stage's checkpoints are already past cannot be kept any more.
    with pytest.raises(ValueError, match="past step 2 to keep"):
        _train(tmp_path / "only6", keep=(2,))


def test_backbone_for_downstream_reads_the_chosen_step(tmp_path):
    c = _config("variant=tiny,pretrain.keep_steps=(1,2)")
    final = {"marker": 1}
    assert pretrain.backbone_for_downstream(c, str(tmp_path), final) is final  # use_step -1
    c.pretrain.use_step = c.pretrain.total_steps
    assert pretrain.backbone_for_downstream(c, str(tmp_path), final) is final
    c.pretrain.use_step = 2
    with pytest.raises(ValueError, match="use_step=2: .*step_00000002.msgpack is missing"):
        pretrain.backbone_for_downstream(c, str(tmp_path), final)
    model = pretrain.build_backbone(c)
    shapes = jax.eval_shape(lambda: pretrain._init_variables(model, c.seed, tuple(c.pretrain.view_size)))
    rng = np.random.default_rng(0)
    stored = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), {k: shapes[k] for k in ("params", "batch_stats")})
    pretrain.save_variables(pretrain.kept_path(str(tmp_path), 2), stored)
    got = pretrain.backbone_for_downstream(c, str(tmp_path), final)
    jax.tree.map(np.testing.assert_array_equal, got, stored)


def _flat(config):
    return stage._normalised(config)


def test_use_step_is_the_finetune_stages_setting_so_runs_share_one_pretraining():
    base = _config("variant=tiny,pretrain.keep_steps=(1,2)")
    names = [spec.name for spec in laparoflow.STAGES]
    assert names == ["pretrain", "finetune", "keypoints"]

    def differing(**changes):
        c = ml_collections.ConfigDict(base.to_dict())
        for key, value in changes.items():
            block, _, leaf = key.rpartition("__")
            (c[block] if block else c)[leaf] = value
        return {spec.name: sorted(d) for spec, d in stage.stage_differences(_flat(base), _flat(c), laparoflow.STAGES)}

    assert differing(pretrain__use_step=2) == {"pretrain": [], "finetune": ["pretrain.use_step"], "keypoints": ["pretrain.use_step"]}
    assert differing(pretrain__use_step=0)["pretrain"] == []
    for key in ("head", "val_frames", "val_every", "patience"):
        value = {"head": "linear_probe"}.get(key, 7)
        d = differing(**{key: value})
        assert d["pretrain"] == [] and d["finetune"] == [key], key
    for leaf, value in (("keep_steps", (1,)), ("grid_offset", 1.5), ("valid_radius", 0)):
        assert differing(**{f"pretrain__{leaf}": value})["pretrain"] == [f"pretrain.{leaf}"], leaf
    # Every leaf of the pretrain block is the pretrain stage's, but use_step.
    pretrain_keys = set(laparoflow.STAGES[0].keys)
    assert {f"pretrain.{k}" for k in base.pretrain} - pretrain_keys == {"pretrain.use_step"}


def test_config_checks_of_the_new_keys():
    c = _config()
    resolve_task(c)  # the defaults pass
    for key, value, message in [
        ("head", "mlp", "config.head='mlp'"),
        ("val_frames", -1, "val_frames=-1"),
        ("patience", 0, "patience=0"),
        ("pretrain.keep_steps", (0, 5), "keep_steps=\\(0, 5\\)"),
        ("pretrain.keep_steps", 5, "keep_steps=5"),
        ("pretrain.use_step", -2, "use_step=-2"),
        ("pretrain.grid_offset", 4.0, "grid_offset=4.0"),
        ("pretrain.valid_radius", -1, "valid_radius=-1"),
    ]:
        bad = ml_collections.ConfigDict(c.to_dict())
        *path, leaf = key.split(".")
        with bad.ignore_type():
            (bad[path[0]] if path else bad)[leaf] = value
        with pytest.raises(ValueError, match=message):
            resolve_task(bad)
    nossl = _config("variant=tiny,baseline=nossl,pretrain.use_step=0")
    with pytest.raises(ValueError, match="No SSL has no pretraining"):
        resolve_task(nossl)
    ok = _config("variant=tiny,pretrain.keep_steps=(1,2),pretrain.use_step=2")
    check_pretrain_steps(ok)
    ok.pretrain.use_step = 0
    check_pretrain_steps(ok)
    ok.pretrain.use_step = 5
    with pytest.raises(ValueError, match=r"use_step=5 is not kept: .*keep_steps=\(1, 2\)"):
        check_pretrain_steps(ok)
    ok.pretrain.keep_steps = (1, 9)
    with pytest.raises(ValueError, match="steps past pretrain.total_steps=3"):
        check_pretrain_steps(ok)
