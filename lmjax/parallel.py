"""Multi-process start-up, mesh, shardings and the one host-to-device path for batches.

Training is data parallel: one mesh axis, `data`, spans every device of every
process. The train state is replicated; every batch array is split along its
leading (batch) axis. Batches reach the devices only through `shard_batch`,
which wraps `jax.make_array_from_process_local_data`, so each process hands over
only its own rows and no process ever holds the global batch.

The `data` axis is an `Auto` axis: the compiler propagates the batch sharding
through the model. With a single data-parallel axis, explicit sharding types
would add nothing but would have to be threaded through every model op.

Several processes, one per node (host) driving all of that node's accelerators,
share the one mesh. `initialize` joins them into one job before any JAX backend is
used (`lmjax` calls it first thing in every command); it does nothing for a single
process, so it is needed only

- under SLURM with more than one task (`srun`, `SLURM_NTASKS > 1`): JAX reads the
  coordinator, process count and process id from SLURM's variables itself; or
- with `--coordinator_address`, `--num_processes` and `--process_id` (all three).

`--cpu_collectives=gloo` selects the cross-process collectives of CPU-only jobs;
launch scripts are in `launch/`. Outputs come back the way batches went in:
`host_rows` gives each process the rows of its own batch, and
`merge_process_rows` combines per-record results that every process filled for
its share of a dataset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import flags
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


def replicate(tree, mesh: Mesh):
    """Values that are the same on every process -> arrays replicated over `mesh`.

    With several processes, `jax.device_put` cannot place an array committed to one
    of this process's devices (e.g. freshly initialised parameters) on a sharding
    that spans other processes; such arrays go through
    `host_local_array_to_global_array`, each process supplying its own copy.
    NumPy values and arrays that already span the processes go to `device_put`.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.core.Tracer):  # traced for shapes only (jax.eval_shape)
            return x
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            return multihost_utils.host_local_array_to_global_array(x, mesh, PartitionSpec())
        return jax.device_put(x, sharding)

    return jax.tree.map(one, tree)


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


def host_rows(outputs: Mapping[str, jax.Array], mesh: Mesh) -> dict[str, np.ndarray]:
    """`data`-sharded step outputs -> NumPy rows of this process's batch (`shard_batch`'s inverse).

    With one process this is `np.asarray` of each output. With several, no process
    can read the whole global array; each gets the `[B_local, ...]` rows that belong
    to the rows it passed to `shard_batch`, in the same order.
    """
    if all(x.is_fully_addressable for x in outputs.values()):
        return {key: np.asarray(x) for key, x in outputs.items()}
    from jax.experimental import multihost_utils

    spec = {key: PartitionSpec(DATA_AXIS) for key in outputs}
    local = multihost_utils.global_array_to_host_local_array(dict(outputs), mesh, spec)
    return {key: np.asarray(x) for key, x in local.items()}


def merge_process_rows(filled: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-record results filled by different processes -> the whole table on every process.

    Every process calls this (it is collective when `jax.process_count() > 1`) with
    arrays of the same shape `[N, ...]`, in which it has filled the rows
    `filled [N]` of its share of the records. Row i of each result comes from the
    process that filled it. With one process the arrays are returned unchanged.
    """
    if jax.process_count() == 1:
        return arrays
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(
        (np.asarray(filled, np.int32), *arrays), tiled=False
    )
    owners, tables = gathered[0].astype(bool), gathered[1:]  # [P, N], [P, N, ...]
    merged = [np.array(a) for a in arrays]
    for p in range(owners.shape[0]):
        for out, table in zip(merged, tables, strict=True):
            out[owners[p]] = table[p][owners[p]]
    return tuple(merged)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a host sync when several run)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


# ---------------------------------------------------------------- multi-process start-up

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process: HOST:PORT of process 0, where the coordinator listens "
    "(with --num_processes and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process: how many processes form the job."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process's index, 0 to num_processes - 1."
)
_CPU_COLLECTIVES = flags.DEFINE_enum(
    "cpu_collectives",
    None,
    ["gloo", "mpi"],
    "Cross-process collectives on CPU (jax_cpu_collectives_implementation).",
)

_started = False


def _flag(holder: flags.FlagHolder, value):
    """An explicit argument wins; else the flag's value once flags are parsed."""
    if value is not None:
        return value
    return holder.value if flags.FLAGS.is_parsed() else None


def _slurm_tasks(env: Mapping[str, str]) -> tuple[int, int | None]:
    """(tasks in the SLURM step, nodes in it) from the environment; (1, None) outside."""
    try:
        tasks = int(env.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1, None
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES")
    return tasks, int(nodes) if nodes and nodes.isdigit() else None


def check_arguments(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Raises ValueError (one line) unless the three are all unset or consistent."""
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if all(v is None for v in given.values()):
        return
    missing = [name for name, v in given.items() if v is None]
    if missing:
        have = ", ".join(name for name, v in given.items() if v is not None)
        raise ValueError(f"{have} given without {' and '.join(missing)}; give all three or none")
    if num_processes < 1:
        raise ValueError(f"--num_processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id={process_id} must be from 0 to {num_processes - 1} "
            f"(--num_processes={num_processes})"
        )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. node001:1234"
        )


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Joins the multi-process job if there is one; True when it did (or had before).

    Arguments left as None take the flags of the same name (when absl flags are
    parsed). `environ` is where to look for SLURM's variables (default
    `os.environ`, which JAX then reads itself). Safe to call more than once: later
    calls return at once.

    Raises:
      ValueError: inconsistent arguments (see `check_arguments`).
      RuntimeError: from JAX, e.g. when a backend is already in use or the
        coordinator cannot be reached within its timeout.
    """
    global _started
    if _started or jax.distributed.is_initialized():
        _started = True
        return True
    env = os.environ if environ is None else environ
    coordinator_address = _flag(_COORDINATOR, coordinator_address)
    num_processes = _flag(_NUM_PROCESSES, num_processes)
    process_id = _flag(_PROCESS_ID, process_id)
    cpu_collectives = _flag(_CPU_COLLECTIVES, cpu_collectives)
    check_arguments(coordinator_address, num_processes, process_id)
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is not None:
        # Explicit flags: no cluster detection, which under SLURM would also pin
        # this process to one GPU (SLURM_LOCALID); CUDA_VISIBLE_DEVICES still applies.
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            cluster_detection_method="deactivate",
        )
    else:
        tasks, nodes = _slurm_tasks(env)
        if tasks <= 1 or "SLURM_JOB_ID" not in env:
            return False
        # JAX's SLURM detection makes each task see only GPU SLURM_LOCALID (one
        # process per GPU). With one task per node, an empty list leaves all of the
        # node's GPUs visible to its one process.
        local_device_ids = [] if nodes is not None and tasks == nodes else None
        jax.distributed.initialize(local_device_ids=local_device_ids)
    _started = True
    # A first collective while the processes are still in step (initialize returns
    # when all have connected) sets up the communicators. Gloo gives up after 30 s
    # when the processes reach their first collective further apart than that, as
    # uneven compile times would make them; later collectives wait as long as needed.
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("lmjax.parallel.initialize")
    return True
