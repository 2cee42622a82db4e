"""Mesh, shardings and the one host-to-device path for batches.

Training is data parallel: one mesh axis, `data`, spans every device of every
process. The train state is replicated; every batch array is split along its
leading (batch) axis. Batches reach the devices only through `shard_batch`,
which wraps `jax.make_array_from_process_local_data`, so each process hands over
only its own rows and no process ever holds the global batch.

The `data` axis is an `Auto` axis: the compiler propagates the batch sharding
through the model. With a single data-parallel axis, explicit sharding types
would add nothing but would have to be threaded through every model op.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over all devices of all processes.

    Args:
      num_devices: use only the first `num_devices` of `jax.devices()` (single
        process only; e.g. to compare 1 and 8 devices in one process). None uses all.

    Returns:
      A `Mesh` of shape `{"data": n}`.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(
                f"num_devices={num_devices} but {len(devices)} devices are available; "
                f"pass a number from 1 to {len(devices)}, or None for all"
            )
        if num_devices != len(devices) and jax.process_count() > 1:
            raise ValueError(
                "num_devices must be None (all devices) when running several processes: "
                "every process has to own part of the mesh"
            )
        devices = devices[:num_devices]
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over `data`, the other axes whole (for `[B, ...]` arrays)."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (train state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def num_data_shards(mesh: Mesh) -> int:
    """How many ways the batch is split: the size of the `data` axis."""
    return int(mesh.shape[DATA_AXIS])


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError unless `global_batch_size` splits evenly over the `data` axis.

    The message names the batch size, the device count and what to change, so it
    can be raised before the input pipeline is even built.
    """
    n = num_data_shards(mesh)
    if global_batch_size % n:
        up = -(-global_batch_size // n) * n
        per_process = ""
        if jax.process_count() > 1:
            per_process = (
                f" ({global_batch_size // jax.process_count()} per process x "
                f"{jax.process_count()} processes)"
            )
        raise ValueError(
            f"global batch size {global_batch_size}{per_process} does not divide over "
            f"{n} devices on the '{DATA_AXIS}' mesh axis; set the batch size to a multiple "
            f"of {n} (e.g. {up}) or run on a device count that divides {global_batch_size}"
        )


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local NumPy batch -> global jax.Arrays sharded along `data`.

    Every process passes its own rows (the pipeline reads
    `records[process_index::process_count]`); the global batch is their
    concatenation in process order, `B_global = B_local * process_count`.

    Args:
      batch: dict of arrays `[B_local, ...]`, all with the same leading size.
      mesh: from `make_mesh`.

    Returns:
      dict of `[B_global, ...]` arrays with `data_sharding(mesh)`.

    Raises:
      ValueError: when an entry has no batch axis, the leading sizes differ, or
        `B_global` does not divide over the devices of the `data` axis.
    """
    if not batch:
        raise ValueError("shard_batch got an empty batch")
    sizes = {}
    for key, value in batch.items():
        if np.ndim(value) == 0:
            raise ValueError(f"batch entry {key!r} is a scalar; every entry needs a batch axis")
        sizes[key] = np.shape(value)[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch entries have different leading sizes: {sizes}")
    local = next(iter(sizes.values()))
    check_batch_size(local * jax.process_count(), mesh)
    sharding = data_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
    }
