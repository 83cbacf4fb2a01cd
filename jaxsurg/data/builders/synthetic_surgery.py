"""TFDS builder ``synthetic_surgery``: jaxsurg's embedded default dataset.

Clips rendered by ``jaxsurg.data.synthetic.render_clip`` (no download, no manual dir),
with exact ground truth in the EndoVis 2017 conventions. Splits ``train`` and ``test``
hold different clips: clip i of ``train`` is rendered with seed ``1000·config.seed + i``,
clip i of ``test`` with ``1000·config.seed + 500 + i``. Each clip is one video, its
``video_id`` the render seed.

Features: the common schema (``jaxsurg.data.builders.common``) with tasks ``binary``
(2 classes), ``parts`` (4) and ``type`` (8) — "Other" instruments in ``type`` only, as in
EndoVis 2017 — every frame labelled, and the renderer's
exact flow and flow_valid (not estimated); plus, per frame, ``keypoints`` float32
(3, 4, 2) as (x, y) px in ``synthetic.KEYPOINT_NAMES`` order, ``keypoints_visible`` bool
(3, 4), and ``instrument_type`` int32 (3,) (0 = unused slot), the same for every frame of
a clip.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxsurg.data import synthetic
from jaxsurg.data.builders import common

SLOTS = 3  # instrument slots in the stored key points (renderer: max_instruments ≤ 3)
BINARY_CLASSES = ("background", "instrument")
PARTS_CLASSES = tuple(synthetic.PART_NAMES)
TYPE_CLASSES = ("background",) + tuple(synthetic.INSTRUMENT_TYPES)
TASK_CLASSES = {"binary": BINARY_CLASSES, "parts": PARTS_CLASSES, "type": TYPE_CLASSES}
TEST_SEED_OFFSET = 500
OTHER_TYPE = TYPE_CLASSES.index("Other")


def endovis_task_masks(clip: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """The three task masks of frame ``t`` in the EndoVis 2017 / TernausNet conventions:
    instruments of type "Other" count in the type task only (binary and parts leave them
    as background, as TernausNet's data preparation does).

    Returns:
      dict task → uint8 (H, W).
    """
    other = clip["mask_type"][t] == OTHER_TYPE
    return {
        "binary": np.where(other, 0, clip["mask_binary"][t]).astype(np.uint8),
        "parts": np.where(other, 0, clip["mask_parts"][t]).astype(np.uint8),
        "type": clip["mask_type"][t],
    }


@dataclasses.dataclass(eq=False)
class SyntheticSurgeryConfig(tfds.core.BuilderConfig):
    """Size of the rendered dataset.

    Attributes:
      height, width: frame size in pixels (each ≥ 32).
      frames_per_clip: frames T of every clip.
      train_clips, test_clips: clips per split (each ≤ 500).
      seed: base seed; clip seeds are derived from it (module docstring).
      max_instruments: 1..3 instruments per clip.
      flow_steps_per_pixel: 0 stores the renderer's flow exactly (default; ~0.4 MB per
        192×256 frame, it hardly compresses); n > 0 rounds it to 1/n px (~8× smaller at 16).
    """

    height: int = 192
    width: int = 256
    frames_per_clip: int = 32
    train_clips: int = 10
    test_clips: int = 3
    seed: int = 0
    max_instruments: int = 3
    flow_steps_per_pixel: int = 0


def clip_seeds(config: SyntheticSurgeryConfig, split: str) -> list[int]:
    """Render seeds of the clips of ``split`` (``"train"`` or ``"test"``).

    Raises:
      ValueError: for another split or more than 500 clips in a split.
    """
    if max(config.train_clips, config.test_clips) > TEST_SEED_OFFSET:
        raise ValueError(f"at most {TEST_SEED_OFFSET} clips per split, got {config.train_clips}/{config.test_clips}")
    if split == "train":
        return [1000 * config.seed + i for i in range(config.train_clips)]
    if split == "test":
        return [1000 * config.seed + TEST_SEED_OFFSET + i for i in range(config.test_clips)]
    raise ValueError(f"unknown split {split!r}")


def _pad_slots(array: np.ndarray, axis: int) -> np.ndarray:
    """Zero-pads the instrument axis of a renderer output to ``SLOTS``."""
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, SLOTS - array.shape[axis])
    return np.pad(array, pad)


class SyntheticSurgery(common.FrameSequenceBuilder):
    """Rendered laparoscopic clips with exact masks, flow and key points."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "\"Other\" instruments are rare (p = 0.04), as in EndoVis 2017."}
    BUILDER_CONFIGS = [
        SyntheticSurgeryConfig(
            name="tiny", description="64×80, 2 train clips and 1 test clip of 8 frames (tests, CI)",
            height=64, width=80, frames_per_clip=8, train_clips=2, test_clips=1,
        ),
        SyntheticSurgeryConfig(name="default", description="192×256, 10 train and 3 test clips of 32 frames"),
        SyntheticSurgeryConfig(
            name="related", description="as default, other scenes (base seed 1, no clip shared with default): a related labelled dataset",
            seed=1,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        extra = {
            "keypoints": tfds.features.Tensor(shape=(SLOTS, 4, 2), dtype=np.float32),
            "keypoints_visible": tfds.features.Tensor(shape=(SLOTS, 4), dtype=np.bool_),
            "instrument_type": tfds.features.Tensor(shape=(SLOTS,), dtype=np.int32),
        }
        return self._info_from(
            common.features(tuple(TASK_CLASSES), extra),
            description=__doc__,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(clip_seeds(self.builder_config, split)) for split in ("train", "test")}

    def _generate_examples(self, seeds: list[int]):
        """Yields (key, example) for every frame of the clips rendered from ``seeds``, in order."""
        cfg = self.builder_config
        frames = cfg.frames_per_clip
        total = len(seeds) * frames
        for c, seed in enumerate(seeds):
            clip = synthetic.render_clip(seed, frames, cfg.height, cfg.width, max_instruments=cfg.max_instruments)
            instrument_type = _pad_slots(clip["instrument_type"], 0).astype(np.int32)
            for t in range(frames):
                if t + 1 < frames:
                    flow = common.quantize_flow(clip["flow"][t], cfg.flow_steps_per_pixel)
                    valid = clip["flow_valid"][t]
                else:
                    flow, valid = common.no_flow(cfg.height, cfg.width)
                yield common.example_key(c * frames + t, total), common.example(
                    clip["image"][t],
                    endovis_task_masks(clip, t),
                    has_label=True,
                    flow=flow,
                    flow_valid=valid,
                    video_id=seed,
                    video_name=f"synthetic_seed{seed}",
                    frame_index=t,
                    keypoints=_pad_slots(clip["keypoints"][t], 0).astype(np.float32),
                    keypoints_visible=_pad_slots(clip["keypoints_visible"][t], 0).astype(bool),
                    instrument_type=instrument_type,
                )
