"""On-disk datasets of generated frame–label pairs (Dual Motion Flow's D_R and D_C).

Format (plain NumPy, no extra dependency): a dataset is a directory holding

- ``meta.json``: ``{"format": "jaxsurg-generated-v1", "num_records", "shards": [sizes],
  "image_shape": [H, W, 3], "sources": {...counts}, "info": {...}}``;
- ``shard-00000.npz`` …: per shard, the PNG bytes of the images and masks concatenated
  (``image_png`` / ``mask_png`` uint8 1-D with ``image_offsets`` / ``mask_offsets`` int64
  (n + 1,)) and the per-record fields ``video_id`` int32, ``position`` float64,
  ``source`` uint8 (index into ``SOURCES``), ``k`` int32.

Images are stored PNG-encoded (``cv2.imencode``, lossless, RGB written as BGR) to keep a
dataset small; masks as 8-bit grey PNGs (255 = ignore survives).

Atomicity: ``GeneratedWriter`` writes into a hidden temporary sibling directory
(``.<name>.tmp-<pid>``) and renames it to ``path`` only after every shard and
``meta.json`` are on disk, so an interrupted write never leaves a directory at ``path``;
``is_complete(path)`` is then the test a restarted stage uses to skip its work, and
``reusable(path, info)`` adds that the settings recorded in ``meta.json`` match the run's.
``GeneratedDataset(path)`` is a random-access ``Sequence[dict]`` (what
``grain.MapDataset.source`` and ``pipeline.local_batches`` consume);
``FrameExamples`` turns (dataset, index) items into examples with the leading time axis
that ``pipeline.Augment`` expects.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

FORMAT = "jaxsurg-generated-v1"
SOURCES: tuple[str, ...] = ("raw", "propagated", "compensated")
META = "meta.json"


def _encode_png(array: np.ndarray, name: str) -> np.ndarray:
    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - cv2 failure
        raise ValueError(f"could not PNG-encode {name} of shape {array.shape}")
    return np.frombuffer(buf.tobytes(), np.uint8)


def is_complete(path: str) -> bool:
    """True when ``path`` is a finished dataset (its ``meta.json`` names this format)."""
    meta = os.path.join(path, META)
    if not os.path.isfile(meta):
        return False
    try:
        with open(meta, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def reusable(path: str, info: dict[str, Any]) -> bool:
    """Whether a stage may skip writing ``path``: True when a complete dataset is there and
    was written with the settings ``info`` (compared on the keys its ``meta.json`` records,
    after a JSON round trip, so tuples equal lists); False when there is none.

    Raises:
      ValueError: a complete dataset at ``path`` records a different value for a key of
        ``info`` (e.g. a D_R of binary labels copied into a ``task=parts`` workdir); the
        message names the path and each differing key with both values.
    """
    if not is_complete(path):
        return False
    with open(os.path.join(path, META), encoding="utf-8") as f:
        stored = json.load(f).get("info", {})
    wanted = json.loads(json.dumps(info))
    diff = {k: (stored[k], v) for k, v in wanted.items() if k in stored and stored[k] != v}
    if diff:
        said = ", ".join(f"{k}: written with {a!r}, this run wants {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{path} was generated with other settings ({said}); delete it, or use a fresh workdir, to regenerate it")
    return True


class GeneratedWriter:
    """Writes a generated dataset atomically (see the module docstring).

    Use as a context manager: records go in with ``add``; leaving the block normally
    publishes the dataset at ``path``; an exception (or ``abort()``) deletes the
    temporary directory and leaves ``path`` untouched.

    Args:
      path: the dataset directory to create.
      shard_size: records per ``.npz`` shard (≥ 1).
      overwrite: replace an existing complete dataset at ``path`` (else ``FileExistsError``).
      info: JSON-serialisable metadata stored in ``meta.json`` under ``"info"``.

    Raises:
      ValueError: ``shard_size`` < 1.
      FileExistsError: ``path`` exists and ``overwrite`` is False.
    """

    def __init__(self, path: str, *, shard_size: int = 256, overwrite: bool = False, info: dict | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.path = os.path.abspath(path)
        if os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"generated dataset path {self.path!r} already exists (pass overwrite=True)")
        parent, name = os.path.split(self.path)
        os.makedirs(parent, exist_ok=True)
        self._tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
        if os.path.exists(self._tmp):
            shutil.rmtree(self._tmp)
        os.makedirs(self._tmp)
        self._shard_size, self._info = shard_size, dict(info or {})
        self._pending: list[tuple[np.ndarray, np.ndarray, int, float, int, int]] = []
        self._shards: list[int] = []
        self._shape: tuple[int, ...] | None = None
        self._counts = {s: 0 for s in SOURCES}
        self._closed = False

    def add(self, image: np.ndarray, mask: np.ndarray, *, video_id: int, position: float, source: str, k: int = 0) -> None:
        """Appends one record.

        Args:
          image: uint8 (H, W, 3) RGB frame.
          mask: uint8 (H, W) class map (255 = ignore), same H, W.
          video_id: the video the pair belongs to.
          position: frame position in its video (frames 0, 1, …; 12.5 between 12 and 13).
          source: one of ``SOURCES``.
          k: propagation steps from the labelled frame (0 for raw frames).

        Raises:
          ValueError: wrong dtype/shape, a shape differing from earlier records, an unknown
            ``source``, or a writer already closed.
        """
        if self._closed:
            raise ValueError("GeneratedWriter.add: the writer is closed")
        image, mask = np.asarray(image), np.asarray(mask)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise ValueError(f"mask must be uint8 (H, W) = {image.shape[:2]}, got {mask.dtype} {mask.shape}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if self._shape is None:
            self._shape = image.shape
        elif image.shape != self._shape:
            raise ValueError(f"image shape {image.shape} differs from the dataset's {self._shape}")
        self._pending.append((
            _encode_png(np.ascontiguousarray(image[..., ::-1]), "image"), _encode_png(mask, "mask"),
            int(video_id), float(position), SOURCES.index(source), int(k),
        ))
        self._counts[source] += 1
        if len(self._pending) >= self._shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        images, masks, vid, pos, src, ks = zip(*self._pending)
        offsets = lambda parts: np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        np.savez(
            os.path.join(self._tmp, f"shard-{len(self._shards):05d}.npz"),
            image_png=np.concatenate(images), image_offsets=offsets(images),
            mask_png=np.concatenate(masks), mask_offsets=offsets(masks),
            video_id=np.asarray(vid, np.int32), position=np.asarray(pos, np.float64),
            source=np.asarray(src, np.uint8), k=np.asarray(ks, np.int32),
        )
        self._shards.append(len(self._pending))
        self._pending = []

    def close(self) -> int:
        """Writes the last shard and ``meta.json``, then renames the temporary directory to
        ``path`` (replacing an old dataset when ``overwrite``). Returns the record count."""
        if self._closed:
            return sum(self._shards)
        self._flush()
        meta = {
            "format": FORMAT, "num_records": int(sum(self._shards)), "shards": self._shards,
            "image_shape": list(self._shape) if self._shape else None, "sources": self._counts, "info": self._info,
        }
        with open(os.path.join(self._tmp, META), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.rename(self._tmp, self.path)
        self._closed = True
        return meta["num_records"]

    def abort(self) -> None:
        """Deletes the temporary directory; ``path`` is left as it was."""
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> GeneratedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_dataset(path: str, records: Iterable[dict[str, Any]], *, shard_size: int = 256, overwrite: bool = False, info: dict | None = None) -> int:
    """Writes ``records`` (dicts with the keys of ``GeneratedWriter.add``: image, mask,
    video_id, position, source, k) atomically to ``path``; returns the record count."""
    with GeneratedWriter(path, shard_size=shard_size, overwrite=overwrite, info=info) as w:
        for r in records:
            w.add(r["image"], r["mask"], video_id=r["video_id"], position=r["position"], source=r["source"], k=r.get("k", 0))
    return w.close()


class GeneratedDataset(Sequence):
    """Random access to a dataset written by ``GeneratedWriter``.

    ``ds[i]`` is ``{"image": uint8 (H, W, 3) RGB, "mask": uint8 (H, W), "video_id": int,
    "position": float, "source": str, "k": int}``. The per-record fields of every record
    are also available without decoding as arrays ``video_id``, ``position``, ``source``
    (str array) and ``k``. Shards are loaded lazily and kept in memory (thread-safe).

    Raises:
      FileNotFoundError: ``path`` is not a complete dataset (absent or interrupted write).
      IndexError: from ``__getitem__`` for an index outside [−len, len).
    """

    def __init__(self, path: str):
        if not is_complete(path):
            raise FileNotFoundError(f"no complete generated dataset at {path!r} (missing or interrupted write)")
        self.path = path
        with open(os.path.join(path, META), encoding="utf-8") as f:
            self.meta = json.load(f)
        self._starts = np.concatenate([[0], np.cumsum(self.meta["shards"])]).astype(np.int64)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        fields = {"video_id": [], "position": [], "source": [], "k": []}
        for s in range(len(self.meta["shards"])):
            shard = self._shard(s)
            for key in fields:
                fields[key].append(shard[key])
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros((0,), dt)
        self.video_id = cat(fields["video_id"], np.int32)
        self.position = cat(fields["position"], np.float64)
        self.source = np.asarray(SOURCES, dtype=object)[cat(fields["source"], np.int64)].astype(str)
        self.k = cat(fields["k"], np.int32)

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        with self._lock:
            if s not in self._cache:
                with np.load(os.path.join(self.path, f"shard-{s:05d}.npz")) as z:
                    self._cache[s] = {key: z[key] for key in z.files}
            return self._cache[s]

    def __len__(self) -> int:
        return int(self.meta["num_records"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a generated dataset of {n} records")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[s])
        shard = self._shard(s)
        img = shard["image_png"][shard["image_offsets"][j] : shard["image_offsets"][j + 1]]
        msk = shard["mask_png"][shard["mask_offsets"][j] : shard["mask_offsets"][j + 1]]
        image = cv2.imdecode(img, cv2.IMREAD_COLOR)[..., ::-1]
        mask = cv2.imdecode(msk, cv2.IMREAD_UNCHANGED)
        return {
            "image": np.ascontiguousarray(image), "mask": mask, "video_id": int(shard["video_id"][j]),
            "position": float(shard["position"][j]), "source": SOURCES[int(shard["source"][j])], "k": int(shard["k"][j]),
        }


class FrameExamples(Sequence):
    """Training examples for ``pipeline.Augment`` / ``local_batches`` from frame sources.

    ``items[i]`` is a tuple of (source, index) pairs, one per time step; ``self[i]`` is
    ``{"image": uint8 (T, H, W, 3), "mask": uint8 (T, H, W)}`` stacking ``source[index]``
    (any random-access sequence of dicts with ``image`` and ``mask``, e.g. a
    ``GeneratedDataset``).
    """

    def __init__(self, items: Sequence[Sequence[tuple[Sequence[dict], int]]]):
        self._items = [tuple(it) for it in items]
        if any(len(it) == 0 for it in self._items):
            raise ValueError("FrameExamples: every item needs at least one (source, index) pair")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        frames = [src[int(j)] for src, j in self._items[i]]
        return {"image": np.stack([f["image"] for f in frames]), "mask": np.stack([f["mask"] for f in frames])}
