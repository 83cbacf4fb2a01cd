"""Puts ``tests/`` on ``sys.path`` so that tests in subfolders (``tests/methods/<method>/``,
mirroring ``jaxsurg/methods/``) import the shared reference helpers (``torch_reference``)."""

import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
