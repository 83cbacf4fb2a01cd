"""Config parsing: variants, arg strings, strict keys (in the arg and on the command line)."""

import importlib.util
import os

import pytest

from jaxsurg import config as config_lib
from jaxsurg import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unet11():
    spec = importlib.util.spec_from_file_location("unet11_config", os.path.join(ROOT, "configs", "unet11.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_and_overrides():
    m = _unet11()
    c = m.get_config("variant=tiny,dataset=cholecseg8k,resize=(256,448),augment.hflip=False,learning_rate=1e-3")
    assert (c.variant, c.dataset, c.resize, c.augment.hflip, c.learning_rate) == ("tiny", "cholecseg8k", (256, 448), False, 1e-3)
    assert c.total_steps == m.get_config("variant=tiny").total_steps
    paper = m.get_config("variant=paper")
    assert paper.image_size == (1024, 1280) and paper.learning_rate == 3e-5 and paper.epochs == 50
    for key in ("method", "dataset", "data_dir", "total_steps", "batch_size", "image_size", "seed", "label_interval", "variant"):
        assert key in c


def test_unknown_keys_and_values_are_refused_with_the_known_list():
    m = _unet11()
    with pytest.raises(KeyError, match="unknown config key 'foo'.*known keys: .*batch_size"):
        m.get_config("foo=1")
    with pytest.raises(KeyError, match="unknown variant 'huge'.*paper"):
        m.get_config("variant=huge")
    with pytest.raises(ValueError, match="'batch_size': cannot parse 'four'"):
        m.get_config("batch_size=four")
    with pytest.raises(ValueError, match="not key=value"):
        config_lib.parse_arg("variant")


def test_command_line_override_of_unknown_key_is_refused():
    cfg = os.path.join(ROOT, "configs", "unet11.py")
    main_lib.check_override_keys(["prog", f"--config={cfg}", "--config.batch_size=2"])  # fine
    with pytest.raises(SystemExit, match=r"unknown config key\(s\) \['bacth_size'\].*batch_size"):
        main_lib.check_override_keys(["prog", f"--config={cfg}:variant=tiny", "--config.bacth_size=2"])


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_config", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,blocks", [
    ("unet11", ()), ("laparoflow", ("pretrain", "keypoints")), ("dual_motion", ("flow_predictor", "compensator")), ("pat", ("pretrain", "ext")),
])
def test_every_stage_block_has_the_stage_fields_and_builds_its_optimizer(name, blocks):
    from jaxsurg.train.state import make_optimizer

    m = _load(name)
    for variant in m.VARIANTS:
        c = m.get_config(f"variant={variant}")
        for block in (c, *(c[b] for b in blocks)):  # the top level is the main stage's block
            assert set(config_lib.STAGE_FIELDS) <= set(block.keys())
            tx, schedule = make_optimizer(block)
            assert float(schedule(0)) >= 0.0
    # A typo in a stage block's field is refused with the known keys.
    if blocks:
        with pytest.raises(KeyError, match=rf"unknown config key '{blocks[0]}.total_step'.*{blocks[0]}.total_steps"):
            m.get_config(f"{blocks[0]}.total_step=3")
