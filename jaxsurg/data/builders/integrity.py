"""Keeping builds honest: a manual-dir build is named by the CONTENT of its input files
(``content_fingerprint``, with a per-file hash cache), built by one process at a time
(``build_lock``), and the ``incomplete.*`` folders that interrupted builds leave are
removed once a build succeeds (``remove_incomplete``). ``builders.prepare`` uses all three.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Iterable, Iterator

import tensorflow_datasets as tfds

from jaxsurg import progress
from jaxsurg.data.builders.common import fingerprint

CONTENT_HASH_CACHE = ".content_hashes.json"  # file name of the per-builder hash cache
_HASH_CHUNK = 1 << 20
# A file whose mtime or ctime is this close to (or after) the moment it was hashed is not
# cached: on a file system with coarse time stamps an edit in the same tick would keep them.
RACY_WINDOW_NS = 2_000_000_000
# Hashing more uncached bytes than this prints a line first (a first run over big videos).
ANNOUNCE_HASH_BYTES = 1 << 30


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b (128-bit) hex digest of a file's bytes, read in 1 MiB chunks.

    Raises:
      OSError: if the file cannot be read.
    """
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    """What must be unchanged for a cached content hash to hold: size, mtime and ctime
    (ns). ctime cannot be set back by ``os.utime``/``touch -d``/``cp -p``; any write or
    replace of the file moves it."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_hash_cache(cache_path: str | None) -> dict[str, list]:
    """path → [size, mtime_ns, ctime_ns, digest] from a cache file; {} if absent or unreadable."""
    if not cache_path:
        return {}
    try:
        with open(cache_path) as f:
            data = json.load(f)
        files = data["files"] if data.get("version") == 1 else {}
        return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 4}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_hash_cache(cache_path: str, files: dict[str, list]) -> None:
    """Writes the cache atomically (a temporary file in the same folder, then ``os.replace``);
    a data dir that cannot be written just goes without a cache."""
    folder = os.path.dirname(cache_path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(cache_path) + ".", suffix=".tmp", dir=folder)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "files": files}, f, sort_keys=True)
        os.replace(tmp, cache_path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def content_fingerprint(root: str, paths: Iterable[str], cache_path: str | None = None) -> str:
    """A 10-hex-digit digest of ``root``'s absolute path and of the CONTENT of ``paths``
    (each file's relative path under ``root`` and BLAKE2b of its bytes, in sorted path
    order), naming a build from a manual dir: relabelled or replaced files give another
    digest even at the same byte size.

    Content hashes are cached in the JSON file ``cache_path`` (None = no cache), per
    absolute path with the file's size, mtime and ctime; a file whose size, mtime or
    ctime changed is hashed again, and so is one that changed while it was read or within
    ``RACY_WINDOW_NS`` before. The cache is rewritten (atomically) only when it changed; entries of
    other roots are kept, stale entries under ``root`` are dropped. Hashing more than
    ``ANNOUNCE_HASH_BYTES`` of uncached data prints one line first.

    Args:
      root: the manual dir.
      paths: the input files under ``root`` that the build reads.
      cache_path: the cache file, e.g. ``<data_dir>/<builder>/.content_hashes.json``.

    Raises:
      OSError: if a file cannot be stat'ed or read (the message names it).
    """
    root_abs = os.path.abspath(root)
    listing = sorted((os.path.relpath(os.path.abspath(p), root_abs), os.path.abspath(p)) for p in paths)
    cache = _read_hash_cache(cache_path)
    stats = {full: os.stat(full) for _, full in listing}
    todo = [full for _, full in listing if cache.get(full, [None] * 4)[:3] != _stat_key(stats[full])]
    todo_bytes = sum(stats[full].st_size for full in todo)
    if todo_bytes > ANNOUNCE_HASH_BYTES:
        where = f" (cached in {cache_path})" if cache_path else ""
        progress.say(f"hashing {todo_bytes / 1e9:.1f} GB of new or changed input files under {root_abs}{where}")
    pending = set(todo)
    digests = {full: cache[full][3] for _, full in listing if full not in pending}
    trusted = {full: cache[full] for full in digests}
    for full in todo:
        started, before = time.time_ns(), os.stat(full)
        digests[full] = file_digest(full)
        after = os.stat(full)
        # cached only if unchanged while read and not changed just before (same-tick edits)
        if _stat_key(after) == _stat_key(before) and started - max(after.st_mtime_ns, after.st_ctime_ns) >= RACY_WINDOW_NS:
            trusted[full] = _stat_key(after) + [digests[full]]
    if cache_path:
        under = root_abs.rstrip(os.sep) + os.sep
        updated = {k: v for k, v in cache.items() if not k.startswith(under)}
        updated.update(trusted)
        if updated != cache:
            _write_hash_cache(cache_path, updated)
    return fingerprint(root_abs, [(rel, digests[full]) for rel, full in listing])



# ----------------------------------------------------------------------------- build lock

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None


@contextlib.contextmanager
def build_lock(lock_path: str, on_wait: Any = None) -> Iterator[None]:
    """Holds an exclusive ``fcntl.flock`` on ``lock_path`` (created if missing, never
    removed) for the duration; released when the block exits or the process dies.

    Args:
      lock_path: the lock file, e.g. ``<data_dir>/<builder>/<config>.lock``.
      on_wait: called once, without arguments, if another process holds the lock
        (before waiting for it).

    Without ``fcntl`` (not POSIX) nothing is locked.

    Raises:
      OSError: if the lock file cannot be created or opened.
    """
    if fcntl is None:
        yield
        return
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_incomplete(config_dir: str) -> list[str]:
    """Removes the ``incomplete.*`` folders that interrupted TFDS builds left in
    ``config_dir`` (``<data_dir>/<builder>/<config>``). Call it only while holding that
    config's ``build_lock``, so that no live build's folder is removed.

    Returns:
      The removed paths.
    """
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(config_dir), tfds.core.constants.INCOMPLETE_PREFIX + "*"))):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
