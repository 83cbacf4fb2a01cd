"""Dual Motion Flow's segmentation stage (Sec. 2.3): the rebuilt sequence and the clips of
Dual MF★."""

from __future__ import annotations

import numpy as np

from jaxsurg.data.sequences import LabelledFrames
from jaxsurg.methods.dual_motion import segment as dm

from dmf_helpers import _panning_sequence  # tests/methods/dual_motion/dmf_helpers.py


def test_rebuilt_sequence_clips_never_cross_a_gap():
    seq, _ = _panning_sequence()

    class Fake:
        def __init__(self, positions):
            self.position = np.asarray(positions, float)
            self.video_id = np.zeros(len(positions), int)

        def __len__(self):
            return len(self.position)

    d_l = LabelledFrames(seq)  # positions 0, 5
    d_r = Fake([1, 2, 4, 6, 7])  # 3 unreachable
    d_c = Fake([p + 0.5 for p in range(7) if p != 3])
    (video,) = dm.rebuilt_sequence(d_l, [d_r, d_c])
    assert [e[0] for e in video] == [0, 0.5, 1, 1.5, 2, 2.5, 4, 4.5, 5, 5.5, 6, 6.5, 7]
    clips = dm.convlstm_clips([video], 5)
    assert len(clips) == 2 + 3  # 0…2.5 (6 entries) gives 2 clips, 4…7 (7 entries) 3
    assert clips[0][0] == (d_l, 0) and clips[0][1] == (d_c, 0)
