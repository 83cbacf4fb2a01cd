"""XLA:CPU defaults that jaxsurg sets on import: convolutions by XLA's own emitter, not YNNPACK.

On jaxlib 0.10, XLA:CPU hands every convolution, forward and both derivatives, to
YNNPACK ("ynn_fusion" thunks). For U-Net11's train step on a 2-core x86 CPU that is ~1.6×
slower than XLA's own convolutions: 4×128×160, nf = 32, Adam, median of 5 steps alternated
in one process, 2.25 s with YNNPACK convolutions against 1.26 s with YNNPACK kept for
individual dots only (``benchmarks/unet11_train_step.py``, benchmarks/README.md). The
results agree to float32 rounding (losses equal to ~4e-7 relative); only the kernel that
computes them changes.

``apply()`` (called by ``jaxsurg/__init__.py``) appends
``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` to the
``XLA_FLAGS`` environment variable, which XLA reads once, when JAX first initialises its
backends. So it takes effect when jaxsurg is imported before the first JAX computation (as
in ``python -m jaxsurg.main``, the tests and the benchmarks); after that it changes nothing.
It is an XLA:CPU debug option: GPU and TPU programs ignore it.

It is left alone (nothing set) when:
  - ``XLA_FLAGS`` already names ``xla_cpu_experimental_ynn_fusion_type`` (yours wins);
  - ``JAXSURG_XLA_CPU_DEFAULTS=0`` is set in the environment (opt out);
  - the installed jaxlib is outside the versions known to have the flag (0.10, 0.11): XLA
    aborts the process on an unknown flag, so it is never set blind.
"""

from __future__ import annotations

import os
import re
from importlib import metadata

FLAG = "xla_cpu_experimental_ynn_fusion_type"
VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
# jaxlib (major, minor) on which FLAG was checked to exist (0.10.2 here; 0.11.2 on a GPU machine's image).
KNOWN_VERSIONS = ((0, 10), (0, 11))


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        m = re.match(r"(\d+)\.(\d+)", metadata.version("jaxlib"))
    except metadata.PackageNotFoundError:
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def apply(environ: dict | None = None, jaxlib_version: tuple[int, int] | None = None) -> bool:
    """Adds the flag to ``environ["XLA_FLAGS"]`` (default ``os.environ``) unless one of the
    conditions in the module docstring holds. Returns True when it was added."""
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if env.get("JAXSURG_XLA_CPU_DEFAULTS", "1") == "0" or FLAG in flags:
        return False
    version = jaxlib_version if jaxlib_version is not None else _jaxlib_version()
    if version not in KNOWN_VERSIONS:
        return False
    env["XLA_FLAGS"] = f"{flags} --{FLAG}={VALUE}".strip()
    return True
