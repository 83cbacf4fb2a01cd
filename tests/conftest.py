"""Puts ``tests/`` on ``sys.path`` so that tests in subfolders (``tests/methods/<method>/``,
mirroring ``jaxsurg/methods/``) import the shared reference helpers (``torch_reference``).

It also gives the session one persistent JAX compilation cache (a temporary folder, removed
at the end, unless ``JAX_COMPILATION_CACHE_DIR`` is set): the end-to-end tests run the same
tiny programs in many subprocesses (a run, its resume, a second method on its outputs), and
XLA:CPU compiling them again each time was a large part of the suite's wall time. The cache
is keyed by the program and its compile options, so no result depends on it."""

import os
import shutil
import sys
import tempfile

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxsurg-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE  # read by jax at import, here and in subprocesses
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
