"""Laparoflow-SSL configuration checks (Moens et al. 2024): the representation stride of
its SegFormer-B0 backbone (Sec. 2.4), the pretraining losses (Eq. (1) with s^(2,3) and the
ablations of Appendix C), the downstream heads, the pretraining steps kept and used, the
validation plateau and the segmentation task of each dataset."""

from __future__ import annotations

import math

import ml_collections

from jaxsurg.config import check_size

STRIDE = 4  # SegFormer's representation grid: 1/4 of the input
# The paper's 4 classes where the dataset has them (CholecSeg8k, m2caiSeg), else instrument vs background.
TASK_FOR_DATASET = {"synthetic": "binary", "cholecseg8k": "laparoflow4", "m2caiseg": "laparoflow4", "endovis17": "binary", "labelme": "binary"}
LOSSES = ("flow", "flow_only", "view", "flow+view")
HEADS = ("side_tune", "linear_probe")  # config.head: the paper's side-tune head | a linear probe of the frozen representations


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_pretrain_steps(config: ml_collections.ConfigDict) -> None:
    """Checks ``pretrain.use_step`` against the kept steps once ``pretrain.total_steps`` is
    resolved: −1 (the finished pretraining), 0 (its starting point), ``total_steps`` or one
    of ``keep_steps``; every kept step at most ``total_steps``.

    Raises:
      ValueError: naming the keys and the steps that exist.
    """
    p = config.pretrain
    total, keep, use = int(p.total_steps), tuple(int(k) for k in p.keep_steps), int(p.use_step)
    if any(k > total for k in keep):
        raise ValueError(f"config.pretrain.keep_steps={keep}: steps past pretrain.total_steps={total}")
    if use not in (-1, 0, total) and use not in keep:
        raise ValueError(
            f"config.pretrain.use_step={use} is not kept: use -1 (the finished pretraining, step {total}), 0 (its "
            f"random starting point) or one of config.pretrain.keep_steps={keep}"
        )


def resolve_task(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``task = "auto"`` → ``TASK_FOR_DATASET``: the paper's 4 classes on CholecSeg8k and
    m2caiSeg, instrument vs background elsewhere; checks the loss, the baseline, the head,
    the validation keys, the kept and used pretraining steps (``check_pretrain_steps``
    checks them again once the steps are resolved), the view grid keys and the frame sizes
    (multiples of ``STRIDE``). Returns a copy.

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
    if c.head not in HEADS:
        raise ValueError(f"config.head={c.head!r}; known: {HEADS}")
    if not (_is_int(c.val_frames) and c.val_frames >= 0 and _is_int(c.val_every) and c.val_every >= 1 and _is_int(c.patience) and c.patience >= 1):
        raise ValueError(
            f"config.val_frames={c.val_frames!r} (>= 0), val_every={c.val_every!r} and patience={c.patience!r} (>= 1) "
            "must be integers"
        )
    p = c.pretrain
    keep = tuple(p.keep_steps) if isinstance(p.keep_steps, (tuple, list)) else None
    if keep is None or not all(_is_int(k) and k > 0 for k in keep):
        raise ValueError(f"config.pretrain.keep_steps={p.keep_steps!r}: a tuple of positive step numbers, e.g. '(250, 1000)'")
    if not (_is_int(p.use_step) and p.use_step >= -1):
        raise ValueError(f"config.pretrain.use_step={p.use_step!r}: -1 (the finished pretraining), 0 (no pretraining) or a kept step")
    if c.baseline == "nossl" and p.use_step != -1:
        raise ValueError(
            f"config.pretrain.use_step={p.use_step} with baseline='nossl': No SSL has no pretraining (it trains every "
            "parameter from random); frozen random features are pretrain.use_step=0 without the baseline"
        )
    if not (isinstance(p.grid_offset, (int, float)) and math.isfinite(p.grid_offset) and abs(p.grid_offset) < STRIDE):
        raise ValueError(f"config.pretrain.grid_offset={p.grid_offset!r}: pixels in (-{STRIDE}, {STRIDE}) (0: SegFormer's receptive centres)")
    if not (_is_int(p.valid_radius) and p.valid_radius >= 0):
        raise ValueError(f"config.pretrain.valid_radius={p.valid_radius!r}: an integer >= 0 (pixels)")
    for key in ("pretrain.view_size", "image_size", "keypoints.image_size"):
        check_size(c, key, STRIDE, what="the representation grid is 1/4 of the input")
    return c
