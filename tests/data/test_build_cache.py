"""Builds from a manual dir are keyed by the CONTENT of its files (issue 13, "never a
silently wrong number"): a relabelled mask of the same byte size is built anew; content
hashes are cached per file (size, mtime, ctime); ``prepare`` says in one line whether it
reused or built a dataset."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest

from jaxsurg.data import builders
from jaxsurg.data.builders import cholecseg8k, common, integrity

H, W = 24, 32
FOLDER = os.path.join("video12", "video12_15750")
FRAMES = (15750, 15751)


def _write_mask(path: str, codes: np.ndarray) -> None:
    """A watershed mask (3 equal channels) as an UNCOMPRESSED PNG: its byte size depends on
    H and W only, so other codes give a file of the same size."""
    assert cv2.imwrite(path, np.repeat(codes[..., None], 3, -1), [cv2.IMWRITE_PNG_COMPRESSION, 0])


def _codes(grasper_rows: int) -> np.ndarray:
    """Background (50) with the first ``grasper_rows`` rows grasper (31)."""
    codes = np.full((H, W), 50, np.uint8)
    codes[:grasper_rows] = 31
    return codes


def _manual_dir(root: str) -> list[str]:
    """Two CholecSeg8k frames with masks under ``root/video12/video12_15750``; returns the
    mask paths."""
    folder = os.path.join(root, FOLDER)
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    masks = []
    for n in FRAMES:
        stem = os.path.join(folder, f"frame_{n}_endo")
        assert cv2.imwrite(stem + ".png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        _write_mask(stem + "_watershed_mask.png", _codes(4))
        masks.append(stem + "_watershed_mask.png")
    return masks


def _old_key(root: str) -> str:
    """The config digest ``prepare`` used before: the dir's path and its files' names and sizes."""
    listing = [
        (os.path.relpath(p, root), os.path.getsize(p))
        for f in cholecseg8k.find_frames(root) for p in (f.path, f.mask_path) if p
    ]
    return common.fingerprint(os.path.abspath(root), listing)


def _binary_masks(builder) -> list[np.ndarray]:
    source = builder.as_data_source()["train"]
    return [source[i]["mask_binary"][..., 0] for i in range(len(source))]


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new_mtime", "mtime_set_back"])
def test_same_size_relabelled_mask_is_built_anew(tmp_path, keep_mtime):
    """Relabelled at the same byte size: a new build holding the new labels. With
    ``keep_mtime`` the old mtime is put back (``os.utime``), as ``cp -p`` or ``rsync -t``
    may do: the file's ctime still tells the cache that it changed."""
    root, data_dir = str(tmp_path / "manual"), str(tmp_path / "tfds")
    masks = _manual_dir(root)
    first = builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=root)
    assert [int(m.sum()) for m in _binary_masks(first)] == [4 * W, 4 * W]
    old_key, old_stat = _old_key(root), os.stat(masks[0])

    _write_mask(masks[0], _codes(10))  # relabelled: 10 grasper rows instead of 4
    assert os.path.getsize(masks[0]) == old_stat.st_size
    if keep_mtime:
        os.utime(masks[0], ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
        assert os.stat(masks[0]).st_mtime_ns == old_stat.st_mtime_ns
    assert _old_key(root) == old_key  # names and sizes alone would have reused the stale build

    second = builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=root)
    assert second.builder_config.name != first.builder_config.name
    assert second.data_dir != first.data_dir
    assert [int(m.sum()) for m in _binary_masks(second)] == [10 * W, 4 * W]


def test_content_hashes_are_cached(tmp_path, monkeypatch):
    """The second fingerprint of an unchanged dir reads no file; a changed file is hashed
    again (alone), and the digest follows the content."""
    root = str(tmp_path / "manual")
    masks = _manual_dir(root)
    cache = str(tmp_path / "tfds" / "cholecseg8k" / integrity.CONTENT_HASH_CACHE)
    hashed = []
    real = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda path: hashed.append(os.path.basename(path)) or real(path))
    monkeypatch.setattr(integrity, "RACY_WINDOW_NS", 0)  # trust files written just now

    first = cholecseg8k.source_fingerprint(root, cache)
    assert len(hashed) == 4 and os.path.isfile(cache)
    with open(cache) as f:
        entries = json.load(f)["files"]
    assert sorted(entries) == sorted(os.path.join(os.path.abspath(root), FOLDER, f) for f in hashed)
    hashed.clear()
    assert cholecseg8k.source_fingerprint(root, cache) == first and hashed == []

    time.sleep(0.05)  # a later time-stamp tick than the first writes (RACY_WINDOW_NS is 0 here)
    _write_mask(masks[1], _codes(7))
    changed = cholecseg8k.source_fingerprint(root, cache)
    assert hashed == [os.path.basename(masks[1])] and changed != first
    time.sleep(0.05)
    _write_mask(masks[1], _codes(4))  # back to the first labels: back to the first digest
    assert cholecseg8k.source_fingerprint(root, cache) == first
    assert cholecseg8k.source_fingerprint(root) == first  # without a cache: the same digest


def test_files_modified_just_before_hashing_are_not_cached(tmp_path, monkeypatch):
    """A file hashed within RACY_WINDOW_NS of its last change is hashed again next time (an
    edit in the same time-stamp tick could keep size, mtime and ctime)."""
    root = str(tmp_path / "manual")
    _manual_dir(root)
    cache = str(tmp_path / "cache.json")
    hashed = []
    real = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(integrity, "RACY_WINDOW_NS", 3600 * 10**9)
    first = cholecseg8k.source_fingerprint(root, cache)
    assert cholecseg8k.source_fingerprint(root, cache) == first and len(hashed) == 8


def test_prepare_says_built_then_reused(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(integrity, "RACY_WINDOW_NS", 0)  # cache the files written just now
    root, data_dir = str(tmp_path / "manual"), str(tmp_path / "tfds")
    _manual_dir(root)
    builder = builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=root)
    name = builder.builder_config.name
    assert name.startswith("default-")
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"jaxsurg: dataset cholecseg8k/{name}: building from {os.path.abspath(root)} into {builder.data_dir}"
    ]
    builders.prepare("cholecseg8k", data_dir=data_dir, manual_dir=root)
    out = capsys.readouterr().out
    assert out.splitlines() == [f"jaxsurg: dataset cholecseg8k/{name}: reused from {builder.data_dir}"]
    assert os.path.isfile(os.path.join(data_dir, "cholecseg8k", integrity.CONTENT_HASH_CACHE))
    noise = [r.getMessage() for r in caplog.records if "custom data configuration" in r.getMessage() or "has no" in r.getMessage()]
    assert not noise
