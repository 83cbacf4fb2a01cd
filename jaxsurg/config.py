"""Config helpers shared by ``configs/<method>.py``: the common keys, big_vision-style
``arg`` strings (``variant=tiny,dataset=cholecseg8k``) and strict key checking.

Every config has at least the keys of ``base_config``. Every stage that trains has a block
with the same optimisation fields (``STAGE_FIELDS``, made by ``stage_block``); the method's
main stage (U-Net11 ``train``, Laparoflow-SSL ``finetune``, Dual MF ``segment``) keeps its
block at the top level of the config, so ``--config.total_steps`` is that stage's. Steps or
epochs are resolved to steps once, by ``resolve_stage``.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any, Callable

import ml_collections

# The optimisation fields of every training stage's block, with their defaults.
STAGE_FIELDS = dict(
    total_steps=1000,  # optimiser steps (replaced when epochs > 0)
    epochs=0,  # > 0: total_steps = epochs × ceil(examples per epoch / batch_size)
    batch_size=4,  # global batch
    optimizer="adam",  # adam (L2 weight decay added to the gradient, as PyTorch) | adamw (decoupled)
    learning_rate=1e-4,  # peak learning rate of the optimiser
    lr_schedule="step",  # step (× lr_decay_factor every lr_decay_every steps; constant by default) | warmup_cosine
    warmup_steps=0,  # warmup_cosine: linear warm-up steps from 0
    weight_decay=0.0,  # L2 penalty (adam) or decoupled decay (adamw)
    lr_decay_factor=1.0,  # step schedule: learning rate × this every lr_decay_every steps
    lr_decay_every=0,  # steps; 0 = constant learning rate
    lr_decay_every_epochs=0,  # > 0 replaces lr_decay_every, in epochs
    log_every=10,  # steps between metric records
    checkpoint_every=200,  # steps between checkpoints (and one at the end)
)


def stage_block(extra: dict[str, Any] | None = None, **fields: Any) -> ml_collections.ConfigDict:
    """A stage's config block: ``STAGE_FIELDS`` with ``fields`` set, plus the stage's own
    ``extra`` keys (model sizes, loss weights, ...).

    Raises:
      KeyError: an optimisation field that ``STAGE_FIELDS`` does not have (the message lists
        them), or an ``extra`` key that shadows one.
    """
    unknown = sorted(set(fields) - set(STAGE_FIELDS))
    if unknown:
        raise KeyError(f"unknown stage field(s) {unknown}; the fields of every stage block: {', '.join(STAGE_FIELDS)}")
    clash = sorted(set(extra or {}) & set(STAGE_FIELDS))
    if clash:
        raise KeyError(f"stage extra key(s) {clash} shadow stage fields; set them as fields")
    return ml_collections.ConfigDict({**STAGE_FIELDS, **fields, **(extra or {})})


def resolve_stage(block: ml_collections.ConfigDict, examples_per_epoch: int) -> None:
    """Resolves ``epochs`` and ``lr_decay_every_epochs`` of a stage block (or of the top level,
    the main stage's) to steps, in place: one epoch = ceil(``examples_per_epoch`` /
    ``batch_size``) steps.

    Raises:
      ValueError: a non-positive batch size, negative epochs, or ``examples_per_epoch`` < 1
        where epochs are asked for.
    """
    if block.batch_size < 1 or block.epochs < 0 or block.lr_decay_every_epochs < 0:
        raise ValueError(
            f"batch_size={block.batch_size} must be >= 1 and epochs={block.epochs}, "
            f"lr_decay_every_epochs={block.lr_decay_every_epochs} >= 0"
        )
    if (block.epochs > 0 or block.lr_decay_every_epochs > 0) and examples_per_epoch < 1:
        raise ValueError(f"epochs are asked for but an epoch has {examples_per_epoch} examples")
    steps_per_epoch = max(1, math.ceil(examples_per_epoch / block.batch_size))
    if block.epochs > 0:
        block.total_steps = block.epochs * steps_per_epoch
    if block.lr_decay_every_epochs > 0:
        block.lr_decay_every = block.lr_decay_every_epochs * steps_per_epoch


def base_config() -> ml_collections.ConfigDict:
    """The keys every method's config has, with defaults for the embedded synthetic data."""
    c = ml_collections.ConfigDict()
    c.method = ""  # the method run: unet11 | laparoflow | dual_motion | agsd | pat
    c.variant = "default"  # tiny (CI smoke test) | default (this 2-core CPU) | paper
    c.seed = 0  # seeds initialisation, batches, augmentation and labelled-frame choice
    # Data.
    c.dataset = "synthetic"  # synthetic | cholecseg8k | endovis17 | endovis15_keypoints | m2caiseg | labelme | surgical_video
    c.data_dir = ""  # raw files of datasets that need them (each builder's official layout, at any depth)
    c.label_map = ""  # dataset=labelme: LabelMe label → class, "grasper:instrument hook:instrument"; "" = the builder's default
    c.tfds_dir = ""  # built ArrayRecord datasets; "" = $JAXSURG_TFDS_DIR or ~/.cache/jaxsurg/tensorflow_datasets
    c.task = "binary"  # binary | parts | type (synthetic) | laparoflow4 | full13 (cholecseg8k)
    c.resize = ml_collections.config_dict.placeholder(tuple)  # (H, W) frames are resized to; None = dataset default
    c.image_size = (128, 160)  # (H, W) training crops, multiples of 32 for U-Net11
    c.label_interval = 1  # 1 = every training frame labelled; h = every h-th
    c.train_fraction = 2 / 3  # temporal split of CholecSeg8k and LabelMe videos
    c.fold = 0  # EndoVis 2017 4-fold cross-validation: held-out videos of fold 0..3; -1 = the released test set
    # Cross-dataset evaluation: train on config.dataset, test on every labelled frame of another
    # dataset with the same task (its test split where it has one); evaluation only, stages are kept.
    c.test_dataset = ""  # "" = test on config.dataset's own test part
    c.test_data_dir = ""  # raw files of test_dataset
    c.clip_length = 1  # frames per training example
    c.batch_keys = ("image", "mask", "has_label")  # record fields a training batch holds
    c.data_threads = 2  # grain worker threads reading and augmenting examples
    c.augment = ml_collections.ConfigDict(dict(
        hflip=True,  # random horizontal flips of training crops
        vflip=False,  # random vertical flips
        brightness=0.0,  # colour jitter: additive offset from U(-b, b), in [0, 1] intensity units
        contrast=0.0,  # contrast factor from U(1 - c, 1 + c) about the mean grey
        saturation=0.0,  # HSV saturation factor from U(1 - s, 1 + s)
        hue_degrees=0.0,  # hue shift from U(-h, h) degrees
    ))
    c.stages_from = ""  # WORKDIR of another run: its finished stages made with the same settings are reused
    # The main stage's block (STAGE_FIELDS): U-Net11 train, Laparoflow-SSL finetune, Dual MF segment.
    for k, v in STAGE_FIELDS.items():
        c[k] = v
    # Bookkeeping.
    c.keep_checkpoints = 2  # latest checkpoints kept per stage
    c.eval_batch_size = 4  # test frames per evaluation batch (does not change a score)
    c.num_overlays = 8  # test frames drawn into eval/overlays
    return c


def _coerce(key: str, value: str, current: Any) -> Any:
    """Parses ``value`` as a Python literal of the type of ``current`` (strings stay strings)."""
    if isinstance(current, str):
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        if current is None:
            return value
        raise ValueError(f"config key {key!r}: cannot parse {value!r} as a {type(current).__name__}") from None
    if isinstance(current, bool) and not isinstance(parsed, bool):
        raise ValueError(f"config key {key!r}: expected True or False, got {value!r}")
    if isinstance(current, float) and isinstance(parsed, int):
        parsed = float(parsed)
    return parsed


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"variant=tiny,dataset=cholecseg8k"`` → ``{"variant": "tiny", "dataset": "cholecseg8k"}``.

    Commas inside parentheses belong to the value: ``resize=(256,448)``.

    Raises:
      ValueError: for an item without ``=``.
    """
    out = {}
    for item in filter(None, re.split(r",(?![^()]*\))", arg or "")):
        if "=" not in item:
            raise ValueError(f"config arg item {item!r} is not key=value (in {arg!r})")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Sets ``key=value`` pairs (dotted keys reach nested dicts), refusing unknown keys.

    Raises:
      KeyError: for an unknown key; the message lists the known ones.
      ValueError: for a value that does not parse as the key's type.
    """
    known = sorted(flatten_keys(config))
    for key, value in overrides.items():
        if key not in known:
            raise KeyError(f"unknown config key {key!r}; known keys: {', '.join(known)}")
        parent = config
        *path, leaf = key.split(".")
        for p in path:
            parent = parent[p]
        with parent.ignore_type():
            parent[leaf] = _coerce(key, value, parent[leaf])
    return config


def flatten_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted keys of ``config`` (leaves only)."""
    keys = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flatten_keys(v, f"{prefix}{k}."))
        else:
            keys.append(f"{prefix}{k}")
    return keys


def make_config(
    arg: str | None,
    base: ml_collections.ConfigDict,
    variants: dict[str, Callable[[ml_collections.ConfigDict], None]],
) -> ml_collections.ConfigDict:
    """A method's config: ``base`` with the variant named in ``arg`` applied first (its
    preset function edits the config in place), then the other ``arg`` items.

    Raises:
      KeyError: unknown key or variant (the message lists the known ones).
    """
    overrides = parse_arg(arg)
    variant = overrides.pop("variant", base.variant)
    if variant not in variants:
        raise KeyError(f"unknown variant {variant!r}; known variants: {sorted(variants)}")
    base.variant = variant
    variants[variant](base)
    return apply_overrides(base, overrides)


def check_size(config: ml_collections.ConfigDict, key: str, multiple: int = 1, *, what: str = "") -> tuple[int, int]:
    """Checks that the dotted ``key`` of ``config`` is an (H, W) pair of positive integers,
    each a multiple of ``multiple`` (pixels), and returns it as a tuple.

    Args:
      what: why the multiple is needed (e.g. "U-Net11 halves the frame 5 times"), for the message.

    Raises:
      ValueError: naming ``config.<key>``, its value and what was expected.
    """
    node: Any = config
    for part in key.split("."):
        node = node[part]
    reason = f" ({what})" if what else ""
    if not isinstance(node, (tuple, list)) or len(node) != 2 or not all(isinstance(v, int) and v > 0 for v in node):
        raise ValueError(f"config.{key}={node!r}: expected (H, W), two positive integers in pixels, e.g. --config.{key}='(128, 160)'")
    if node[0] % multiple or node[1] % multiple:
        raise ValueError(f"config.{key}={tuple(node)}: H and W must be multiples of {multiple}{reason}")
    return int(node[0]), int(node[1])
