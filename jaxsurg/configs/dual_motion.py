"""Dual Motion Flow (Zhao et al., MICCAI 2020): semi-supervised segmentation with labels
propagated by learned motion (flow predictor + joint propagation, flow compensator).

    python -m jaxsurg.main --config=configs/dual_motion.py --workdir=/tmp/dmf
    python -m jaxsurg.main --config=configs/dual_motion.py:variant=tiny --workdir=/tmp/t
    python -m jaxsurg.main --config=configs/dual_motion.py:segment=single --workdir=/tmp/smf
    python -m jaxsurg.main --config=configs/dual_motion.py:segment=dual_convlstm --workdir=/tmp/dmf_star

Stages (each resumable, each with its own outputs under WORKDIR/<stage>/): ``flow_predictor``
→ ``propagate`` (D_R, sequence.png) → ``compensator`` (D_C) → ``segment`` → ``eval``.
``segment``: ``dual`` (D_L ∪ D_R ∪ D_C, Dual MF), ``single`` (D_L ∪ D_R, Single MF),
``dual_convlstm`` (Dual MF★). The paper's "U-Net11 on D_L only" baseline is
``configs/unet11.py`` with the same ``label_interval`` (e.g.
``configs/unet11.py:label_interval=5``).

Variants: ``tiny`` (CI smoke test, ~2 minutes: its scores test the code path, they are not a
result), ``default`` (at most 15 minutes on a 2-core CPU), ``paper`` (the published
settings, for accelerators; see REFERENCE.md).
"""

import ml_collections

from jaxsurg.config import base_config, make_config, stage_block


def _tiny(c):
    c.resize = (64, 64)
    c.image_size = (64, 64)
    c.total_steps = 3
    c.batch_size = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.num_overlays = 2
    c.generate_batch = 4
    c.model.num_filters = 8
    for sub in (c.flow_predictor, c.compensator):
        sub.total_steps = 2
        sub.batch_size = 2
        sub.base_features = 8
        sub.log_every = 1
        sub.checkpoint_every = 2
    c.flow_predictor.perceptual_layers = ("relu1_2", "relu2_2")
    c.compensator.perceptual_layers = ("relu2_2",)


def _default(c):
    # Sized to finish within 15 minutes on a 2-core CPU (build, flows, four trainings, eval):
    # measured 14.9 min on a loaded 2-core machine with 200 segmentation steps (G 99 s,
    # propagate 8 s, compensator 179 s, segment 566 s, eval 25 s), hence 150.
    c.resize = (128, 192)
    c.image_size = (128, 160)
    c.total_steps = 150
    c.batch_size = 4
    c.log_every = 20
    c.checkpoint_every = 100
    c.flow_predictor.total_steps = 60
    c.flow_predictor.base_features = 16
    c.flow_predictor.perceptual_layers = ("relu1_2", "relu2_2")
    c.flow_predictor.log_every = 10
    c.flow_predictor.checkpoint_every = 30
    c.compensator.total_steps = 60
    c.compensator.base_features = 16
    c.compensator.perceptual_layers = ("relu2_2",)
    c.compensator.log_every = 10
    c.compensator.checkpoint_every = 30


def _paper(c):
    # REFERENCE.md "Dual Motion Flow": frames resized to 640×512 (the code's; multiples of 64
    # for G), random 448×448 crops; the framework (G, compensator) with Adam ÷10 every 150
    # epochs (paper) at the code's rates: G lr 1e-4, batch 4; compensator lr 2e-4, batch 2
    # (the paper's 1e-3: --config.flow_predictor.learning_rate=1e-3 ...). 300 epochs is our
    # choice (the paper gives the decay, not the length). Segmentation as Dual MF's U-Net11
    # (REFERENCE.md "U-Net11", configs/unet11.py variant=paper): batch 4, Adam 3e-5, weight
    # decay 1e-4, ×0.9 every 5 epochs, 50 epochs.
    c.resize = (512, 640)
    c.image_size = (448, 448)
    c.batch_size = 4
    c.epochs = 50
    c.learning_rate = 3e-5
    c.weight_decay = 1e-4
    c.lr_decay_factor = 0.9
    c.lr_decay_every_epochs = 5
    c.log_every = 50
    c.checkpoint_every = 1000
    c.model.num_filters = 32
    c.model.dtype = "bfloat16"
    c.flow_predictor.batch_size = 4
    c.flow_predictor.learning_rate = 1e-4
    c.flow_predictor.base_features = 32
    c.flow_predictor.perceptual_layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    c.compensator.batch_size = 2
    c.compensator.learning_rate = 2e-4
    c.compensator.base_features = 32
    c.compensator.perceptual_layers = ("relu4_3",)
    for sub in (c.flow_predictor, c.compensator):
        sub.epochs = 300
        sub.lr_decay_factor = 0.1
        sub.lr_decay_every_epochs = 150
        sub.log_every = 50
        sub.checkpoint_every = 2000


VARIANTS = {"tiny": _tiny, "default": _default, "paper": _paper}


def get_config(arg=None):
    """The Dual Motion Flow config; ``arg`` like ``variant=tiny,segment=single``."""
    c = base_config()
    c.method = "dual_motion"
    c.label_interval = 5  # the paper's 20 % labels: every 5th training frame
    c.segment = "dual"  # dual (D_L ∪ D_R ∪ D_C) | single (D_L ∪ D_R) | dual_convlstm (Dual MF★)
    c.warp = "forward"  # forward (paper: bilinear splatting) | backward (authors' code: sampling, border clamp)
    c.flow_method = "dis"  # host optical flow for F_{t→t−1} (dis | tvl1 | farneback); F_{t→t+1} is the dataset's
    c.vgg16_weights = "random"  # 'torchvision:/p/vgg16.pth' | 'hed:/p.h5' | 'random' (warns: not the paper's features)
    c.motion = "learned"  # learned (G, the paper) | optical_flow (propagate with the stored optical flow: MFTAPNet-style ablation, no G)
    c.propagation_steps = 2  # k: steps of joint propagation from each labelled frame (paper: 1, 2, 4)
    c.generate_batch = 8  # chains / pairs per forward pass when generating D_R and D_C
    c.learning_rate = 1e-4  # the top-level stage fields are the segment stage's
    c.model = ml_collections.ConfigDict(dict(
        num_filters=32,  # U-Net11's nf
        jaccard_weight=0.3,  # TernausNet loss (1 − w)·CE − w·log(soft IoU)
        dtype="float32",  # computation dtype; bfloat16 on accelerators
        pretrained_vgg11="",  # optional torchvision VGG11 state_dict for U-Net11's encoder
    ))
    c.convlstm = ml_collections.ConfigDict(dict(
        clip_length=5,  # consecutive entries of the rebuilt sequence per clip
        layers=2,  # stacked ConvLSTM layers at U-Net11's bottleneck
        lr_convlstm=1e-4,  # Adam learning rate of the ConvLSTM layers
        lr_base=1e-5,  # Adam learning rate of the U-Net11 layers
        init_from="",  # WORKDIR of a finished Dual MF (or Single MF) run: start U-Net11 from its segment stage
    ))
    c.flow_predictor = stage_block(
        dict(
            base_features=32,  # SDC-Net widths 32 … 512
            # zero: final conv zeroed, G starts near zero motion (ours) | sdc: SDC-Net's init, as the
            # authors' code (a fresh G predicts ~30 px flows; after 60 steps its D_R is far worse
            # than copying the labelled frame's label: propagate/quality.json)
            output_init="zero",  # zero | sdc: G's final conv initialisation (see the comment above)
            weights="paper",  # paper: 0.7 L1 + 0.2 perceptual + 0.1 smooth | code: 2 L1 + 1000 Gram + 0.2 smooth + 0.1 image gradient
            perceptual_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),  # VGG16 layers of the perceptual term
            time_reverse_p=0.5,  # probability a training window is reversed in time
        ),
        # An epoch of G (epochs > 0) is the number of training frames.
        total_steps=1000, batch_size=4, learning_rate=1e-4, log_every=10, checkpoint_every=500,
    )
    c.compensator = stage_block(
        dict(
            base_features=32,  # compensator U-Net widths start
            t=0.5,  # intermediate time i of Eq. (4)
            lambda0=1.0,  # λ0 of Eq. (6): L1 weight at frame 0
            lambda_i=0.8,  # λi: L1 weight at the intermediate frame
            lambda1=2.0,  # λ1: L1 weight at frame 1
            lambda_p=0.01,  # λp: perceptual term weight (0 = off)
            perceptual_layers=("relu4_3",),  # VGG16 layers of the perceptual term
            perceptual_distance="l1",  # l1 | l2 distance between VGG16 features
            use_coverage=False,  # L1 terms only over pixels the whole chain of warps covered
        ),
        # An epoch of the compensator (epochs > 0) is the number of training frames.
        total_steps=1000, batch_size=2, learning_rate=2e-4, log_every=10, checkpoint_every=500,
    )
    return make_config(arg, c, VARIANTS)
