"""jaxsurg.xla_cpu: when the XLA:CPU convolution default is set, when it is left alone, and
that a process running with it computes the same convolutions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from jaxsurg import xla_cpu

SETTING = f"--{xla_cpu.FLAG}={xla_cpu.VALUE}"


def test_apply_appends_the_flag_to_existing_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.apply(env, jaxlib_version=(0, 10))
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {SETTING}"
    env = {}
    assert xla_cpu.apply(env, jaxlib_version=(0, 10)) and env["XLA_FLAGS"] == SETTING


def test_apply_leaves_the_environment_alone_when_it_should():
    mine = f"--{xla_cpu.FLAG}=LIBRARY_FUSION_TYPE_DOT"
    for env, version in [
        ({"XLA_FLAGS": mine}, (0, 10)),  # the user's own setting wins
        ({"JAXSURG_XLA_CPU_DEFAULTS": "0"}, (0, 10)),  # opt-out
        ({}, (0, 9)),  # a jaxlib on which the flag was not checked: never set blind
        ({}, (1, 0)),
    ]:
        before = dict(env)
        assert not xla_cpu.apply(env, jaxlib_version=version)
        assert env == before


_CHILD = r"""
import json, os, sys
import numpy as np
import jaxsurg  # sets XLA_FLAGS before the first JAX computation
import jax
x = np.asarray(json.loads(sys.argv[1]), np.float32)
k = np.asarray(json.loads(sys.argv[2]), np.float32)
f = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
y, (gx, gk) = jax.value_and_grad(lambda x, k: (f(x, k) ** 2).sum(), argnums=(0, 1))(x, k)
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "y": float(y), "gk": np.asarray(gk).tolist()}))
"""


def test_a_process_importing_jaxsurg_gets_the_flag_and_the_same_convolutions():
    rng = np.random.default_rng(0)
    x, k = rng.normal(size=(2, 9, 11, 3)), rng.normal(size=(3, 3, 3, 4))

    def child(extra_env):
        env = {**os.environ, **extra_env}
        env.pop("XLA_FLAGS", None)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(x.tolist()), json.dumps(k.tolist())],
            env=env, capture_output=True, text=True, check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    with_flag, without = child({}), child({"JAXSURG_XLA_CPU_DEFAULTS": "0"})
    if xla_cpu._jaxlib_version() in xla_cpu.KNOWN_VERSIONS:
        assert SETTING in with_flag["flags"]
    assert SETTING not in without["flags"]
    # float64 reference of the loss: sum over outputs of the squared 3×3 SAME correlation
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(
        np.einsum("nhwc,cd->nhwd", xp[:, i:i + 9, j:j + 11], k[i, j]) for i in range(3) for j in range(3)
    )
    for r in (with_flag, without):
        np.testing.assert_allclose(r["y"], (ref ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(with_flag["gk"], without["gk"], rtol=1e-5, atol=1e-4)
