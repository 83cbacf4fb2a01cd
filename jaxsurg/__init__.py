"""jaxsurg: surgical-video segmentation from few or no labels, in JAX/Flax."""

from jaxsurg import xla_cpu as _xla_cpu

# Before any JAX backend exists: XLA:CPU's own convolutions (see jaxsurg/xla_cpu.py).
_xla_cpu.apply()

__version__ = "0.1.0"
