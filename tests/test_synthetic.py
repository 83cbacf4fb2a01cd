"""Tests of the procedural synthetic laparoscopic video (jaxsurg.data.synthetic)."""

import cv2
import numpy as np
import pytest

from jaxsurg.data import synthetic
from jaxsurg.data.synthetic import INSTRUMENT_TYPES, KEYPOINT_NAMES, PART_NAMES, render_clip

H, W = 128, 160  # small enough to be quick, large enough for clean jaws and flow


@pytest.fixture(scope="module")
def clips():
    """A few clips with highlights, shadows and noise (the default)."""
    return [render_clip(seed, 10, H, W) for seed in range(4)]


@pytest.fixture(scope="module")
def exact_clips():
    """Clips without the photometric extras, for brightness-constancy checks."""
    return [render_clip(seed, 10, H, W, specular=False) for seed in range(4)]


def _grid(h, w):
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def _backward(src, flow, interpolation):
    """Samples ``src`` at p + flow[p] (OpenCV remap)."""
    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(src, xs + flow[..., 0], ys + flow[..., 1], interpolation, borderMode=cv2.BORDER_REPLICATE)


def _saturation(images):
    return np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2HSV)[..., 1] for im in images]).astype(np.float32) / 255


def test_names_follow_endovis17():
    assert INSTRUMENT_TYPES == (
        "Bipolar Forceps", "Prograsp Forceps", "Large Needle Driver", "Vessel Sealer",
        "Grasping Retractor", "Monopolar Curved Scissors", "Other",
    )
    assert PART_NAMES == ("background", "shaft", "wrist", "claspers")
    assert KEYPOINT_NAMES == ("LeftClasper", "RightClasper", "Head", "ShaftEnd")


def test_same_seed_same_clip_and_different_seed_different_clip():
    a, b, c = render_clip(5, 3, 64, 80), render_clip(5, 3, 64, 80), render_clip(6, 3, 64, 80)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["mask_binary"], c["mask_binary"])


def test_a_longer_clip_from_the_same_seed_starts_with_the_same_frames():
    short, long = render_clip(7, 3, 64, 80), render_clip(7, 6, 64, 80)
    np.testing.assert_array_equal(short["instrument_type"], long["instrument_type"])
    for key in ("image", "mask_parts", "mask_type", "keypoints", "keypoints_visible"):
        np.testing.assert_array_equal(short[key], long[key][:3], err_msg=key)
    for key in ("flow", "flow_valid"):  # the short clip's last frame has no successor
        np.testing.assert_array_equal(short[key][:2], long[key][:2], err_msg=key)


@pytest.mark.parametrize("size", [(256, 320), (64, 80)])
def test_shapes_dtypes_and_ranges(size):
    h, w = size
    t, n = 8, 3
    clip = render_clip(1, t, h, w)
    expected = {
        "image": ((t, h, w, 3), np.uint8),
        "mask_binary": ((t, h, w), np.uint8),
        "mask_parts": ((t, h, w), np.uint8),
        "mask_type": ((t, h, w), np.uint8),
        "flow": ((t, h, w, 2), np.float32),
        "flow_valid": ((t, h, w), np.bool_),
        "keypoints": ((t, n, 4, 2), np.float32),
        "keypoints_visible": ((t, n, 4), np.bool_),
        "instrument_type": ((n,), np.int32),
    }
    assert set(clip) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert clip[key].shape == shape, key
        assert clip[key].dtype == dtype, key
    assert set(np.unique(clip["mask_binary"])) == {0, 1}
    assert set(np.unique(clip["mask_parts"])) <= {0, 1, 2, 3}
    assert clip["mask_type"].max() <= 7
    assert np.isfinite(clip["flow"]).all()
    assert not clip["flow"][-1].any() and not clip["flow_valid"][-1].any()
    assert clip["flow_valid"][:-1].mean() > 0.5
    assert clip["image"].std() > 20  # textured, not blank


def test_one_to_three_instruments_of_valid_types():
    counts = []
    for seed in range(12):
        clip = render_clip(seed, 1, 64, 80)
        types = clip["instrument_type"]
        used = types > 0
        count = int(used.sum())
        assert 1 <= count <= 3
        assert used[:count].all() and not used[count:].any()  # slots filled from the front
        assert set(types[used]) <= set(range(1, 8))
        assert set(np.unique(clip["mask_type"])) <= {0, *types[used]}
        assert not clip["keypoints_visible"][:, ~used].any()
        counts.append(count)
    assert len(set(counts)) > 1
    single = render_clip(3, 2, 64, 80, max_instruments=1)
    assert single["instrument_type"].shape == (1,) and single["instrument_type"][0] > 0
    assert single["keypoints"].shape == (2, 1, 4, 2)


def test_masks_are_consistent_and_zero_outside_the_endoscope_circle(clips):
    parts_seen = set()
    for clip in clips:
        binary, parts, types = clip["mask_binary"], clip["mask_parts"], clip["mask_type"]
        np.testing.assert_array_equal(parts > 0, binary == 1)
        np.testing.assert_array_equal(types > 0, binary == 1)
        parts_seen |= set(np.unique(parts))
        xs, ys = _grid(H, W)
        outside = np.hypot(xs - (W - 1) / 2, ys - (H - 1) / 2) > 0.6 * W  # the radius is 0.55-0.6 W
        assert outside.any()
        assert not binary[:, outside].any() and not parts[:, outside].any() and not types[:, outside].any()
        beyond_edge = outside & ~_inside_circle(0.62 * W)  # the soft edge is 0.02 W wide
        assert beyond_edge.any() and clip["image"][:, beyond_edge].mean() < 5  # black, up to noise
        assert not clip["flow_valid"][:, outside].any()
        assert 0.01 < binary.mean() < 0.6
    assert parts_seen == {0, 1, 2, 3}


def test_flow_is_exact_for_brightness(exact_clips):
    # Backward-warping frame t+1 along the flow reproduces frame t. What remains is the
    # double bilinear resampling of the texture (once when rendering, once here), the
    # anti-aliased instrument edges and the blur, measured at 0.6-0.9 grey levels mean;
    # a wrong flow (e.g. off by half a pixel) gives several grey levels.
    for clip in exact_clips:
        images = clip["image"].astype(np.float32)
        for t in range(len(images) - 1):
            valid = clip["flow_valid"][t]
            warped = _backward(images[t + 1], clip["flow"][t], cv2.INTER_LINEAR)
            error = np.abs(warped - images[t]).mean(-1)[valid]
            assert error.mean() < 1.5, (t, error.mean())
            shifted = _backward(images[t + 1], clip["flow"][t] + 0.5, cv2.INTER_LINEAR)
            assert np.abs(shifted - images[t]).mean(-1)[valid].mean() > 2 * error.mean()


def test_photometric_extras_break_constancy_only_with_specular(clips, exact_clips):
    def error(clip):
        images = clip["image"].astype(np.float32)
        warped = _backward(images[1], clip["flow"][0], cv2.INTER_LINEAR)
        return np.abs(warped - images[0]).mean(-1)[clip["flow_valid"][0]].mean()

    for noisy, exact in zip(clips, exact_clips):
        np.testing.assert_array_equal(noisy["mask_type"], exact["mask_type"])
        np.testing.assert_array_equal(noisy["flow"], exact["flow"])
        assert 2.0 < error(noisy) < 8.0
        assert error(exact) < error(noisy)


def test_flow_carries_type_masks_and_only_occlusions_are_invalid(exact_clips):
    occluded = 0
    xs, ys = _grid(H, W)
    for clip in exact_clips:
        for t in range(len(clip["image"]) - 1):
            flow, valid, types = clip["flow"][t], clip["flow_valid"][t], clip["mask_type"][t]
            warped = _backward(clip["mask_type"][t + 1], flow, cv2.INTER_NEAREST)
            edges = cv2.morphologyEx(types, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
            core = valid & ~edges
            assert (warped[core] == types[core]).mean() >= 0.99
            # Deep inside the view, with the target deep inside too, a point can only be
            # invalid because an instrument covers or uncovers it.
            tx, ty = xs + flow[..., 0], ys + flow[..., 1]
            target_inside = np.hypot(tx - (W - 1) / 2, ty - (H - 1) / 2) < 0.5 * W - 2
            target_inside &= (tx > 1) & (tx < W - 2) & (ty > 1) & (ty < H - 2)
            invalid = ~valid & _inside_circle(0.5 * W) & target_inside
            either = clip["mask_binary"][t] | clip["mask_binary"][t + 1]
            near_instruments = cv2.dilate(either, np.ones((7, 7), np.uint8))
            assert not (invalid & (near_instruments == 0)).any()
            occluded += int(invalid.sum())
    assert occluded > 100


def _inside_circle(radius):
    xs, ys = _grid(H, W)
    return np.hypot(xs - (W - 1) / 2, ys - (H - 1) / 2) < radius


def test_tissue_moves_as_one_affine_field_and_instruments_differently(exact_clips):
    differs = 0
    for clip in exact_clips:
        xs, ys = _grid(H, W)
        for t in range(len(clip["image"]) - 1):
            tissue = (clip["mask_binary"][t] == 0) & _inside_circle(0.5 * W)
            design = np.stack([xs[tissue], ys[tissue], np.ones(tissue.sum())], -1)
            coef, *_ = np.linalg.lstsq(design, clip["flow"][t][tissue], rcond=None)
            assert np.abs(design @ coef - clip["flow"][t][tissue]).max() < 1e-2
            tool = clip["mask_binary"][t] == 1
            predicted = np.stack([xs[tool], ys[tool], np.ones(tool.sum())], -1) @ coef
            differs += np.median(np.linalg.norm(predicted - clip["flow"][t][tool], axis=-1)) > 0.5
    assert differs > 0.5 * len(exact_clips) * 9


def test_head_key_point_follows_the_flow(exact_clips):
    checked = 0
    for clip in exact_clips:
        head, seen = clip["keypoints"][:, :, 2], clip["keypoints_visible"][:, :, 2]
        for t in range(len(head) - 1):
            for slot in np.nonzero(seen[t] & seen[t + 1])[0]:
                x, y = np.rint(head[t, slot]).astype(int)
                if clip["mask_parts"][t, y, x] != 2:  # another instrument's jaw lies over this wrist
                    continue
                moved = head[t, slot] + clip["flow"][t, y, x]
                assert np.linalg.norm(moved - head[t + 1, slot]) < 1.0
                checked += 1
    assert checked > 20


def test_key_points_lie_on_their_parts(clips):
    part_of = {0: 3, 1: 3, 2: 2, 3: 1}  # LeftClasper/RightClasper on claspers, Head on the wrist, ShaftEnd on the shaft
    checked = 0
    for clip in clips:
        for t in range(len(clip["image"])):
            for slot, type_id in enumerate(clip["instrument_type"]):
                for k, part in part_of.items():
                    if not clip["keypoints_visible"][t, slot, k]:
                        continue
                    x, y = clip["keypoints"][t, slot, k]
                    own = (clip["mask_parts"][t] == part) & (clip["mask_type"][t] == type_id)
                    ys, xs = np.nonzero(own)
                    # visible = its part covers the 3x3 neighbourhood of the rounded point
                    assert len(xs) and np.hypot(xs - x, ys - y).min() <= 2.2, (t, slot, KEYPOINT_NAMES[k])
                    checked += 1
    assert checked > 50


def test_left_and_right_clasper_as_seen_along_the_instrument(clips):
    checked = 0
    for clip in clips:
        kp, seen = clip["keypoints"], clip["keypoints_visible"]
        for t, slot in zip(*np.nonzero(seen.all(-1))):
            left, right, head, shaft_end = kp[t, slot]
            forward = head - shaft_end
            cross = lambda p: forward[0] * (p - head)[1] - forward[1] * (p - head)[0]  # noqa: E731
            assert cross(left) < cross(right)  # image y points down: left is the negative side
            checked += 1
    assert checked > 10


def test_shaft_end_is_where_the_shaft_leaves_the_view(clips):
    for clip in clips:
        for t, slot in zip(*np.nonzero(clip["keypoints_visible"][:, :, 3])):
            x, y = clip["keypoints"][t, slot, 3]
            to_border = min(x, y, W - 1 - x, H - 1 - y)
            to_circle = 0.55 * W - np.hypot(x - (W - 1) / 2, y - (H - 1) / 2)
            assert min(to_border, to_circle) < 2.0, (x, y)


def test_colour_cue_is_present_but_not_perfect(clips):
    instrument, tissue = [], []
    for clip in clips:
        inside = _inside_circle(0.5 * W)
        saturation = _saturation(clip["image"])
        instrument.append(saturation[(clip["mask_binary"] == 1) & inside])
        tissue.append(saturation[(clip["mask_binary"] == 0) & inside])
    instrument, tissue = np.concatenate(instrument), np.concatenate(tissue)
    assert instrument.mean() + 0.15 < tissue.mean()
    errors = [0.5 * ((instrument > s).mean() + (tissue <= s).mean()) for s in np.linspace(0, 1, 101)]
    assert 0.02 < min(errors) < 0.3  # the best saturation threshold still errs
    assert (tissue < 0.2).mean() > 0.01 and (instrument > 0.3).mean() > 0.005


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_frames=0), dict(height=31), dict(width=16), dict(max_instruments=0), dict(max_instruments=4)],
)
def test_invalid_arguments_raise(kwargs):
    args = dict(seed=0, num_frames=2, height=64, width=80) | kwargs
    with pytest.raises(ValueError):
        render_clip(args.pop("seed"), args.pop("num_frames"), **args)


def test_tiny_training_clip_and_smallest_sizes():
    clip = render_clip(0, 8, 64, 80)
    assert clip["image"].shape == (8, 64, 80, 3)
    assert clip["mask_binary"].any(axis=(1, 2)).all()
    single = render_clip(0, 1, 32, 32)
    assert single["image"].shape == (1, 32, 32, 3)
    assert not single["flow"].any() and not single["flow_valid"].any()


def test_cli_writes_contact_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    synthetic.main(["--seed", "0", "--frames", "2", "--height", "64", "--width", "80", "--out", str(out)])
    sheet = cv2.imread(str(out))
    assert sheet is not None
    assert sheet.shape[1] == 4 * (80 + 2) and sheet.shape[0] > 2 * (64 + 2)
