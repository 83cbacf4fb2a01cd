"""Dual Motion Flow's joint propagation (Sec. 2.1, Eqs. 1–2) on a scene with known motion:
the plan, G's input history (past and reconstruct modes), the propagated pairs and their
quality against the truth, the copied label and the optical flow's propagation."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsurg import metrics
from jaxsurg.methods.dual_motion import propagation as dm

from dmf_helpers import V, _panning_sequence  # tests/methods/dual_motion/dmf_helpers.py


def test_propagation_plan_takes_the_nearest_labelled_frame():
    seq, _ = _panning_sequence(label_interval=5)
    assert dm.propagation_plan(seq, 2) == {1: (0, 1, 1), 2: (0, 1, 2), 3: (5, -1, 2), 4: (5, -1, 1), 6: (5, 1, 1), 7: (5, 1, 2)}
    assert dm.propagation_plan(seq, 1) == {1: (0, 1, 1), 4: (5, -1, 1), 6: (5, 1, 1)}
    seq4, _ = _panning_sequence(label_interval=4)  # frame 2 is 2 from frames 0 and 4: forward wins
    assert dm.propagation_plan(seq4, 4)[2] == (0, 1, 2)
    assert dm.propagation_plan(seq4, 4)[7] == (4, 1, 3)


def test_history_repeats_edge_frames_with_zero_flow():
    seq, _ = _panning_sequence()
    frames, flows = dm.history(seq, 1, +1)  # rows −1 (outside → row 0), 0, 1
    np.testing.assert_array_equal(frames, seq.frames[[0, 0, 1]])
    np.testing.assert_array_equal(flows[0], 0)
    np.testing.assert_array_equal(flows[1], seq.flow_fwd[0])
    frames, flows = dm.history(seq, 5, -1)  # rows 7, 6, 5; backward flows 7→6, 6→5
    np.testing.assert_array_equal(frames, seq.frames[[7, 6, 5]])
    np.testing.assert_array_equal(flows, seq.flow_bwd[[7, 6]])


@pytest.mark.parametrize("warp", ["forward", "backward"])
def test_joint_propagation_with_the_true_flow_recovers_the_true_labels(warp):
    seq, truth = _panning_sequence()
    plan = dm.propagation_plan(seq, 2)
    h, w = seq.frames.shape[1:3]

    def true_motion(frames, flows, rows, directions):
        # forward warp: the flow on the source grid, p → p + d; backward warp: on the target
        # grid, pointing back at the source (the opposite flow)
        sign = 1.0 if warp == "forward" else -1.0
        return np.stack([np.broadcast_to(-V * d * sign, (h, w, 2)) for d in directions]).astype(np.float32)

    pairs = dm.joint_propagation(seq, plan, true_motion, num_classes=3, warp=warp, batch_size=4)
    assert sorted(pairs) == [1, 2, 3, 4, 6, 7]
    for u, (image, label) in pairs.items():
        j = plan[u][2]
        if warp == "forward":  # the image border the chain could not fill is a hole (ignore)
            covered = label != 255
            assert covered.mean() >= (h - j * 1) * (w - j * 2) / (h * w) - 1e-6
        else:  # clamped sampling fills the border with replicated pixels: check the interior
            covered = np.zeros((h, w), bool)
            covered[j : h - j, 2 * j : w - 2 * j] = True
        np.testing.assert_array_equal(label[covered], truth[u][covered])
        np.testing.assert_array_equal(image[covered], seq.frames[u][covered])  # the pair stays aligned
        assert set(np.unique(label[covered])) == set(np.unique(truth[u][covered])) and (label[covered] > 0).any()
    # config.motion='optical_flow' chains the sequence's stored flows (here exact), picked
    # for the warp's grid: the same pairs as the true motion.
    by_flow = dm.joint_propagation(seq, plan, dm.optical_flow_motion(seq, warp), num_classes=3, warp=warp, batch_size=4)
    assert sorted(by_flow) == sorted(pairs)
    for u in pairs:
        np.testing.assert_array_equal(by_flow[u][0], pairs[u][0])
        np.testing.assert_array_equal(by_flow[u][1], pairs[u][1])
    # A padded chain's extra step from the video's edge rows stays inside the video.
    edge = dm.optical_flow_motion(seq, warp)(None, None, np.array([len(seq) - 1, 0]), np.array([1, -1]))
    assert edge.shape == (2, h, w, 2)


def test_propagation_quality_scores_d_r_against_the_held_back_labels():
    seq, truth = _panning_sequence()
    plan = dm.propagation_plan(seq, 2)
    h, w = seq.frames.shape[1:3]
    exact = lambda frames, flows, rows, directions: np.stack([np.broadcast_to(-V * d, (h, w, 2)) for d in directions]).astype(np.float32)
    still = lambda frames, flows, rows, directions: np.zeros((len(rows), h, w, 2), np.float32)
    # The exact motion recovers every held-back label (where it covers) and the frame itself.
    q = dm.propagation_quality(seq, dm.joint_propagation(seq, plan, exact, num_classes=3, warp="forward", batch_size=4), plan, 3)
    assert sorted(q) == ["all", "k=1", "k=2"] and q["all"]["frames"] == q["all"]["labelled_frames"] == 6
    assert q["k=1"]["frames"] == 3 and q["all"]["label_iou"] == q["all"]["label_dice"] == 1.0
    assert q["all"]["psnr_db"] > 100 and q["all"]["zero_motion_psnr_db"] < 20  # random texture, shifted
    # Border holes: a k-step chain leaves the strips the pan uncovered (1 row and 2 columns per step).
    assert q["k=1"]["coverage"] == pytest.approx((h - 1) * (w - 2) / (h * w))
    # Copying L_l unchanged scores what the metric gives for it, on the covered pixels.
    u, (l, _, k) = 3, plan[3]
    covered = np.zeros((h, w), bool)
    covered[k:, 2 * k :] = True  # from l = 5 back to 3, the top k rows and left 2k columns are holes
    counts = metrics.confusion_counts(seq.masks[l][None].astype(np.int32), np.where(covered, truth[u], 255)[None], 3)
    expect = metrics.frame_scores(counts)["dice"][0]
    pairs = dm.joint_propagation(seq, {u: (l, -1, k)}, exact, num_classes=3, warp="forward", batch_size=1)
    np.testing.assert_array_equal(pairs[u][1] != 255, covered)
    assert dm.propagation_quality(seq, pairs, {u: (l, -1, k)}, 3)["all"]["zero_motion_dice"] == pytest.approx(expect)
    assert expect < 0.95
    # No motion at all is no better than copying the label.
    q0 = dm.propagation_quality(seq, dm.joint_propagation(seq, plan, still, num_classes=3, warp="forward", batch_size=4), plan, 3)
    assert q0["all"]["label_dice"] == pytest.approx(q0["all"]["zero_motion_dice"]) and q0["all"]["coverage"] == 1.0
    # Frames without ground truth are counted but not scored.
    seq.true_masks = np.full_like(truth, 255)
    blind = dm.propagation_quality(seq, pairs, {u: (l, -1, k)}, 3)["all"]
    assert blind["frames"] == 1 and blind["labelled_frames"] == 0 and blind["label_dice"] is None and blind["psnr_db"] > 100


def test_history_in_reconstruct_mode_holds_the_frame_stepped_into_and_its_flow():
    seq, _ = _panning_sequence()
    # forward warp: frames p − d, p, p + d and the flows in the direction of travel
    frames, flows = dm.history(seq, 3, +1, "reconstruct", "forward")
    np.testing.assert_array_equal(frames, seq.frames[[2, 3, 4]])
    np.testing.assert_array_equal(flows, seq.flow_fwd[[2, 3]])  # F_{2→3}, F_{3→4}
    frames, flows = dm.history(seq, 3, -1, "reconstruct", "forward")
    np.testing.assert_array_equal(frames, seq.frames[[4, 3, 2]])
    np.testing.assert_array_equal(flows, seq.flow_bwd[[4, 3]])  # F_{4→3}, F_{3→2}
    # backward warp: the flows pointing back, on the grid of the later frame (where T samples)
    frames, flows = dm.history(seq, 3, +1, "reconstruct", "backward")
    np.testing.assert_array_equal(flows, seq.flow_bwd[[3, 4]])  # F_{3→2}, F_{4→3}
    frames, flows = dm.history(seq, 3, -1, "reconstruct", "backward")
    np.testing.assert_array_equal(flows, seq.flow_fwd[[2, 1]])  # F_{3→4}, F_{2→3}
    # the video's edges: repeated frames with zero flow
    frames, flows = dm.history(seq, 7, +1, "reconstruct", "forward")
    np.testing.assert_array_equal(frames, seq.frames[[6, 7, 7]])
    np.testing.assert_array_equal(flows[0], seq.flow_fwd[6])
    np.testing.assert_array_equal(flows[1], 0)
    frames, flows = dm.history(seq, 0, +1, "reconstruct", "backward")
    np.testing.assert_array_equal(frames, seq.frames[[0, 0, 1]])
    np.testing.assert_array_equal(flows[0], 0)
    np.testing.assert_array_equal(flows[1], seq.flow_bwd[1])
    with pytest.raises(ValueError, match="inputs='future'"):
        dm.history(seq, 3, +1, "future", "forward")


@pytest.mark.parametrize("warp", ["forward", "backward"])
def test_reconstruct_history_gives_g_the_flow_of_the_very_step_it_warps(warp):
    """A motion model that returns its last input flow unchanged (what a reconstructing G
    refines) propagates with the exact stored flow, for either warp."""
    seq, truth = _panning_sequence()
    plan = dm.propagation_plan(seq, 2)
    last_flow = lambda frames, flows, rows, directions: np.asarray(flows)[:, -1]
    pairs = dm.joint_propagation(seq, plan, last_flow, num_classes=3, warp=warp, batch_size=4, inputs="reconstruct")
    by_flow = dm.joint_propagation(seq, plan, dm.optical_flow_motion(seq, warp), num_classes=3, warp=warp, batch_size=4)
    assert sorted(pairs) == sorted(by_flow) == [1, 2, 3, 4, 6, 7]
    for u in pairs:
        np.testing.assert_array_equal(pairs[u][0], by_flow[u][0])
        np.testing.assert_array_equal(pairs[u][1], by_flow[u][1])


def test_quality_scores_the_optical_flow_propagation_beside_g_and_the_copied_label():
    seq, truth = _panning_sequence()
    plan = dm.propagation_plan(seq, 2)
    h, w = seq.frames.shape[1:3]
    still = lambda frames, flows, rows, directions: np.zeros((len(rows), h, w, 2), np.float32)
    g_pairs = dm.joint_propagation(seq, plan, still, num_classes=3, warp="forward", batch_size=4)
    by_flow = dm.joint_propagation(seq, plan, dm.optical_flow_motion(seq, "forward"), num_classes=3, warp="forward", batch_size=4)
    q = dm.propagation_quality(seq, g_pairs, plan, 3, by_flow)
    for group in ("all", "k=1", "k=2"):
        assert {"optical_flow_iou", "optical_flow_dice", "optical_flow_coverage", "optical_flow_psnr_db"} <= set(q[group])
    # the stored flow is exact here: its labels are right wherever they land; G standing still is the copy
    assert q["all"]["optical_flow_iou"] == q["all"]["optical_flow_dice"] == 1.0
    assert q["all"]["label_dice"] == pytest.approx(q["all"]["zero_motion_dice"]) and q["all"]["label_dice"] < 1.0
    assert q["k=1"]["optical_flow_coverage"] == pytest.approx((h - 1) * (w - 2) / (h * w)) and q["all"]["coverage"] == 1.0
    assert "optical_flow_iou" not in dm.propagation_quality(seq, g_pairs, plan, 3)["all"]  # without the baseline pairs
