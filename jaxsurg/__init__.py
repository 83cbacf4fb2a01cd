"""jaxsurg: surgical-video segmentation from few or no labels, in JAX/Flax."""

__version__ = "0.1.0"
