"""Data parallelism with ``jax.jit`` over a one-axis device mesh (no ``pmap``).

The train step is written as single-device code over *global* arrays. State is
replicated (``P()``), batches are split along the leading axis over the ``"data"``
mesh axis (``P("data")``); XLA inserts the gradient all-reduce and computes
BatchNorm statistics over the global batch. The same code runs on one CPU, one
GPU, 8 fake CPU devices, or several hosts (after :func:`initialize_distributed`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> bool:
    """Joins a multi-process job when launched as one; returns whether it did.

    Calls ``jax.distributed.initialize()`` (which auto-detects TPU pods, SLURM and
    Open MPI) when ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID`` are set, or when a cluster environment is detected. Must run
    before any other JAX call. Safe to call on a single machine: it does nothing.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    cluster_vars = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID")
    cluster = any(k in os.environ for k in cluster_vars)
    if not (explicit or cluster):
        return False
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    return True


def barrier(name: str, timeout_s: int = 900) -> None:
    """Waits until every process of a multi-process job has reached ``name`` (no-op in a
    one-process job).

    Uses the coordination service's barrier (``timeout_s``), not a device collective:
    the first collective of a CPU job sets up Gloo, whose set-up waits only 30 s for the
    other processes, so processes that reach it far apart (one still loading data on a
    busy host) would fail there. Call it after uneven host work, before the next
    collective. ``name`` must be unique within the job.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client behind jax.distributed.initialize

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(f"jkt:{name}", timeout_s * 1000)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: no devices given")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding for parameters, optimiser state and other per-run state: a copy per device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for batches: leading (example) axis split over ``"data"``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless the global batch splits evenly over devices and processes."""
    n_dev = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n_dev:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the "
            f"number of devices in the mesh ({n_dev})"
        )


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of each global batch that *this* process loads.

    Process ``p`` owns the rows that land on its addressable devices; with the
    default device order those are a contiguous block.
    """
    check_batch_size(global_batch_size, mesh)
    sharding = batch_sharding(mesh)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    starts = sorted(idx[0].start or 0 for idx in index_map.values())
    stops = sorted(
        global_batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()
    )
    lo, hi = starts[0], stops[-1]
    if hi - lo != global_batch_size * len(index_map) // mesh.devices.size:
        raise ValueError("this process's devices do not own a contiguous block of the batch")
    return slice(lo, hi)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_batch_size: int):
    """Assembles global, data-sharded ``jax.Array`` s from this process's rows.

    Args:
      local: arrays whose leading axis holds this process's rows of the global batch
        (``process_rows(global_batch_size, mesh)``).
      mesh: the data mesh.
      global_batch_size: size of the leading axis of the global arrays.

    Returns:
      The same pytree of global arrays with leading dim ``global_batch_size``.
    """
    sharding = batch_sharding(mesh)

    def make(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(
            sharding, x, (global_batch_size, *x.shape[1:])
        )

    return jax.tree.map(make, local)


def process_count_str(mesh: Mesh) -> str:
    """``"8 devices (cpu) in 1 process"``: for run banners."""
    kind = mesh.devices.flat[0].platform
    return (f"{mesh.devices.size} device(s) ({kind}) in {jax.process_count()} process(es)")
