"""The main job: ``python -m jaxsurg.main --config=<name or path>[:arg] --workdir=DIR
[--config.key=value ...] [--overwrite | --resume]`` (or the ``jaxsurg`` console script).

``--config=laparoflow`` finds a packaged config from any folder; ``--config=X --show``
prints the config with a description of every key and exits. The workdir is checked
against what made it before any expensive step (``jaxsurg.train.workdir``): a workdir made
with another config is refused unless ``--overwrite`` (start afresh) or ``--resume`` (keep
the stages the change leaves valid) says what to do. Unknown ``--config.*`` keys are
refused with the known ones; ``jax.distributed`` starts when the environment asks for it;
outputs follow the workdir contract of README.md (config.json, made_by.json,
metrics.jsonl, checkpoints, eval/summary.json, eval/overlays/). A run ends with one short
human summary and, on its last line, the main figures as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jaxsurg import cli
from jaxsurg.cli import METHODS
from jaxsurg.config import flatten_keys
from jaxsurg.train import mesh as mesh_lib
from jaxsurg.train import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A packaged config by name (unet11, laparoflow, dual_motion, agsd, pat) or a path to a config file, [:arg].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation.")
_SHOW = flags.DEFINE_bool("show", False, "Print the config (after overrides) with a description of every key, and exit.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "A workdir made with another config: delete its outputs and run afresh.")
_RESUME = flags.DEFINE_bool(
    "resume", False, "A workdir made with another config: keep the stages the change leaves valid, redo the rest."
)
_SPEC: list[str] = []  # the --config value as given (for --show's descriptions)


def _config_spec(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def check_override_keys(argv: list[str]) -> None:
    """Refuses ``--config.<key>`` flags whose key the config does not have.

    ml_collections itself fails on those with a bare ``AttributeError``; this names the key
    and lists the known ones.

    Raises:
      SystemExit: with the message, for an unknown key.
    """
    spec = _config_spec(argv)
    keys = [m.group(1) for a in argv if (m := re.match(r"--config\.([\w.]+)=", a))]
    if spec is None or not keys:
        return
    known = set(flatten_keys(cli.load_config(spec)))
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")


def _resolve_config_flag(argv: list[str]) -> list[str]:
    """``--config=NAME[:arg]`` with NAME a packaged config becomes the file's path."""
    out = []
    for a in argv:
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
            path, sep, arg = spec.partition(":")
            try:
                a = f"--config={cli.config_path(path)}{sep}{arg}"
            except FileNotFoundError as e:
                raise SystemExit(str(e)) from None
            _SPEC[:] = [spec]
        out.append(a)
    return out


def _parse_flags(argv: list[str]) -> list[str]:
    if any(a in ("--help", "-h", "-?") for a in argv[1:]):
        print(f"{__doc__}\n{cli.help_text()}\n\nAll flags: --helpfull")
        sys.exit(0)
    argv = _resolve_config_flag(argv)
    check_override_keys(argv)
    rest = flags.FLAGS(argv)
    if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; -v 0 shows it
    return rest


def human_summary(summary: dict[str, Any], config: Any, workdir: str) -> str:
    """The few lines a person reads at the end of a run: the main figures and where the
    files are; a tiny variant says it is a smoke test."""
    lines = [f"jaxsurg: {summary.get('method', config.method)} on {config.dataset} ({summary.get('task', config.task)}), "
             f"{summary.get('num_frames', '?')} test frames"]
    if "dice_mean" in summary:
        lines.append(f"  Dice {summary['dice_mean']:.3f} ± {summary['dice_std']:.3f}   IoU {summary['iou_mean']:.3f} ± {summary['iou_std']:.3f}"
                     "   (mean ± std over test frames)")
    per_class = {k: v.get("dice") for k, v in summary.get("per_class", {}).items() if k != "background"}
    if len(per_class) > 1:
        lines.append("  Dice per class: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} (absent)" for k, v in per_class.items()))
    overall = summary.get("keypoints", {}).get("overall")
    if overall:
        # A ratio with a zero denominator is None (no key point detected: precision undefined).
        ratio = {k: "undefined" if overall.get(k) is None else f"{overall[k]:.3f}" for k in ("f1", "recall", "precision")}
        lines.append(f"  key points: F1 {ratio['f1']} (recall {ratio['recall']}, precision {ratio['precision']})")
    eval_dir = os.path.join(workdir, "eval")
    pictures = sorted(
        f"{d}/{f}" for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d))
        for f in os.listdir(os.path.join(workdir, d)) if f.endswith(".png")
    ) + sorted(f for f in os.listdir(workdir) if f.endswith(".png"))
    lines += list(summary.get("table", ()))  # a study's table of figures
    if "summary_file" in summary:  # a study: its own record instead of eval/summary.json
        lines.append(f"  figures: {summary['summary_file']}")
    else:
        lines.append(f"  figures: {os.path.join(eval_dir, 'summary.json')} (per frame: eval/per_frame.jsonl)")
    overlays = [d for d in ("overlays", "keypoint_overlays") if os.path.isdir(os.path.join(eval_dir, d))]
    shown = [f"eval/{d}/ ({len(os.listdir(os.path.join(eval_dir, d)))})" for d in overlays] + pictures
    if shown:
        lines.append(f"  pictures in {workdir}: " + ", ".join(shown))
    if config.variant == "tiny":
        lines.append("  variant=tiny: a smoke test of the code path, not a result")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (--help lists the configs)")
    config = _CONFIG.value
    if _SHOW.value:
        print(cli.show(_SPEC[0], config))
        print("# resize None = the dataset's default; epochs > 0 are turned into total_steps once the data is read")
        return
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required (or --show to print the config)")
    if _OVERWRITE.value and _RESUME.value:
        raise app.UsageError("--overwrite and --resume exclude each other")
    if config.method not in METHODS:
        raise app.UsageError(f"config.method={config.method!r} is unknown; known methods: {sorted(METHODS)}")
    policy = "overwrite" if _OVERWRITE.value else "resume" if _RESUME.value else "refuse"
    mesh_lib.initialize_distributed()
    try:
        summary = importlib.import_module(METHODS[config.method]).run(config, _WORKDIR.value, policy=policy)
    except (workdir_lib.WorkdirConflict, NotADirectoryError, PermissionError) as e:
        raise SystemExit(f"jaxsurg: {e}") from None
    logging.info("summary: %s", json.dumps(summary))
    print(human_summary(summary, config, _WORKDIR.value))
    keys = ("method", "dataset", "task", "num_frames", "iou_mean", "iou_std", "dice_mean", "dice_std")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))


def run() -> None:
    """Console entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
