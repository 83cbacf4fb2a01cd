"""Augmentations keep images, masks and optical flow consistent."""

import numpy as np
import pytest

from jaxsurg.data import transforms


def _shifted_pair(dx: int, h: int = 12, w: int = 16):
    """Two frames where frame 1 is frame 0 moved right by dx pixels, with the exact flow."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (h, w + abs(dx), 3), dtype=np.uint8)
    f0 = wide[:, abs(dx):]
    f1 = wide[:, abs(dx) - dx : abs(dx) - dx + w]
    flow = np.zeros((2, h, w, 2), np.float32)
    flow[0, ..., 0] = dx
    return {"image": np.stack([f0, f1]), "flow": flow, "mask": np.zeros((2, h, w), np.uint8)}


def _backward_check(ex):
    """Frame 0 equals frame 1 sampled at p + flow (integer flows, interior only)."""
    f0, f1, fl = ex["image"][0], ex["image"][1], ex["flow"][0]
    h, w = f0.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    xt, yt = (xs + fl[..., 0]).astype(int), (ys + fl[..., 1]).astype(int)
    ok = (xt >= 0) & (xt < w) & (yt >= 0) & (yt < h)
    np.testing.assert_array_equal(f1[yt[ok], xt[ok]], f0[ok])


def test_shifted_pair_is_consistent():
    _backward_check(_shifted_pair(3))


@pytest.mark.parametrize("horizontal,vertical", [(True, False), (False, True)])
def test_flip_keeps_flow_consistent(horizontal, vertical):
    ex = _shifted_pair(3)
    if vertical:  # make it a vertical motion: transpose the spatial axes
        ex = {"image": ex["image"].transpose(0, 2, 1, 3), "flow": ex["flow"].transpose(0, 2, 1, 3)[..., ::-1].copy(),
              "mask": ex["mask"].transpose(0, 2, 1)}
    _backward_check(ex)
    for seed in range(8):  # some seeds flip, some don't; all must stay consistent
        out = transforms.random_flip(ex, np.random.default_rng(seed), horizontal=horizontal, vertical=vertical)
        _backward_check(out)
    flipped = [transforms.random_flip(ex, np.random.default_rng(s), horizontal=horizontal, vertical=vertical) for s in range(8)]
    comp = 0 if horizontal else 1
    signs = {float(f["flow"][0, 0, 0, comp]) for f in flipped}
    assert signs == {3.0, -3.0}


def test_resize_scales_flow_and_uses_nearest_for_masks():
    ex = {
        "image": np.zeros((1, 8, 8, 3), np.uint8),
        "mask": np.array([[[0, 255] * 4] * 8], np.uint8),
        "flow": np.tile(np.array([2.0, 1.0], np.float32), (1, 8, 8, 1)),
        "flow_valid": np.ones((1, 8, 8), bool),
    }
    out = transforms.resize(ex, (16, 32))
    assert out["image"].shape == (1, 16, 32, 3)
    np.testing.assert_allclose(out["flow"][..., 0], 8.0)
    np.testing.assert_allclose(out["flow"][..., 1], 2.0)
    assert set(np.unique(out["mask"])) == {0, 255}
    assert out["flow_valid"].dtype == bool and out["flow_valid"].all()


def test_random_crop_shares_window_across_clip_and_rejects_large_crops():
    img = np.arange(3 * 10 * 12 * 3, dtype=np.uint8).reshape(3, 10, 12, 3) % 251
    clip = {"image": np.repeat(img[:1], 3, axis=0), "mask": np.zeros((3, 10, 12), np.uint8)}
    out = transforms.random_crop(clip, (4, 5), np.random.default_rng(1))
    assert out["image"].shape == (3, 4, 5, 3) and out["mask"].shape == (3, 4, 5)
    assert (out["image"] == out["image"][:1]).all()
    with pytest.raises(ValueError, match="larger than the frame"):
        transforms.random_crop(clip, (11, 5), np.random.default_rng(1))


def test_photometric_jitter_identity_and_saturation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(transforms.photometric_jitter(img, rng), img)
    out = transforms.photometric_jitter(img, np.random.default_rng(3), saturation=0.5)
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)
    grey = np.full((1, 4, 4, 3), 128, np.uint8)  # no saturation to change: stays grey
    np.testing.assert_array_equal(transforms.photometric_jitter(grey, np.random.default_rng(3), saturation=0.9, hue_degrees=30), grey)
