"""Pretraining frames: field of view, rows with flow, the prepare transform, PCA pictures."""

import os

import cv2
import numpy as np
import pytest

from jaxsurg import visualize
from jaxsurg.data import datasets, unlabelled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "..", "shared", "data", "cholecseg8k_clip")


def _endoscope_image(h=60, w=80, radius=25):
    ys, xs = np.mgrid[:h, :w]
    inside = np.hypot(xs - w / 2, ys - h / 2) <= radius
    img = np.zeros((h, w, 3), np.uint8)
    img[inside] = (150, 60, 50)
    img[28:32, 38:42] = 0  # dark tissue inside the circle, not connected to the border
    return img, inside


def test_field_of_view_keeps_dark_pixels_inside_the_circle():
    img, inside = _endoscope_image()
    fov = unlabelled.field_of_view(img, erode=0)
    np.testing.assert_array_equal(fov[~inside], False)
    assert fov[30, 40]  # the dark blob in the middle is inside
    np.testing.assert_array_equal(fov, inside | ((np.mgrid[:60, :80][0] >= 28) & (np.mgrid[:60, :80][0] < 32) & (np.mgrid[:60, :80][1] >= 38) & (np.mgrid[:60, :80][1] < 42)))
    eroded = unlabelled.field_of_view(img, erode=2)
    assert eroded.sum() < fov.sum() and not (eroded & ~fov).any()


def test_field_of_view_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        unlabelled.field_of_view(np.zeros((4, 4, 3), np.float32))


def test_rows_with_flow_drops_the_last_frame_of_each_video():
    index = datasets.RecordIndex(
        video_id=np.array([7, 7, 7, 9, 9]), frame_index=np.array([0, 1, 2, 0, 1]),
        has_label=np.ones(5, bool), video_name=("a",) * 3 + ("b",) * 2,
    )
    np.testing.assert_array_equal(unlabelled.rows_with_flow(index, np.arange(5)), [0, 1, 3])
    np.testing.assert_array_equal(unlabelled.rows_with_flow(index, np.array([2, 3])), [3])


def test_flow_frames_concatenates_sources_and_prepare_rescales_flow():
    img, inside = _endoscope_image()
    rec = {"image": img, "flow": np.full((60, 80, 2), 2.0, np.float32), "flow_valid": np.ones((60, 80), bool)}
    frames = unlabelled.FlowFrames([([rec, rec], np.array([1])), ([rec], np.array([0, 0]))])
    assert len(frames) == 3
    with pytest.raises(IndexError):
        frames[3]
    out = unlabelled.PretrainPrepare((30, 40)).prepare(frames[2])
    assert out["image"].shape == (30, 40, 3) and out["valid"].shape == (30, 40)
    np.testing.assert_allclose(out["flow"], 1.0)  # halved with the frame
    small_inside = cv2.resize(inside.astype(np.uint8), (40, 30), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert not (out["valid"] & ~small_inside).any() and out["valid"].sum() > 0.5 * small_inside.sum()


@pytest.mark.skipif(not os.path.isdir(CLIP), reason="../shared/data/cholecseg8k_clip is absent")
def test_field_of_view_on_a_real_frame_is_one_disc():
    img = cv2.imread(os.path.join(CLIP, "frame_561_endo.png"))[..., ::-1].copy()
    fov = unlabelled.field_of_view(img)
    assert 0.45 < fov.mean() < 0.75  # the circle in a 854×480 frame
    assert not fov[:, :100].any() and not fov[:, -100:].any()  # black sides
    assert fov[240, 427]
    count, _ = cv2.connectedComponents(fov.astype(np.uint8))
    assert count == 2  # background label + one component


def test_pca_rgb_separates_three_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5
    labels = np.repeat(np.arange(3), 12).reshape(1, 6, 6)
    feats = centres[labels] + 0.01 * rng.normal(size=(1, 6, 6, 8))
    rgb = visualize.pca_rgb(feats)
    assert rgb.shape == (1, 6, 6, 3) and rgb.dtype == np.uint8
    means = np.stack([rgb[labels == k].mean(axis=0) for k in range(3)])
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[np.triu_indices(3, 1)].min() > 100  # clusters get clearly different colours
    np.testing.assert_array_equal(rgb, visualize.pca_rgb(feats))
    panel = visualize.pca_panel(np.zeros((1, 24, 24, 3), np.uint8), feats)
    assert panel.shape == (24, 48, 3)
    with pytest.raises(ValueError, match="D ≥ 3"):
        visualize.pca_rgb(np.zeros((1, 2, 2, 2)))
