"""The command line a newcomer discovers: --help lists the configs and variants, --show
prints every key with a description, and packaged configs are found by name from any folder."""

import os
import shutil
import subprocess
import sys

import pytest

from jaxsurg import cli
from jaxsurg.config import flatten_keys


def _jaxsurg(*args, cwd):
    script = shutil.which("jaxsurg")
    cmd = [script] if script else [sys.executable, "-m", "jaxsurg.main"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", cli.config_names())
@pytest.mark.parametrize("variant", ["tiny", "default", "paper"])
def test_every_key_of_every_config_has_a_description(name, variant):
    spec = f"{name}:variant={variant}"
    texts = cli.descriptions(spec)
    config = cli.load_config(spec)
    assert not [k for k in flatten_keys(config) if not cli.describe(k, texts)]
    lines = cli.show(spec, config).splitlines()
    assert len(lines) == len(flatten_keys(config)) and all(" = " in line and "  # " in line for line in lines)


def test_descriptions_follow_the_block_a_key_is_in():
    texts = cli.descriptions("laparoflow")
    assert "before the views are cut" in cli.describe("pretrain.resize", texts)
    assert "dataset default" in cli.describe("resize", texts)
    assert cli.describe("pretrain.total_steps", texts) == cli.describe("total_steps", texts)  # a stage field


def test_help_and_show_from_any_folder(tmp_path):
    out = _jaxsurg("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("unet11", "laparoflow", "dual_motion", "agsd", "pat"):
        assert f"--config={name}:variant=tiny" in out.stdout
    assert "variants: tiny, default, paper" in out.stdout and "--show" in out.stdout
    out = _jaxsurg("--config=laparoflow:variant=tiny", "--config.num_labelled=3", "--show", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "num_labelled = 3" in out.stdout and "chosen by config.seed" in out.stdout
    assert os.listdir(tmp_path) == []  # nothing run, nothing written
    out = _jaxsurg("--config=unet12", "--show", cwd=tmp_path)
    assert out.returncode != 0 and "packaged: agsd, dual_motion, laparoflow, pat, unet11" in out.stderr


def test_config_found_by_name_path_or_file(tmp_path):
    packaged = cli.config_path("unet11")
    same = {os.path.realpath(cli.config_path(s)) for s in ("unet11", "unet11.py", "configs/unet11.py", "/nowhere/configs/unet11.py")}
    assert same == {os.path.realpath(packaged)}
    own = tmp_path / "unet11.py"
    own.write_text(open(packaged).read())
    assert cli.config_path(str(own)) == str(own)  # a user's file wins over the packaged name
