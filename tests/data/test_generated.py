"""The generated-dataset format (``jaxsurg.data.generated``, Dual Motion Flow's D_R and D_C):
round trip, reuse checks, the grain pipeline, atomic writes and input errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jaxsurg.data import generated, pipeline


def _records(n: int, h: int = 12, w: int = 16, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        dict(
            image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            mask=rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w)),
            video_id=i % 2, position=i + 0.5 * (i % 2), source=generated.SOURCES[i % 3], k=i % 4,
        )
        for i in range(n)
    ]


def test_generated_round_trip_over_several_shards(tmp_path):
    recs = _records(5)
    path = str(tmp_path / "ds")
    assert generated.write_dataset(path, recs, shard_size=2, info={"note": "x"}) == 5
    assert sorted(f for f in os.listdir(path) if f.endswith(".npz")) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    ds = generated.GeneratedDataset(path)
    assert len(ds) == 5 and ds.meta["info"] == {"note": "x"}
    assert ds.meta["sources"] == {"raw": 2, "propagated": 2, "compensated": 1}
    for i, r in enumerate(recs):
        got = ds[i]
        assert got["image"].dtype == np.uint8 and got["image"].shape == (12, 16, 3)
        np.testing.assert_array_equal(got["image"], r["image"])  # PNG is lossless, RGB order kept
        np.testing.assert_array_equal(got["mask"], r["mask"])  # 255 = ignore survives
        assert (got["video_id"], got["position"], got["source"], got["k"]) == (r["video_id"], r["position"], r["source"], r["k"])
    np.testing.assert_array_equal(ds[-1]["image"], recs[-1]["image"])
    np.testing.assert_allclose(ds.position, [r["position"] for r in recs])
    assert list(ds.source) == [r["source"] for r in recs]
    with pytest.raises(IndexError, match="out of range"):
        ds[5]


def test_reusable_checks_the_recorded_settings(tmp_path):
    path = str(tmp_path / "d_r")
    info = {"task": "binary", "num_classes": 2, "resize": (64, 64)}
    assert not generated.reusable(path, info)  # nothing there yet
    generated.write_dataset(path, _records(2), info=info)
    assert generated.reusable(path, info)  # the tuple came back from JSON as a list
    assert generated.reusable(path, {**info, "new_key": 1})  # keys it does not record are not compared
    with pytest.raises(ValueError, match=r"d_r was generated with other settings \(num_classes: written with 2, this run wants 4, task: written with 'binary', this run wants 'parts'\)"):
        generated.reusable(path, {**info, "task": "parts", "num_classes": 4})


def test_generated_examples_feed_the_grain_pipeline(tmp_path):
    recs = _records(4, h=20, w=24)
    ds = generated.GeneratedDataset(str(tmp_path / "ds")) if generated.write_dataset(str(tmp_path / "ds"), recs) else None
    clips = generated.FrameExamples([[(ds, 0), (ds, 1)], [(ds, 2), (ds, 3)]])
    assert clips[1]["image"].shape == (2, 20, 24, 3) and clips[1]["mask"].shape == (2, 20, 24)
    np.testing.assert_array_equal(clips[1]["mask"][1], recs[3]["mask"])
    frames = generated.FrameExamples([[(ds, i)] for i in range(4)])
    augment = pipeline.Augment(resize=None, crop=(16, 16), hflip=False)
    batch = next(pipeline.local_batches(frames, augment, seed=0, per_process_batch=2, num_threads=1))
    assert batch["image"].shape == (2, 16, 16, 3) and batch["mask"].shape == (2, 16, 16)
    # every batch image is a 16×16 crop of one of the records, with its own mask
    for img, msk in zip(batch["image"], batch["mask"]):
        found = [
            (y, x) for r in recs for y in range(5) for x in range(9)
            if np.array_equal(r["image"][y : y + 16, x : x + 16], img) and np.array_equal(r["mask"][y : y + 16, x : x + 16], msk)
        ]
        assert found


def test_interrupted_write_leaves_no_complete_dataset(tmp_path):
    path = str(tmp_path / "ds")
    recs = _records(3)
    with pytest.raises(RuntimeError, match="killed"):
        with generated.GeneratedWriter(path, shard_size=1) as w:
            for r in recs[:2]:
                w.add(r["image"], r["mask"], video_id=0, position=0.0, source="raw")
            raise RuntimeError("killed")
    assert not os.path.exists(path) and not generated.is_complete(path)
    assert os.listdir(tmp_path) == []  # the temporary directory is removed
    # A process killed before close (no cleanup at all) leaves only a hidden temporary dir.
    w = generated.GeneratedWriter(path, shard_size=1)
    w.add(recs[0]["image"], recs[0]["mask"], video_id=0, position=0.0, source="raw")
    assert not os.path.exists(path) and not generated.is_complete(path)
    with pytest.raises(FileNotFoundError, match="no complete generated dataset"):
        generated.GeneratedDataset(path)
    w.close()
    assert generated.is_complete(path) and len(generated.GeneratedDataset(path)) == 1
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_generated_bad_input_errors(tmp_path):
    path = str(tmp_path / "ds")
    img, msk = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    with generated.GeneratedWriter(path) as w:
        with pytest.raises(ValueError, match="image must be uint8"):
            w.add(img.astype(np.float32), msk, video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="image must be uint8"):
            w.add(img[..., 0], msk, video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="mask must be uint8"):
            w.add(img, msk[:4], video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="source must be one of"):
            w.add(img, msk, video_id=0, position=0, source="interpolated")
        w.add(img, msk, video_id=0, position=0, source="raw")
        with pytest.raises(ValueError, match="differs from the dataset"):
            w.add(np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8), video_id=0, position=0, source="raw")
    with pytest.raises(FileExistsError, match="already exists"):
        generated.GeneratedWriter(path)
    with pytest.raises(ValueError, match="shard_size"):
        generated.GeneratedWriter(str(tmp_path / "other"), shard_size=0)
    with pytest.raises(ValueError, match="closed"):
        w.add(img, msk, video_id=0, position=0, source="raw")
    assert generated.write_dataset(path, _records(2, 8, 8), overwrite=True) == 2
    assert len(generated.GeneratedDataset(path)) == 2
