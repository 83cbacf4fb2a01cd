"""Device mesh, shardings and global batches (single host, multi-device, multi-host).

One mesh axis, ``data``, spans every device of every process; parameters are replicated
and batches are split along their leading axis. The same code runs on one CPU, on 8 fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU and on a
multi-host TPU pod, where each process feeds only its own slice of the global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables through which launchers ask for a multi-process run.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAXSURG_DISTRIBUTED")


def distributed_requested(environ: os._Environ | dict | None = None) -> bool:
    """True when the environment asks for ``jax.distributed.initialize()``.

    That is: ``JAX_COORDINATOR_ADDRESS`` or ``JAXSURG_DISTRIBUTED=1`` is set, or a Cloud
    TPU VM lists more than one worker in ``TPU_WORKER_HOSTNAMES``, or SLURM runs more than
    one task (``SLURM_NTASKS``).
    """
    env = os.environ if environ is None else environ
    if any(env.get(k, "") not in ("", "0") for k in _DISTRIBUTED_ENV):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1


_initialized = False


def initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` once, when the environment asks for it.

    Must run before any other JAX call that touches devices. Cluster details (coordinator,
    process count and id) are auto-detected by JAX on Cloud TPU and SLURM, or read from
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    global _initialized
    if _initialized or not distributed_requested():
        return
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    _initialized = True


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over all devices (of all processes) by default."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy of an array on every device (parameters)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's leading (batch) axis over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The number of examples each process loads for one global batch.

    Raises:
      ValueError: if the global batch does not split evenly over the mesh's devices.
    """
    if global_batch_size % mesh.devices.size:
        raise ValueError(
            f"config.batch_size={global_batch_size} must be a multiple of the number of "
            f"devices ({mesh.devices.size})"
        )
    return global_batch_size // jax.process_count()


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's slice of a batch into global ``jax.Array`` s.

    Args:
      local: dict of numpy arrays whose leading axis is this process's share of the
        global batch (``per_process_batch_size``).
      mesh: the mesh; arrays are sharded along ``data``.

    Returns:
      dict of global arrays with leading axis ``process_count × local`` batch.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
