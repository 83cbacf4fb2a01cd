"""jaxsurg's TFDS builders, built and read without TensorFlow (ArrayRecord files).

- ``synthetic_surgery``: rendered clips, the embedded default dataset (no input files);
- ``cholecseg8k``: CholecSeg8k from a manual dir (official layout at any depth);
- ``surgical_video``: unlabelled videos or frame folders from a manual dir;
- ``endovis17``: EndoVis 2017 Robotic Instrument Segmentation (training and test layouts);
- ``endovis15_keypoints``: EndoVis 2015 tracking frames with Du et al.'s key points;
- ``m2caiseg``: m2caiSeg (19 classes and Laparoflow-SSL's 4);
- ``labelme``: a user's own frames annotated with LabelMe polygons.

All share one feature schema (see ``jaxsurg.data.builders.common``). Use ``prepare`` to
get a built dataset::

    builder = prepare("cholecseg8k", data_dir="~/tfds", manual_dir="../shared/data/cholecseg8k_clip")
    train = builder.as_data_source()["train"]   # random access, decoded numpy records

Modules are imported on first use (TFDS is a heavy import).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

# builder name → (module, class)
BUILDERS: dict[str, tuple[str, str]] = {
    "synthetic_surgery": ("jaxsurg.data.builders.synthetic_surgery", "SyntheticSurgery"),
    "cholecseg8k": ("jaxsurg.data.builders.cholecseg8k", "Cholecseg8k"),
    "surgical_video": ("jaxsurg.data.builders.surgical_video", "SurgicalVideo"),
    "endovis17": ("jaxsurg.data.builders.endovis17", "Endovis17"),
    "endovis15_keypoints": ("jaxsurg.data.builders.endovis15_keypoints", "Endovis15Keypoints"),
    "m2caiseg": ("jaxsurg.data.builders.m2caiseg", "M2caiseg"),
    "labelme": ("jaxsurg.data.builders.labelme", "Labelme"),
}


def builder_class(name: str) -> type:
    """The builder class of ``name``.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset builder {name!r}; known builders: {sorted(BUILDERS)}")
    module, cls = BUILDERS[name]
    return getattr(importlib.import_module(module), cls)


def prepare(
    name: str, *, data_dir: str, manual_dir: str | None = None, config: str | None = None
) -> "tfds.core.DatasetBuilder":
    """A built dataset: builds it on first use, reuses the files afterwards.

    Args:
      name: ``"synthetic_surgery"``, ``"cholecseg8k"`` or ``"surgical_video"``.
      data_dir: TFDS data dir; the ArrayRecord files go to
        ``data_dir/<name>/<config name>/<version>/``.
      manual_dir: the raw files of ``cholecseg8k`` / ``surgical_video`` (default:
        ``data_dir/downloads/manual/<name>``); ignored by ``synthetic_surgery``.
      config: builder config: a name (``"tiny"``), overrides of the default config
        (``"fps=10,max_side=480"``) or both (``"tiny:train_clips=4"``); None = default.

    For datasets read from a manual dir, the config name gets a digest of the dir's path
    and of the CONTENT of its input files (relative paths and BLAKE2b of the bytes), so
    another manual dir, or one whose files changed (relabelled masks of the same byte size
    included), is built anew instead of silently reusing an old build. Content hashes
    are cached in ``data_dir/<name>/.content_hashes.json`` per file with its size, mtime
    and ctime, so that a second run hashes only new or changed files.

    Prints one line on process 0: ``jaxsurg: dataset <name>/<config>: reused from <dir>``
    or ``jaxsurg: dataset <name>/<config>: building [from <manual dir>] into <dir>``
    (TFDS's own messages about the build are left out; its progress bars stay).

    Safe to call from several processes at once on one ``data_dir``: the check-and-build
    runs under an exclusive file lock ``data_dir/<name>/<config name>.lock``; a process
    that finds the lock held prints ``jaxsurg: dataset <name>/<config>: waiting for
    another process building it into <dir>``, waits, and then reuses that build.

    An interrupted build leaves nothing that looks complete (TFDS builds in an
    ``incomplete.*`` directory and renames it at the end); calling again rebuilds, and
    once that build succeeds the leftover ``incomplete.*`` directories of the config are
    removed.

    Returns:
      The builder; read it with ``builder.as_data_source()[split]``.

    Raises:
      ValueError: unknown name or config; bad input data (the message names the file).
      FileNotFoundError: a missing or empty manual dir (the message says where to put
        the files and in which layout).
      OSError: an input file that cannot be read, or a lock file that cannot be created
        (read-only ``data_dir`` without the built dataset).
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    from jaxsurg.data.builders import common, integrity, tfds_glue  # pylint: disable=g-import-not-at-top
    from jaxsurg.progress import say  # pylint: disable=g-import-not-at-top

    cls = builder_class(name)
    builder_config = common.resolve_config(cls, config)
    data_dir = os.path.expanduser(data_dir)
    download_config = tfds.download.DownloadConfig()
    source = ""
    if cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual", name))
        cache_path = os.path.join(data_dir, name, integrity.CONTENT_HASH_CACHE)
        digest = importlib.import_module(cls.__module__).source_fingerprint(manual_dir, cache_path)
        builder_config = common.replace_config(
            builder_config, name=f"{builder_config.name}-{digest}", description=f"{builder_config.description or ''} [from {os.path.abspath(manual_dir)}]"
        )
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        source = f" from {os.path.abspath(manual_dir)}"
    label = f"dataset {name}/{builder_config.name}"

    def make() -> tfds.core.DatasetBuilder:
        return cls(data_dir=data_dir, config=builder_config, file_format="array_record")

    with tfds_glue.quiet_tfds():
        builder = make()
        if builder.is_prepared():  # no lock needed to read a finished build (read-only data dirs too)
            say(f"{label}: reused from {builder.data_dir}")
            return builder
        lock = os.path.join(data_dir, name, f"{builder_config.name}.lock")

        def waiting() -> None:
            say(f"{label}: waiting for another process building it into {builder.data_dir} (lock {lock})")

        with integrity.build_lock(lock, on_wait=waiting):
            builder = make()  # anew: another process may have finished the build meanwhile
            if builder.is_prepared():
                say(f"{label}: reused from {builder.data_dir}")
                return builder
            say(f"{label}: building{source} into {builder.data_dir}")
            builder.download_and_prepare(download_config=download_config, file_format="array_record")
            integrity.remove_incomplete(os.path.dirname(os.fspath(builder.data_path)))
    return builder
