"""The grain pipeline: shapes, determinism, resume, per-process sharding, clips, splits."""

import numpy as np
import pytest

from jaxsurg.data import datasets, pipeline


def _fake_source(n_videos=2, frames=6, h=8, w=10):
    """Records shaped like the TFDS builders' (decoded), in (video, frame) order."""
    out = []
    for v in range(n_videos):
        for f in range(frames):
            uid = v * 100 + f
            out.append({
                "image": np.full((h, w, 3), uid % 256, np.uint8),
                "mask_binary": np.full((h, w, 1), f % 2, np.uint8),
                "flow": np.full((h, w, 2), uid, np.float32),
                "flow_valid": np.ones((h, w), bool),
                "has_label": f != frames - 1,
                "video_id": v, "video_name": f"video{v:02d}".encode(), "frame_index": 500 + f,
            })
    return out


def _uids(batch):
    return batch["image"].reshape(batch["image"].shape[0], -1)[:, 0].tolist()


def _augment(crop=(8, 8)):
    return pipeline.Augment(resize=None, crop=crop)


def test_batches_have_expected_shapes_and_dtypes():
    src = _fake_source()
    ex = pipeline.Frames(src, np.arange(len(src)), "binary", ("image", "mask", "flow", "flow_valid", "has_label"))
    batch = next(pipeline.local_batches(ex, _augment(), seed=0, per_process_batch=3))
    assert batch["image"].shape == (3, 8, 8, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (3, 8, 8) and batch["mask"].dtype == np.uint8
    assert batch["flow"].shape == (3, 8, 8, 2) and batch["flow_valid"].dtype == bool
    assert batch["has_label"].shape == (3,)


def test_same_seed_same_batches_and_resume_from_a_step():
    src = _fake_source()
    ex = pipeline.Frames(src, np.arange(len(src)), "binary")
    a = [_uids(b) for _, b in zip(range(10), pipeline.local_batches(ex, _augment(), seed=1, per_process_batch=4))]
    b = [_uids(b) for _, b in zip(range(10), pipeline.local_batches(ex, _augment(), seed=1, per_process_batch=4))]
    c = [_uids(b) for _, b in zip(range(10), pipeline.local_batches(ex, _augment(), seed=2, per_process_batch=4))]
    assert a == b and a != c
    resumed = [_uids(b) for _, b in zip(range(4), pipeline.local_batches(ex, _augment(), seed=1, per_process_batch=4, start_step=6))]
    assert resumed == a[6:10]
    # One epoch is 12 examples = 3 batches: each epoch is a permutation, a new one each time.
    epoch1, epoch2 = sum(a[0:3], []), sum(a[3:6], [])
    assert sorted(epoch1) == sorted(epoch2) == sorted(r["image"][0, 0, 0] for r in src)
    assert epoch1 != epoch2


def test_per_process_shares_are_disjoint_and_make_the_one_process_batches():
    src = _fake_source()
    ex = pipeline.Frames(src, np.arange(len(src)), "binary")
    one = [b for _, b in zip(range(4), pipeline.local_batches(ex, _augment(), seed=0, per_process_batch=4))]
    shares = [
        [b for _, b in zip(range(4), pipeline.local_batches(ex, _augment(), seed=0, per_process_batch=2, process_index=pi, process_count=2, start_step=1))]
        for pi in range(2)
    ]
    for step in range(3):  # global batch step + 1 = process 0's share, then process 1's: the one-process batch, augmentation included
        for key in one[0]:
            np.testing.assert_array_equal(np.concatenate([shares[0][step][key], shares[1][step][key]]), one[step + 1][key])
    # Within the first epoch (6 examples: global batch 0 and half of 1) the shares are disjoint.
    first = [next(pipeline.local_batches(ex, _augment(), seed=0, per_process_batch=2, process_index=pi, process_count=2)) for pi in range(2)]
    assert not set(_uids(first[0])) & set(_uids(first[1]))


def test_clips_are_consecutive_frames_of_one_video():
    src = _fake_source(n_videos=2, frames=6)
    index = datasets.RecordIndex.read(src)
    starts = pipeline.clip_starts(index, np.arange(len(src)), 3)
    assert starts.tolist() == [0, 1, 2, 3, 6, 7, 8, 9]  # no clip crosses into video 1
    clips = pipeline.Frames(src, starts, "binary", ("image", "flow"), clip_length=3)
    aug = pipeline.Augment(resize=None, crop=(8, 8), squeeze_time=False)
    batch = next(pipeline.local_batches(clips, aug, seed=0, per_process_batch=2))
    assert batch["image"].shape == (2, 3, 8, 8, 3)
    firsts = batch["image"][:, :, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(np.diff(firsts, axis=1), 1)  # frame uid increases by 1


def test_temporal_split_and_label_interval():
    src = _fake_source(n_videos=1, frames=6)  # frames 500..505, last one unlabelled
    index = datasets.RecordIndex.read(src)
    train, test, info = datasets.temporal_split(index, 2 / 3)
    assert train.tolist() == [0, 1, 2, 3] and test.tolist() == [4, 5]
    assert info["videos"]["video00"] == {"train_frames": [500, 503], "test_frames": [504, 505]}
    assert datasets.labelled_subset(index, train, 2).tolist() == [0, 2]
    assert datasets.labelled_subset(index, np.arange(6), 1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="train_fraction"):
        datasets.temporal_split(index, 1.0)


def test_unknown_dataset_and_task_are_refused():
    with pytest.raises(ValueError, match="known datasets"):
        datasets.get_spec("endovis2099")


def test_fold_split_holds_out_whole_videos_and_label_interval_stays_within_training_videos():
    src = _fake_source(n_videos=4, frames=6)  # videos 0..3, frames 500..505, last unlabelled
    index = datasets.RecordIndex.read(src)
    folds = {0: (1, 3), 1: (0, 2)}
    train, test, info = datasets.fold_split(index, folds, 0)
    assert sorted(set(index.video_id[train].tolist())) == [0, 2] and sorted(set(index.video_id[test].tolist())) == [1, 3]
    assert not set(train) & set(test) and len(train) + len(test) == len(src)
    assert info["test_videos"] == [1, 3] and info["train_videos"] == [0, 2]
    # every 2nd frame of each training video, its last (unlabelled) frame never
    assert datasets.labelled_subset(index, train, 2).tolist() == [0, 2, 4, 12, 14, 16]
    with pytest.raises(ValueError, match=r"config.fold=5 is not a fold; folds \(held-out videos\): 0: \[1, 3\], 1: \[0, 2\]"):
        datasets.fold_split(index, folds, 5)
    with pytest.raises(ValueError, match=r"holds out videos \[7\], but the build holds none of them \(videos present: \[0, 1, 2, 3\]\)"):
        datasets.fold_split(index, {0: (7,)}, 0)
    with pytest.raises(ValueError, match="every video but"):
        datasets.fold_split(index, {0: (0, 1, 2, 3)}, 0)


def test_cross_dataset_evaluation_is_refused_before_any_build_without_a_shared_label_space(tmp_path):
    from jaxsurg.config import base_config

    c = base_config()
    c.tfds_dir = str(tmp_path)  # nothing may be built there
    c.test_dataset, c.task = "cholecseg8k", "parts"
    with pytest.raises(ValueError, match="config.task='parts' is not a task of dataset 'cholecseg8k'"):
        pipeline.load(c)
    c.task = "binary"
    with pytest.raises(ValueError, match="needs --config.test_data_dir"):
        pipeline.load(c)
    c.test_dataset = "nowhere"
    with pytest.raises(ValueError, match="config.test_dataset='nowhere' is unknown"):
        pipeline.load(c)
    assert not list(tmp_path.iterdir())


def test_builder_config_carries_the_label_map_of_a_labelme_dataset():
    from jaxsurg.config import base_config

    c = base_config()
    assert pipeline.builder_config_name(c) == "default"
    c.dataset, c.label_map = "labelme", "grasper:instrument hook:instrument"
    assert pipeline.builder_config_name(c) == "default:label_map=grasper:instrument hook:instrument"
    assert pipeline.builder_config_name(c, "cholecseg8k") is None
    c.label_map = ""
    assert pipeline.builder_config_name(c) is None
