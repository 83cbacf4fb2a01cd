"""Laparoflow-SSL configuration checks (Moens et al. 2024): the representation stride of
its SegFormer-B0 backbone (Sec. 2.4), the pretraining losses (Eq. (1) with s^(2,3) and the
ablations of Appendix C) and the segmentation task of each dataset."""

from __future__ import annotations

import ml_collections

from jaxsurg.config import check_size

STRIDE = 4  # SegFormer's representation grid: 1/4 of the input
# The paper's 4 classes where the dataset has them (CholecSeg8k, m2caiSeg), else instrument vs background.
TASK_FOR_DATASET = {"synthetic": "binary", "cholecseg8k": "laparoflow4", "m2caiseg": "laparoflow4", "endovis17": "binary", "labelme": "binary"}
LOSSES = ("flow", "flow_only", "view", "flow+view")


def resolve_task(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``task = "auto"`` → ``TASK_FOR_DATASET``: the paper's 4 classes on CholecSeg8k and
    m2caiSeg, instrument vs background elsewhere; checks the loss, the baseline and the frame sizes (multiples of
    ``STRIDE``). Returns a copy.

    Raises:
      ValueError: naming the config key and what was expected.
    """
    c = ml_collections.ConfigDict(config.to_dict())
    if c.task == "auto":
        if c.dataset not in TASK_FOR_DATASET:
            raise ValueError(f"config.task='auto' has no default for dataset {c.dataset!r}; set config.task")
        c.task = TASK_FOR_DATASET[c.dataset]
    if c.pretrain.loss not in LOSSES:
        raise ValueError(f"config.pretrain.loss={c.pretrain.loss!r}; known: {LOSSES}")
    if c.baseline not in ("", "nossl"):
        raise ValueError(f"config.baseline={c.baseline!r}; known: '' (Laparoflow-SSL) and 'nossl'")
    for key in ("pretrain.view_size", "image_size", "keypoints.image_size"):
        check_size(c, key, STRIDE, what="the representation grid is 1/4 of the input")
    return c
