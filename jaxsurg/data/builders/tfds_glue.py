"""How the jaxsurg builders run TFDS: building without TensorFlow installed
(``tf_free_spilling``) and without TFDS's noise in the logs (``quiet_tfds``). Both are
entered by ``common.FrameSequenceBuilder.download_and_prepare``; ``builders.prepare`` wraps
its probing of existing builds in ``quiet_tfds`` too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import types
from typing import Iterator

import tensorflow_datasets as tfds

__all__ = ["quiet_tfds", "tf_free_spilling"]


# ----------------------------------------------------------------------------- TF-free builds


class _NeverRaised(Exception):
    """Stands for ``tf.errors.ResourceExhaustedError``, which plain files never raise."""


def _open_bucket(path: str, mode: str = "r"):
    """``open`` for TFDS's bucket files, raising the open-files limit once if it is hit."""
    try:
        return open(path, mode)
    except OSError as e:
        if e.errno != 24:  # EMFILE: too many open files (TFDS keeps 1000 buckets open)
            raise
        from tensorflow_datasets.core import shuffle

        shuffle._increase_open_files_limit()  # pylint: disable=protected-access
        return open(path, mode)


_PLAIN_FILE_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=_open_bucket, exists=os.path.exists, remove=os.remove)),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
)


@contextlib.contextmanager
def tf_free_spilling() -> Iterator[None]:
    """Lets TFDS spill examples to disk (builds > 1 GB) when TensorFlow is not installed.

    TFDS's shuffler (``tensorflow_datasets.core.shuffle``) writes its temporary buckets with
    ``tf.io.gfile``; without TensorFlow that raises ModuleNotFoundError. Inside this
    context its ``tf`` name points at plain local files instead (local ``data_dir`` only).
    Does nothing when TensorFlow is importable.
    """
    if importlib.util.find_spec("tensorflow") is not None:
        yield
        return
    from tensorflow_datasets.core import shuffle

    saved = shuffle.tf
    shuffle.tf = _PLAIN_FILE_TF
    try:
        yield
    finally:
        shuffle.tf = saved


# ----------------------------------------------------------------------------- quiet TFDS

# TFDS's warnings (absl logger) about every variant folder it probes that is not built
# yet, and about every config ``prepare`` names itself (overrides, manual-dir digests).
_TFDS_NOISE = ("Variant folder %s has no %s", "Using custom data configuration: %s")
_quiet_depth = 0  # nesting of ``quiet_tfds``: only the outermost switches TFDS's bars off and on


class _DropTfdsNoise(logging.Filter):
    """Drops TFDS's "Variant folder ... has no dataset_info.json" and "Using custom data
    configuration" warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _TFDS_NOISE


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """Inside: TFDS's warnings that a not-yet-built variant folder "has no
    dataset_info.json" / "features.json" and that a config is a "custom data
    configuration" are dropped (other log records pass); when standard error is no
    terminal (a log file, CI), TFDS's own progress bars are off, since their carriage
    returns and cursor moves would be left in the file (jaxsurg's bars print plain lines)."""
    global _quiet_depth
    outermost = _quiet_depth == 0  # ``prepare`` wraps the builder's own quiet build
    _quiet_depth += 1
    noise = _DropTfdsNoise()
    logger = logging.getLogger("absl")
    logger.addFilter(noise)
    bars_off = outermost and not sys.stderr.isatty()
    if bars_off:
        tfds.display_progress_bar(False)
    try:
        yield
    finally:
        _quiet_depth -= 1
        logger.removeFilter(noise)
        if bars_off:
            tfds.display_progress_bar(True)
