"""PAT (Ross et al. 2018): recolourisation GAN pretraining of the U-Net on unlabelled frames,
then fine-tuning for binary instrument segmentation on few labels.

    python -m jaxsurg.main --config=configs/pat.py --workdir=/tmp/pat
    python -m jaxsurg.main --config=configs/pat.py --workdir=/tmp/pat_none --config.pretrain.enabled=False   # no pretraining
    python -m jaxsurg.main --config=configs/pat.py:variant=tiny --workdir=/tmp/t
    python -m jaxsurg.main --config=configs/pat.py:study=fractions --workdir=/tmp/pat_study   # the paper's grid
    python -m jaxsurg.main --config=configs/pat.py --workdir=/tmp/pat_real \\
        --config.dataset=cholecseg8k --config.data_dir=../shared/data/cholecseg8k_clip "--config.resize=(128,224)" \\
        --config.pretrain.sources='("train","video")' --config.pretrain.video_dir=../shared/data/cholec_video
    ... --config.ext.enabled=True   # PAT-Ext: a supervised stage on a related dataset (default: synthetic "related")

Stages (each resumable, each with its own checkpoints under WORKDIR/<stage>/):
``pretrain`` (histograms, GAN, ``pretrain/recolor.png``; skipped by
``pretrain.enabled=False``) → ``ext`` (PAT-Ext, only with ``ext.enabled``) → ``finetune`` (``finetune/split.json``) → ``eval``.

Where a value comes from: "paper" (Ross et al. 2018), "pix2pix" (Isola et al. 2017, whose
colourisation recipe fills what the paper leaves open), "Zhang" (Zhang et al. 2016's
rebalancing), "ours". The paper gives no image size, U-Net widths, optimiser, learning
rates, batch sizes or step counts.

Variants: ``tiny`` (CI smoke test: its scores test the code path, they are not a result),
``default`` (minutes on a 2-core CPU), ``paper`` (the paper's settings where it gives them,
pix2pix's elsewhere; for accelerators).
"""

import ml_collections

from jaxsurg.config import base_config, make_config, stage_block


def _tiny(c):
    c.resize = (32, 32)
    c.epochs = 0
    c.total_steps = 6
    c.batch_size = 2
    c.log_every = 1
    c.checkpoint_every = 3
    c.num_overlays = 2
    # 8 of the tiny build's 16 labelled training frames: 6 to train on, 2 to validate.
    c.labelled_fraction = 0.5
    c.model.num_filters = 8
    # Patience 0: the rate drops after any epoch without improvement, so the path runs.
    c.finetune.plateau_epochs = 0
    c.pretrain.total_steps = 3
    c.pretrain.batch_size = 2
    c.pretrain.log_every = 1
    c.pretrain.checkpoint_every = 2
    c.pretrain.discriminator = "patchgan"
    c.pretrain.patchgan_ndf = 8
    c.pretrain.picture_frames = 2
    # PAT-Ext's related dataset in small: the tiny synthetic build's size, other scenes (base seed 1).
    c.ext.build = "tiny:seed=1"
    c.ext.epochs = 0
    # 16 labelled frames: 12 to train on, 4 to validate; 3 steps of 4 = one epoch, so the
    # validation loss and the plateau run.
    c.ext.total_steps = 3
    c.ext.batch_size = 4
    c.ext.log_every = 1
    c.ext.checkpoint_every = 2


def _default(c):
    # A 2-core CPU: 96×128 frames (synthetic; the real clip needs --config.resize=(128,224)),
    # U-Net11 at its width, a short GAN run and 30 fine-tuning epochs of 1/16 of the labels.
    c.resize = (96, 128)
    c.epochs = 30
    c.batch_size = 4
    c.log_every = 10
    c.checkpoint_every = 100
    c.pretrain.total_steps = 150
    c.pretrain.batch_size = 4
    c.pretrain.log_every = 10
    c.pretrain.checkpoint_every = 75


def _paper(c):
    # The paper: fractions k of the labels, BCE, ×0.1 after a 10-epoch plateau (the defaults).
    # It gives no sizes or schedules: pix2pix's 256-px frames and 200 epochs of Adam 2e-4,
    # β1 0.5 (its 100 constant + 100 decaying epochs, here constant) for the GAN; ours for
    # the fine-tuning (100 epochs, batch 8, Adam 1e-4).
    c.resize = (256, 320)
    c.epochs = 100
    c.batch_size = 8
    c.log_every = 50
    c.checkpoint_every = 1000
    c.pretrain.epochs = 200
    c.pretrain.batch_size = 8
    c.pretrain.log_every = 100
    c.pretrain.checkpoint_every = 5000
    c.model.dtype = "bfloat16"


VARIANTS = {"tiny": _tiny, "default": _default, "paper": _paper}


def get_config(arg=None):
    """The PAT config; ``arg`` like ``variant=tiny,labelled_fraction=0.0625``."""
    c = base_config()
    c.method = "pat"
    for unused in ("image_size", "clip_length", "batch_keys"):  # PAT trains on whole frames at config.resize
        del c[unused]
    c.task = "binary"  # instrument vs background (paper; binary only)
    c.labelled_fraction = 1 / 16  # the paper's k of the labelled training frames (its headline cell, 1/16), chosen by config.seed
    c.num_labelled = 0  # > 0: this many labelled frames instead of the fraction (ours)
    c.labelled_subset = 0  # s: the s-th disjoint block of the seed's permutation of the labelled frames (a fresh draw once blocks run out)
    # The paper's study (sec. 3): "fractions" runs the grid below, one run per arm × fraction × subset, into
    # WORKDIR/study/ with WORKDIR/study.json and study.png ("" = one run with the settings above).
    c.study = ""  # "" | fractions
    c.grid = ml_collections.ConfigDict(dict(
        fractions=(1.0, 0.5, 0.25, 0.125, 0.0625),  # the paper's k
        subsets=3,  # random labelled subsets per fraction (paper: 5; 3 on a CPU)
        arms=("none", "pat", "pat_ext"),  # no pretraining | PAT | PAT-Ext (the paper's three)
    ))
    # The top-level stage fields are the fine-tuning's: Adam (the paper gives no optimiser),
    # learning rate 1e-4 (ours, TernausNet's), constant apart from the plateau reductions.
    c.learning_rate = 1e-4
    c.epochs = 50  # ours (the paper gives none)
    c.batch_size = 8  # ours
    c.augment.hflip = False  # the paper: no data augmentation
    c.model = ml_collections.ConfigDict(dict(
        # The paper's "U-Net" has no published widths: jaxsurg's U-Net11 (TernausNet) with a one-channel input
        # is both the generator (2 outputs, tanh) and the segmentation network (1 logit).
        num_filters=32,  # TernausNet's nf (decoder widths nf·16 … nf; the VGG11 encoder is 64 … 512)
        dtype="float32",  # computation dtype; bfloat16 on accelerators
    ))
    c.finetune = ml_collections.ConfigDict(dict(
        validation_fraction=119 / 532,  # of the labelled frames chosen, the validation split (paper: 119 validation, 413 training)
        plateau_epochs=10,  # epochs without improvement of the validation loss before the rate drops (paper: 10; PyTorch's patience)
        plateau_factor=0.1,  # learning rate × this on a plateau (paper)
        plateau_threshold=1e-4,  # relative improvement that counts (PyTorch ReduceLROnPlateau's default)
    ))
    c.pretrain = stage_block(
        dict(
            enabled=True,  # False = the paper's "no pretraining" arm: the same network randomly initialised
            sources=("train",),  # "train" (every frame of the training part, labels unused) and/or "video"
            video_dir="",  # mp4 files / frame folders for the "video" source (unlabelled video)
            video_builder_config="",  # surgical_video builder overrides, e.g. "fps=5,max_side=480"
            hflip=True,  # random left-right flips of the pretraining frames (pix2pix's default)
            discriminator="resnet18",  # resnet18 (paper: from scratch, sigmoid output) | patchgan (pix2pix's 70×70)
            patchgan_ndf=64,  # PatchGAN's first-layer channels (pix2pix: 64)
            discriminator_mode="train",  # D's BatchNorm in G's pass: train (pix2pix) | eval (running statistics)
            discriminator_learning_rate=2e-4,  # D's Adam rate (pix2pix; learning_rate is G's)
            beta1=0.5,  # Adam β1 of both networks (pix2pix; the paper gives no optimiser)
            beta2=0.999,  # Adam β2 of both networks (pix2pix)
            rebalancing="rarity",  # rarity (Zhang: weights grow with rarity, the text's intent) | literal (Eq. 3: relative frequency)
            rebalancing_mix=0.5,  # Zhang's λ, the uniform part of the rarity weights
            rebalancing_sigma=5.0,  # Zhang's Gaussian smoothing of the histogram, in bins
            histogram_frames=0,  # frames counted for the a*, b* histograms (0 = all, the paper; > 0 drawn by seed)
            picture_frames=4,  # test frames in pretrain/recolor.png
        ),
        # G: Adam 2e-4, β1 0.5 (pix2pix); batch and length ours.
        total_steps=1000, batch_size=8, learning_rate=2e-4, log_every=10, checkpoint_every=500,
    )
    # PAT-Ext (paper, sec. 2.2.3): between pretraining and the fine-tuning, a supervised stage on every labelled
    # training frame of a related dataset (the fine-tuning's recipe: BCE, validation split, plateau), the last layer
    # re-initialised before it and again before the target fine-tuning. For the real clip: the synthetic data.
    c.ext = stage_block(
        dict(
            enabled=False,  # True = PAT-Ext (pretraining, then this stage, then the fine-tuning)
            dataset="synthetic",  # the related labelled dataset (synthetic | cholecseg8k)
            data_dir="",  # its raw files, where the dataset needs them
            build="related",  # its TFDS builder config ("" = the dataset's default; synthetic "related": other scenes than "default")
            label_interval=1,  # every h-th of its training frames is used (1 = all)
        ),
        # Ours (the paper gives no schedule): the fine-tuning's Adam 1e-4, 2 epochs of batch 8.
        epochs=2, batch_size=8, learning_rate=1e-4, log_every=20, checkpoint_every=500,
    )
    return make_config(arg, c, VARIANTS)
