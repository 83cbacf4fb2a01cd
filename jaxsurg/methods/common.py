"""What every method's stages share: resolving dataset-dependent config values, writing
``config.json``, and skipping a stage whose outputs are complete."""

from __future__ import annotations

import math
import os

import jax
import ml_collections

from jaxsurg.data import datasets
from jaxsurg.train.writers import write_json


def resolve_config(config: ml_collections.ConfigDict, num_train_frames: int) -> ml_collections.ConfigDict:
    """Fills the values that depend on the data: ``resize`` (the dataset's default when
    unset), and ``total_steps`` / ``lr_decay_every`` from ``epochs`` / ``lr_decay_every_epochs``
    (one epoch = ceil(``num_train_frames`` / ``batch_size``) steps). Returns a copy."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.resize is None and datasets.get_spec(c.dataset).default_resize is not None:
        with c.ignore_type():
            c.resize = datasets.get_spec(c.dataset).default_resize
    steps_per_epoch = max(1, math.ceil(num_train_frames / c.batch_size))
    if c.epochs > 0:
        c.total_steps = c.epochs * steps_per_epoch
    if c.lr_decay_every_epochs > 0:
        c.lr_decay_every = c.lr_decay_every_epochs * steps_per_epoch
    return c


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to ``WORKDIR/config.json`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict(), default=list)
