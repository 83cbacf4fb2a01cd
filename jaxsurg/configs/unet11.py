"""Supervised TernausNet U-Net11 (the baseline of Dual MF, AGSD and PAT).

    python -m jaxsurg.main --config=configs/unet11.py --workdir=/tmp/unet11
    python -m jaxsurg.main --config=configs/unet11.py:variant=tiny --workdir=/tmp/t
    python -m jaxsurg.main --config=configs/unet11.py --workdir=/tmp/real \
        --config.dataset=cholecseg8k --config.data_dir=../shared/data/cholecseg8k_clip

Variants: ``tiny`` (CI smoke test, under a minute: its scores test the code path, they are
not a result), ``default`` (at most 15 minutes on a 2-core CPU), ``paper`` (the published
settings, for accelerators; see REFERENCE.md).
"""

from jaxsurg.config import base_config, make_config


def _tiny(c):
    c.image_size = (64, 64)
    c.total_steps = 4
    c.batch_size = 2
    c.log_every = 2
    c.checkpoint_every = 2
    c.num_overlays = 2
    c.model.num_filters = 8


def _default(c):
    # Sized to finish within 15 minutes on a 2-core CPU (build, compile, train, evaluate).
    c.image_size = (96, 128)
    c.total_steps = 320
    c.batch_size = 4
    c.learning_rate = 1e-4
    c.log_every = 20
    c.checkpoint_every = 200


def _paper(c):
    # Dual MF's segmentation training (REFERENCE.md, "U-Net11"): 1024×1280 EndoVis 2017
    # frames, batch 4, Adam 3e-5, weight decay 1e-4, ×0.9 every 5 epochs, 50 epochs.
    # TernausNet's own schedule (Adam 1e-4 then 1e-5, batch 6–12) is the alternative:
    # --config.learning_rate=1e-4 --config.lr_decay_factor=0.1 --config.lr_decay_every=...
    c.image_size = (1024, 1280)
    c.batch_size = 4
    c.epochs = 50
    c.learning_rate = 3e-5
    c.weight_decay = 1e-4
    c.lr_decay_factor = 0.9
    c.lr_decay_every_epochs = 5
    c.log_every = 50
    c.checkpoint_every = 1000
    c.model.dtype = "bfloat16"


VARIANTS = {"tiny": _tiny, "default": _default, "paper": _paper}


def get_config(arg=None):
    """The U-Net11 config; ``arg`` like ``variant=tiny,dataset=cholecseg8k``."""
    c = base_config()
    c.method = "unet11"
    c.model = dict(
        num_filters=32,  # TernausNet's nf
        jaccard_weight=0.3,  # w in (1 − w)·CE − w·log(soft IoU)
        dtype="float32",  # computation dtype; bfloat16 on TPU
        pretrained_vgg11="",  # optional torchvision VGG11 state_dict file for the encoder
    )
    return make_config(arg, c, VARIANTS)
