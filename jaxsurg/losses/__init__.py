"""Loss functions (pure jnp)."""

from jaxsurg.losses.lovasz import lovasz_hinge, lovasz_softmax, lovasz_softmax_binary
from jaxsurg.losses.perceptual import gram_matrix, perceptual_loss, style_loss
from jaxsurg.losses.segmentation import IGNORE_INDEX, cross_entropy, soft_jaccard, ternaus_loss

__all__ = [
    "IGNORE_INDEX",
    "cross_entropy",
    "gram_matrix",
    "lovasz_hinge",
    "lovasz_softmax",
    "lovasz_softmax_binary",
    "perceptual_loss",
    "soft_jaccard",
    "style_loss",
    "ternaus_loss",
]
