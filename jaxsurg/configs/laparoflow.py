"""Laparoflow-SSL (Moens et al. 2024): optical-flow-guided self-supervised SegFormer-B0
pretraining, then tiny-label segmentation and key points — jaxsurg's main job.

    python -m jaxsurg.main --config=configs/laparoflow.py --workdir=/tmp/lssl
    python -m jaxsurg.main --config=configs/laparoflow.py:baseline=nossl --workdir=/tmp/nossl
    python -m jaxsurg.main --config=configs/laparoflow.py:variant=tiny --workdir=/tmp/t
    python -m jaxsurg.main --config=configs/laparoflow.py --workdir=/tmp/real \\
        --config.dataset=cholecseg8k --config.data_dir=../shared/data/cholecseg8k_clip \\
        --config.pretrain.sources='("train","video")' --config.pretrain.video_dir=../shared/data/cholec_video

Stages (each resumable, each with its own checkpoints under WORKDIR/<stage>/):
``pretrain`` (skipped by ``baseline=nossl``) → ``finetune`` → ``eval`` → ``keypoints``
(where the dataset has key points).

Pretraining length (one pretraining, several fine-tunings; each cell reuses the first's
``pretrain`` stage through ``--config.stages_from``, as ``python -m jaxsurg.sweep`` does):

    ... "--config.pretrain.keep_steps=(250,1000)" --config.pretrain.use_step=250 \\
        --config.val_frames=16 --config.patience=5 [--config.head=linear_probe]

``task`` "auto" is the binary instrument task on the synthetic data and the paper's 4
classes (fat, instrument, gallbladder, background) on CholecSeg8k.

Variants: ``tiny`` (CI smoke test: its scores test the code path, they are not a result),
``default`` (at most 15 minutes on a 2-core CPU), ``paper`` (the published settings, for
accelerators; see REFERENCE.md).
"""

import ml_collections

from jaxsurg.config import base_config, make_config, stage_block


def _tiny(c):
    c.image_size = (32, 32)
    c.total_steps = 3
    c.batch_size = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.num_overlays = 2
    c.num_labelled = 4
    c.pretrain.total_steps = 3
    c.pretrain.batch_size = 2
    c.pretrain.resize = (48, 64)
    c.pretrain.view_size = (32, 32)
    c.pretrain.checkpoint_every = 2
    c.pretrain.quantile_frames = 4
    c.pretrain.pca_frames = 2
    c.keypoints.total_steps = 2
    c.keypoints.batch_size = 2
    c.keypoints.num_labelled = 4
    c.keypoints.image_size = (32, 32)
    c.keypoints.log_every = 1
    c.keypoints.checkpoint_every = 2


def _default(c):
    # Sized to finish within 15 minutes on a 2-core CPU (build, compile, three stages, eval).
    c.image_size = (128, 128)
    c.total_steps = 200
    c.batch_size = 8
    c.log_every = 20
    c.checkpoint_every = 100
    c.pretrain.total_steps = 240
    c.pretrain.batch_size = 8
    c.pretrain.resize = (128, 160)
    c.pretrain.view_size = (128, 128)
    c.pretrain.num_pairs = 256  # of 1024 representation pixels: the exact N² sum is the CPU's bottleneck
    c.pretrain.log_every = 20
    c.pretrain.checkpoint_every = 120
    c.keypoints.total_steps = 150
    c.keypoints.log_every = 20
    c.keypoints.checkpoint_every = 100


def _paper(c):
    # Moens et al. 2024: 256×256 views, 16 anchors per image, 1,000,000 pretraining batches,
    # batch 8 everywhere; optimiser and learning rates are not given in the paper — we use
    # SegFormer's AdamW recipe (6e-5, weight decay 0.01) for pretraining.
    c.image_size = (256, 256)
    c.total_steps = 20_000
    c.batch_size = 8
    c.log_every = 100
    c.checkpoint_every = 2000
    c.pretrain.total_steps = 1_000_000
    c.pretrain.batch_size = 8
    c.pretrain.resize = (256, 456)
    c.pretrain.view_size = (256, 256)
    c.pretrain.learning_rate = 6e-5
    c.pretrain.weight_decay = 0.01
    c.pretrain.warmup_steps = 1500
    c.pretrain.log_every = 100
    c.pretrain.checkpoint_every = 10_000
    c.pretrain.quantile_frames = 2000
    c.keypoints.total_steps = 20_000
    c.keypoints.num_labelled = 64
    c.keypoints.image_size = (256, 256)
    c.keypoints.log_every = 100
    c.keypoints.checkpoint_every = 2000
    c.model.dtype = "bfloat16"


VARIANTS = {"tiny": _tiny, "default": _default, "paper": _paper}


def get_config(arg=None):
    """The Laparoflow-SSL config; ``arg`` like ``variant=tiny,baseline=nossl``."""
    c = base_config()
    c.method = "laparoflow"
    c.task = "auto"  # binary on synthetic, laparoflow4 on cholecseg8k
    c.baseline = ""  # "" = Laparoflow-SSL; "nossl" = same network, random init, all trained
    c.num_labelled = 16  # labelled training frames for fine-tuning, chosen by config.seed
    c.head = "side_tune"  # side_tune (the paper's: side-tune network + head, CE + Lovász) | linear_probe (1×1 conv on the frozen representation, CE)
    c.val_frames = 0  # > 0: fine-tune to a plateau, scored on this many more labelled training frames (disjoint, chosen by seed); 0 = total_steps
    c.val_every = 50  # steps between validation scorings (val_frames > 0)
    c.patience = 5  # stop after this many scorings without a lower validation loss; the best scoring's variables are kept
    # The top-level stage fields are the finetune stage's (Adam, constant learning rate).
    c.learning_rate = 1e-3
    c.augment.hflip = True
    c.model = ml_collections.ConfigDict(dict(
        variant="b0",  # MiT-B0 sizes (REFERENCE.md)
        out_dim=256,  # per-pixel representation size
        drop_path=0.1,  # stochastic depth rate of the MiT blocks
        dropout=0.1,  # dropout rate of the MiT blocks
        dtype="float32",  # computation dtype; bfloat16 on TPU
        pretrained_segformer="",  # optional Hugging Face SegFormer .safetensors / state_dict for the backbone
    ))
    c.pretrain = stage_block(
        dict(
            sources=("train",),  # "train" (training frames of config.dataset) and/or "video"
            video_dir="",  # mp4 files / frame folders for the "video" source
            video_builder_config="",  # surgical_video builder overrides, e.g. "fps=5,max_side=480"
            resize=(128, 160),  # frames are resized to this (H, W) before the views are cut
            view_size=(128, 128),  # (H, W) of both views (the paper: 256×256)
            loss="flow",  # flow (paper, s^(2,3)) | flow_only (C.1, s^(1,1)) | view (C.2) | flow+view (C.3)
            num_anchors=16,  # anchors per image
            num_pairs=0,  # > 0: per anchor, this many positives and negatives drawn (unbiased); 0 = all pairs (exact)
            min_flow=1 / 3,  # px; slower anchors are skipped
            tau0=0.07,  # similarity temperature τ0 of Eq. (5)
            negative_weight=10.0,  # λ on negative similarities in Eq. (1)
            counterpart_weight=4.0,  # positive weight of the exact cross-view counterpart
            tau_quantiles=(0.25, 0.75),  # τ_P, τ_N = these quantiles of the relative flow distances
            tau_p=0.0,  # > 0 fixes τ_P instead of estimating it
            tau_n=0.0,  # > 0 fixes τ_N instead of estimating it
            quantile_frames=200,  # frames sampled to estimate τ_P, τ_N
            radius_fraction=1 / 3,  # view-contrastive negatives lie beyond this fraction of the width
            max_zoom=1.5,  # views are zoomed by up to this factor
            rotate=True,  # views are rotated at random
            flip=True,  # views are flipped at random
            fov_threshold=12,  # brightness under which border-connected pixels are outside the endoscope
            pca_frames=4,  # test frames in the PCA picture of the representations
            grid_offset=0.0,  # px: representation cell i is centred on pixel 4i + grid_offset (0: SegFormer's receptive centres, view_geometry.py)
            valid_radius=3,  # px: a representation pixel counts when the valid mask holds this far around its centre (3: the first 7×7 conv's taps)
            keep_steps=(),  # steps of this pretraining whose backbone is kept (pretrain/kept/), e.g. (250, 1000)
            seed=-1,  # seeds the pretraining (init, views, anchors, batches, τ's frames); -1 = config.seed. A fixed value lets runs of several seeds share one pretraining
            use_step=-1,  # backbone the downstream stages read: -1 the finished pretraining, 0 its random start (frozen), or a kept step
        ),
        # The paper gives no optimiser: SegFormer's AdamW with warm-up and cosine decay.
        total_steps=1000, batch_size=8, optimizer="adamw", lr_schedule="warmup_cosine", learning_rate=1e-3,
        weight_decay=1e-4, warmup_steps=50, log_every=10, checkpoint_every=500,
    )
    c.keypoints = stage_block(
        dict(
            enabled=True,  # runs where the dataset has key points (synthetic), or on keypoints.dataset
            dataset="",  # key-point dataset beside the segmentation one (the paper: endovis15_keypoints); "" = config.dataset
            data_dir="",  # raw files of keypoints.dataset
            num_labelled=16,  # frames with key points for the key-point head, chosen by config.seed
            image_size=(128, 128),  # (H, W) key-point training crops
            sigma=3.0,  # px, Gaussian targets at the training resolution
            threshold=0.5,  # heat-map peaks above this are key points
            nms_radius=6,  # px
            match_radius=20.0,  # px at 256×256 (Du et al. 2018)
        ),
        total_steps=200, batch_size=8, learning_rate=1e-3, log_every=10, checkpoint_every=200,
    )
    return make_config(arg, c, VARIANTS)
