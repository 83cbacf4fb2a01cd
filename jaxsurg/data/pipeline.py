"""The grain input pipeline: TFDS ArrayRecord source → per-process shard → seeded shuffle
and repeat → crops, flips, photometric jitter → batches → global ``jax.Array`` s.

Batch ``s`` of a run is a pure function of the config and ``s`` (grain ``MapDataset``
indexing), so a resumed run sees exactly the batches an uninterrupted one would.

A training batch is a dict, leading axis the global batch B (and T for clips,
``config.clip_length`` > 1):

- ``image``: uint8 (B, [T,] H, W, 3) RGB — models convert with ``images_to_float``;
- ``mask``: uint8 (B, [T,] H, W) class indices of ``config.task``, 255 = ignore;
- ``flow``: float32 (B, [T,] H, W, 2) and ``flow_valid``: bool — when asked for in
  ``config.batch_keys``;
- ``has_label``: bool (B, [T]).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Iterator, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from jaxsurg.data import datasets, transforms
from jaxsurg.train import mesh as mesh_lib

FRAME_KEYS = ("image", "mask", "has_label")


def images_to_float(image: jax.Array) -> jax.Array:
    """uint8 images (..., 3) → float32 in [0, 1]."""
    return image.astype(jnp.float32) / 255.0


@dataclasses.dataclass
class LoadedDataset:
    """A built dataset with its train/test record indices.

    Attributes:
      train_source, test_source: TFDS data sources (random access, decoded records).
      train_rows, test_rows: record indices into them used for training / evaluation
        (training rows are the labelled subset for ``config.label_interval``; test rows are
        the labelled test frames).
      train_all_rows: every record of the training part, labelled or not (self-supervised
        stages read these).
      class_names: classes of ``config.task``, index 0 = background.
      split_info: how the split was made, for summary.json.
      build: the built dataset read, ``<builder>/<config name>/<version>`` (a manual-dir
        build's config name holds a digest of its files' content).
    """

    train_source: Sequence[dict]
    test_source: Sequence[dict]
    train_index: datasets.RecordIndex
    train_rows: np.ndarray
    test_rows: np.ndarray
    class_names: tuple[str, ...]
    split_info: dict
    train_all_rows: np.ndarray | None = None
    build: str = ""


def builder_config_name(config: Any, dataset: str | None = None) -> str | None:
    """The TFDS builder config read for ``dataset`` (default ``config.dataset``): the
    synthetic data follows the variant (``tiny`` for ``variant=tiny``, else ``default``);
    a LabelMe build carries ``config.label_map``; None = the builder's default."""
    dataset = dataset or config.dataset
    if dataset == "synthetic":
        return "tiny" if config.variant == "tiny" else "default"
    if dataset == "labelme" and config.get("label_map"):
        return f"default:label_map={config.label_map}"
    return None


def _prepare(config: Any, dataset: str, data_dir: str, build: str = ""):
    """The built ``dataset`` (built on process 0 first when there are several processes)."""
    from jaxsurg.data import builders  # heavy import (TFDS), deferred

    spec = datasets.get_spec(dataset)

    def prepare():
        return builders.prepare(
            spec.builder, data_dir=config.tfds_dir or datasets.default_tfds_dir(), manual_dir=data_dir or None,
            config=build or builder_config_name(config, dataset),
        )

    if jax.process_count() > 1:  # process 0 builds; the others wait, then find it built
        from jax.experimental import multihost_utils

        builder = prepare() if jax.process_index() == 0 else None
        multihost_utils.sync_global_devices(f"jaxsurg: dataset {dataset} built")
        return builder if builder is not None else prepare()
    return prepare()


def _data_source(builder, split: str, dataset: str, data_dir: str, why: str) -> Sequence[dict]:
    """``builder``'s split ``split``.

    Raises:
      ValueError: the build has no such split (the message says ``why`` it is needed).
    """
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset {dataset!r} (data_dir={data_dir!r}) has no {split!r} split, which {why}; its splits: "
            f"{sorted(builder.info.splits)}"
        )
    return builder.as_data_source(split=split)


def other_test_rows(config: Any, class_names: tuple[str, ...]) -> tuple[Sequence[dict], datasets.RecordIndex, np.ndarray, dict, str]:
    """Cross-dataset evaluation: the labelled frames of ``config.test_dataset``.

    Every record of its ``test`` split where it has its own (``builder`` split mode), else
    of its one stored split (a LabelMe folder, a CholecSeg8k video: the whole video is
    unseen).

    Returns:
      (source, its index, labelled record indices, description, build name).

    Raises:
      ValueError: an unknown test dataset, one without ``config.task`` or whose classes
        of the task differ from ``class_names`` (both lists given), a missing
        ``config.test_data_dir``, or no labelled frame.
    """
    name, data_dir = config.test_dataset, config.test_data_dir
    spec = datasets.get_spec(name, "config.test_dataset")
    theirs = datasets.task_classes(name, config.task)
    if tuple(theirs) != tuple(class_names):
        raise ValueError(
            f"config.test_dataset={name!r}: its task {config.task!r} has classes {list(theirs)}, but "
            f"{config.dataset!r}'s has {list(class_names)}; cross-dataset evaluation needs one label space"
        )
    if spec.needs_manual_dir and not data_dir:
        raise ValueError(f"config.test_dataset={name!r} needs --config.test_data_dir=<folder with its raw files>")
    builder = _prepare(config, name, data_dir)
    split = "test" if spec.split_mode == "builder" else "train"
    source = _data_source(builder, split, name, data_dir, "cross-dataset evaluation reads")
    index = datasets.RecordIndex.read(source)
    rows = np.flatnonzero(index.has_label)
    if not len(rows):
        raise ValueError(f"config.test_dataset={name!r} (test_data_dir={data_dir!r}): no labelled frame; labels are read from {spec.label_files}")
    info = {"mode": "other dataset", "test_dataset": name, "test_data_dir": data_dir, "split": split, "videos": sorted(set(index.video_name))}
    return source, index, rows, info, f"{builder.name}/{builder.builder_config.name}/{builder.version}"


def load(config: Any, build: str = "") -> LoadedDataset:
    """Builds ``config.dataset`` if needed and selects its train and test frames.

    ``build``: the TFDS builder config to read ("" = ``builder_config_name(config)``, the
    dataset's default), e.g. the synthetic "related" build of other scenes. With
    ``config.test_dataset`` set, the test frames come from that dataset instead
    (``other_test_rows``).

    Raises:
      ValueError: unknown dataset, task or fold, missing ``config.data_dir`` where needed,
        no labelled frame in the training or the test part (the message names the files
        labels are read from), a missing split (``fold=-1`` without the released test set).
      FileNotFoundError: from the builders, for a missing or empty manual dir.
    """
    spec = datasets.get_spec(config.dataset)
    class_names = datasets.task_classes(config.dataset, config.task) if config.task else ()  # "" = key points only
    if spec.needs_manual_dir and not config.data_dir:
        raise ValueError(f"config.dataset={config.dataset!r} needs --config.data_dir=<folder with the raw files>")
    if config.get("test_dataset"):  # its label space before any build
        test_spec = datasets.get_spec(config.test_dataset, "config.test_dataset")
        datasets.task_classes(config.test_dataset, config.task)
        if test_spec.needs_manual_dir and not config.test_data_dir:
            raise ValueError(f"config.test_dataset={config.test_dataset!r} needs --config.test_data_dir=<folder with its raw files>")
    builder = _prepare(config, config.dataset, config.data_dir, build)
    fold = config.get("fold", 0)
    train_source = builder.as_data_source(split="train")
    index = datasets.RecordIndex.read(train_source)
    if spec.split_mode == "temporal":
        test_source, test_index = train_source, index
        train_rows, test_rows, split_info = datasets.temporal_split(index, config.train_fraction)
        parts = {"training": f"the first {config.train_fraction:.3g} of each video", "test": f"the last {1 - config.train_fraction:.3g} of each video"}
    elif spec.split_mode == "folds" and fold >= 0:
        test_source, test_index = train_source, index
        folds = importlib.import_module(spec.module).FOLDS
        train_rows, test_rows, split_info = datasets.fold_split(index, folds, fold)
        parts = {"training": f"the videos outside fold {fold}", "test": f"the held-out videos {list(folds[fold])} of fold {fold}"}
    else:
        why = "config.fold=-1 (the released test set) reads" if spec.split_mode == "folds" else "evaluation reads"
        test_source = _data_source(builder, "test", config.dataset, config.data_dir, why)
        test_index = datasets.RecordIndex.read(test_source)
        train_rows, test_rows = np.arange(len(train_source)), np.arange(len(test_source))
        split_info = {"mode": "clips", "train": "train split", "test": "test split"}
        parts = {"training": "the train split", "test": "the test split"}
    train_all_rows = train_rows
    train_rows = datasets.labelled_subset(index, train_rows, config.label_interval)
    test_rows = test_rows[test_index.has_label[test_rows]]
    if config.get("test_dataset"):
        test_source, test_index, test_rows, split_info["test"], test_build = other_test_rows(config, class_names)
        split_info["test_build"] = test_build
    for part, rows in (("training", train_rows), ("test", test_rows)):
        if not len(rows):
            every = f" with label_interval={config.label_interval}" if part == "training" else ""
            raise ValueError(
                f"config.dataset={config.dataset!r} (data_dir={config.data_dir!r}): no labelled {part} frame in "
                f"{parts[part]}{every}; labels are read from {spec.label_files}"
            )
    split_info.update(train_labelled_frames=int(len(train_rows)), test_labelled_frames=int(len(test_rows)))
    build = f"{builder.name}/{builder.builder_config.name}/{builder.version}"
    return LoadedDataset(train_source, test_source, index, train_rows, test_rows, class_names, split_info, train_all_rows, build)


class ConcatFrames(Sequence):
    """Several random-access example sequences one after the other: item i is item
    i − offset of the part holding it (parts of any length, empty ones allowed).

    Raises (``[i]``):
      IndexError: i outside [0, len)."""

    def __init__(self, parts: Sequence[Sequence[dict[str, np.ndarray]]]):
        self._parts = list(parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"{type(self).__name__} index {i} out of range [0, {len(self)})")
        p = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self._parts[p][int(i - self._offsets[p])]


class Frames(Sequence):
    """Random-access examples (leading time axis T) made from selected records.

    ``Frames(source, rows, task)[i]`` is record ``rows[i]`` as an example of
    ``transforms`` (T = 1); with ``clip_length`` = T > 1, ``rows`` are clip starts and the
    example stacks the T consecutive records of the same video (see ``clip_starts``).
    """

    def __init__(self, source: Sequence[dict], rows: np.ndarray, task: str, keys: Sequence[str] = FRAME_KEYS, clip_length: int = 1):
        self._source, self._rows, self._task = source, np.asarray(rows), task
        self._keys, self._length = tuple(keys), clip_length

    def __len__(self) -> int:
        return len(self._rows)

    def _frame(self, row: int) -> dict[str, np.ndarray]:
        record = self._source[int(row)]
        out = {}
        for k in self._keys:
            if k == "mask":
                out[k] = np.asarray(record[f"mask_{self._task}"])[..., 0]
            else:
                out[k] = np.asarray(record[k])
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        start = int(self._rows[i])
        frames = [self._frame(start + t) for t in range(self._length)]
        return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def clip_starts(index: datasets.RecordIndex, rows: np.ndarray, length: int) -> np.ndarray:
    """Rows r of ``rows`` such that r, r+1, …, r+length−1 are consecutive frames of one video.

    Records are stored in (video, frame) order, so consecutive rows of one video are
    consecutive frames.
    """
    rows = np.asarray(rows)
    ok = []
    for r in rows:
        end = r + length - 1
        if end < len(index.video_id) and np.all(index.video_id[r : end + 1] == index.video_id[r]):
            ok.append(r)
    return np.asarray(ok, np.int64)


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
    """Training augmentation of one example: resize, random crop, flips, jitter.

    The crop is skipped when the (resized) frame already has ``crop`` size. Single frames
    (T = 1) lose their time axis at the end when ``squeeze_time``.
    """

    resize: tuple[int, int] | None
    crop: tuple[int, int]
    hflip: bool = True
    vflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue_degrees: float = 0.0
    squeeze_time: bool = True

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ex = transforms.resize(element, self.resize) if self.resize else element
        if ex["image"].shape[1:3] != tuple(self.crop):
            ex = transforms.random_crop(ex, self.crop, rng)
        ex = transforms.random_flip(ex, rng, horizontal=self.hflip, vertical=self.vflip)
        ex["image"] = transforms.photometric_jitter(
            ex["image"], rng, brightness=self.brightness, contrast=self.contrast,
            saturation=self.saturation, hue_degrees=self.hue_degrees,
        )
        if self.squeeze_time:
            ex = {k: v[0] for k, v in ex.items()}
        return ex


def augment_from_config(config: Any) -> Augment:
    """The ``Augment`` described by ``config.resize``, ``config.image_size`` and ``config.augment``."""
    a = config.augment
    return Augment(
        resize=tuple(config.resize) if config.resize else None,
        crop=tuple(config.image_size),
        hflip=a.hflip, vflip=a.vflip, brightness=a.brightness, contrast=a.contrast,
        saturation=a.saturation, hue_degrees=a.hue_degrees,
        squeeze_time=config.clip_length == 1,
    )


def local_batches(
    examples: Sequence[dict[str, np.ndarray]],
    transform: grain.transforms.RandomMap,
    *,
    seed: int,
    per_process_batch: int,
    start_step: int = 0,
    num_threads: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches for steps ``start_step, start_step + 1, …`` (numpy).

    One stream for every process: the examples shuffled with ``seed`` (a new permutation
    every epoch), repeated forever, augmented with a seed per position in the stream, and cut
    into blocks of ``per_process_batch``; global batch s is blocks s·P … s·P + P − 1 of P
    processes, and this process reads only block s·P + ``process_index``. So the global
    batches (and a run's result) do not depend on how many processes share them: two
    processes see exactly the batches one process would, and each decodes only its share.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(examples)
    ds = ds.shuffle(seed=seed).repeat(None).random_map(transform, seed=seed)
    ds = ds.batch(per_process_batch, drop_remainder=True)[pi::pc][start_step:]
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * num_threads, 2))
    return iter(ds.to_iter_dataset(options))


def global_batches(
    examples: Sequence[dict[str, np.ndarray]],
    transform: grain.transforms.RandomMap,
    *,
    seed: int,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    start_step: int = 0,
    num_threads: int = 2,
) -> Iterator[dict[str, jax.Array]]:
    """Global batches of ``batch_size`` examples sharded over the mesh's ``data`` axis, for
    steps ``start_step, start_step + 1, …`` (``local_batches`` on each process, assembled
    with ``mesh.global_batch``)."""
    local = local_batches(
        examples, transform, seed=seed, start_step=start_step, num_threads=num_threads,
        per_process_batch=mesh_lib.per_process_batch_size(batch_size, mesh),
    )
    for batch in local:
        yield mesh_lib.global_batch(batch, mesh)


def train_examples(config: Any, data: LoadedDataset) -> Frames:
    """The labelled training frames (clips of ``config.clip_length`` where > 1) as examples
    with ``config.batch_keys``, for ``jaxsurg.train.stage.train`` (which batches them)."""
    rows = data.train_rows
    if config.clip_length > 1:
        rows = clip_starts(data.train_index, rows, config.clip_length)
    return Frames(data.train_source, rows, config.task, tuple(config.batch_keys), config.clip_length)


def test_frames(config: Any, data: LoadedDataset) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Evaluation frames in time order: (record index, example) with image uint8 (H, W, 3)
    and mask uint8 (H, W), resized to ``config.resize`` when set."""
    frames = Frames(data.test_source, data.test_rows, config.task, ("image", "mask"))
    for i in range(len(frames)):
        ex = frames[i]
        if config.resize:
            ex = transforms.resize(ex, tuple(config.resize))
        yield int(data.test_rows[i]), {k: v[0] for k, v in ex.items()}
