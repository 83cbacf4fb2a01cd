"""Loss functions (pure jnp)."""

from jaxsurg.losses.segmentation import IGNORE_INDEX, cross_entropy, soft_jaccard, ternaus_loss

__all__ = ["IGNORE_INDEX", "cross_entropy", "soft_jaccard", "ternaus_loss"]
