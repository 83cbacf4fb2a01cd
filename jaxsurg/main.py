"""The main job: ``python -m jaxsurg.main --config=configs/<method>.py[:arg] --workdir=DIR
[--config.key=value ...]``.

Loads the ml_collections config, refuses unknown keys with the list of known ones, starts
``jax.distributed`` when the environment asks for it, and runs ``config.method``. Outputs
follow the workdir contract of DESIGN.md (config.json, metrics.jsonl, checkpoints,
eval/summary.json, eval/overlays/).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re

from absl import app, flags, logging
from ml_collections import config_flags

from jaxsurg.config import flatten_keys
from jaxsurg.train import mesh as mesh_lib

METHODS = {
    "unet11": "jaxsurg.methods.unet11",
    "laparoflow": "jaxsurg.methods.laparoflow",
    "dual_motion": "jaxsurg.methods.dual_motion",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to configs/<method>.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation.")


def _load_config_file(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("jaxsurg_user_config", path)
    if module_spec is None:
        raise FileNotFoundError(f"--config: cannot load {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def check_override_keys(argv: list[str]) -> None:
    """Refuses ``--config.<key>`` flags whose key the config does not have.

    ml_collections itself fails on those with a bare ``AttributeError``; this names the key
    and lists the known ones.

    Raises:
      SystemExit: with the message, for an unknown key.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    keys = [m.group(1) for a in argv if (m := re.match(r"--config\.([\w.]+)=", a))]
    if spec is None or not keys:
        return
    known = set(flatten_keys(_load_config_file(spec)))
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")


def _parse_flags(argv: list[str]) -> list[str]:
    check_override_keys(argv)
    rest = flags.FLAGS(argv)
    if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; -v 0 shows it
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None or _CONFIG.value is None:
        raise app.UsageError("--config and --workdir are required")
    mesh_lib.initialize_distributed()
    config = _CONFIG.value
    if config.method not in METHODS:
        raise app.UsageError(f"config.method={config.method!r} is unknown; known methods: {sorted(METHODS)}")
    summary = importlib.import_module(METHODS[config.method]).run(config, _WORKDIR.value)
    logging.info("summary: %s", json.dumps(summary))
    keys = ("method", "dataset", "task", "num_frames", "iou_mean", "iou_std", "dice_mean", "dice_std")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))


def run() -> None:
    """Console entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
