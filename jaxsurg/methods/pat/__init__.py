"""PAT (Ross et al., "Exploiting the potential of unlabeled endoscopic video data with
self-supervised learning", IJCARS 2018): pretrain the segmentation U-Net on an auxiliary task,
re-colourisation of unlabelled frames, then fine-tune it for instrument segmentation.

Planned stages: ``pretrain`` (the U-Net generator G recolours the L channel of CIE L*a*b*
frames into (a, b) against a discriminator D, sec. 2.2.1, Eqs. 1–5) → ``finetune`` (all
pretrained layers kept, the last layer re-initialised, binary cross entropy, sec. 2.2.2) →
``evaluate``.

This release holds the recolourisation pieces only (no ``run`` yet):

- ``colour_rebalancing``: a*, b* histograms of the frames (grid size 1) and the weights P^c
  of the rebalanced loss L2 (Eq. 3): rarity weights after Zhang et al. 2016 by default, the
  paper's literal relative frequency as an option.
- ``recolorization``: the L → ab input / target scaling, the losses L1 (least-squares GAN,
  Eq. 2), L2 (Eq. 3), L3 (Eq. 4), L_G (Eq. 1) with bound-based γ, λ, φ, L_D (Eq. 5), and the
  jitted GAN step (D's update, then G's against the updated D).
- the discriminators are ``jaxsurg.models.discriminators`` (``ResNet18Discriminator``, the
  paper's; ``PatchGAN``, pix2pix's 70×70, as an option).
"""
