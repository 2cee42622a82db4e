"""Compilation: JAX's persistent compilation cache and the ahead-of-time compile check.

Persistent cache. `enable_persistent_cache(dir)` makes every XLA executable that
took at least `min_compile_time_s` to compile land in `dir`; a later process with
the same program, devices and versions loads it instead of compiling (on a big
model, minutes saved per start). It has to be called before the first compile of
the process: JAX opens the cache once. `count_cache_events()` counts hits and
misses through `jax.monitoring`, for reports and tests.

The commands that read a trained run (evaluate, calibrate, predict) keep the cache on
by default in a per-user folder (`user_cache_dir`, `default_cache_dir`): their start-up
is then mostly reading, not compiling (see experiments/results/predict_startup_cpu/).

Compile check. `compile_check(config)` answers "does this config compile for this
mesh and global batch, and does it fit?" without running anything: the model, the
optimizer state and the train step are built by `lmjax.train.setup.build` under
`jax.eval_shape` (no parameter is allocated), the batch is `jax.ShapeDtypeStruct`s
shaped like `lmjax.fake_inputs.fake_batch`, and the step is lowered and compiled with
those abstract arguments and their shardings. The report has XLA's per-device
memory analysis, the step's FLOPs and the compile times.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import jax

CACHE_ENV = "LMJAX_COMPILATION_CACHE"  # default of the CLI's --compilation_cache_dir
CACHE_OFF = ("", "0")  # a folder value (flag or environment) that turns the cache off
READER_MIN_COMPILE_TIME_S = 0.1  # see `enable_for_command`
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"


# ---------------------------------------------------------------- persistent cache


def enable_persistent_cache(
    cache_dir: str | os.PathLike,
    *,
    min_compile_time_s: float = 1.0,
    min_entry_size_bytes: int = 0,
) -> str:
    """Turns on JAX's persistent compilation cache in `cache_dir` (created if missing).

    Args:
      cache_dir: folder of the cache; may be shared by runs of the same user (its
        entries are trusted code: never point it at a folder others can write).
      min_compile_time_s: programs that compiled faster are not written (JAX's
        default 1 s keeps small helper programs out).
      min_entry_size_bytes: executables smaller than this are not written.

    Returns:
      The absolute path of the cache folder.

    Raises:
      ValueError: an empty `cache_dir` or a negative threshold.
    """
    if not str(cache_dir):
        raise ValueError("cache_dir is empty; pass a folder to enable the compilation cache")
    if min_compile_time_s < 0 or min_entry_size_bytes < 0:
        raise ValueError(
            f"cache thresholds must be >= 0, got min_compile_time_s={min_compile_time_s}, "
            f"min_entry_size_bytes={min_entry_size_bytes}"
        )
    path = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    # Private to the user where we create it: cache entries are executable code.
    os.makedirs(path, mode=0o700, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    return path


def user_cache_dir() -> str:
    """`$XDG_CACHE_HOME/lmjax/jax`, or `~/.cache/lmjax/jax` without XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lmjax", "jax")


def default_cache_dir(*, on_by_default: bool) -> str:
    """The default of `--compilation_cache_dir`: `$LMJAX_COMPILATION_CACHE` when set
    (empty or "0": off), else `user_cache_dir()` where `on_by_default`, else "" (off)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return "" if env.strip() in CACHE_OFF else env
    return user_cache_dir() if on_by_default else ""


def enable_for_command(flag_value: str | None, *, reader: bool) -> str | None:
    """The cache as a command's `--compilation_cache_dir` asks (None: the flag was not
    given, then `default_cache_dir(on_by_default=reader)`); the folder, or None if off.

    A reader (evaluate, calibrate, predict) caches every program that compiled in
    `READER_MIN_COMPILE_TIME_S` or more: its start-up compiles few programs, each
    well under JAX's 1 s default on a small CPU (the ISBI U-Net's eval step takes
    about 0.5 s on 2 cores), and a cached one costs only its load.
    """
    cache_dir = default_cache_dir(on_by_default=reader) if flag_value is None else flag_value
    if cache_dir.strip() in CACHE_OFF:
        return None
    threshold = READER_MIN_COMPILE_TIME_S if reader else 1.0
    return enable_persistent_cache(cache_dir, min_compile_time_s=threshold)


@contextlib.contextmanager
def count_cache_events() -> Iterator[dict[str, int]]:
    """Counts persistent-cache `hits` and `misses` of the compiles inside the block.

    A miss is a compile that looked in the cache and found nothing (it may then be
    written); compiles that do not consult the cache (cache off) count as neither.

        with count_cache_events() as counts:
            step.lower(state, batch).compile()
        counts["hits"]
    """
    counts = {"hits": 0, "misses": 0}
    names = {CACHE_HIT_EVENT: "hits", CACHE_MISS_EVENT: "misses"}

    def listener(event: str, **_: Any) -> None:
        if event in names:
            counts[names[event]] += 1

    jax.monitoring.register_event_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(listener)


# ---------------------------------------------------------------- compile check


def abstract_build(config, num_landmarks: int, landmark_set=None, *, readers=None):
    """`lmjax.train.setup.build` without allocating: `(mesh, abstract_state,
    train_step, eval_step)`.

    The state is a tree of `jax.ShapeDtypeStruct`s carrying the replicated sharding
    the steps expect; the model, its optimizer state and the steps are exactly those
    of `setup.build` (`readers` go to its eval step), traced under `jax.eval_shape`
    (what `nnx.eval_shape` does for a module), so no array of the model's size is
    ever created.
    """
    from lmjax import parallel
    from lmjax.train import setup

    built = {}

    def state_only():
        # Shapes only: pretrained weights (a file to read) would change no shape.
        mesh, state, train_step, eval_step, _ = setup.build(
            config, num_landmarks, landmark_set, pretrained=False, readers=readers
        )
        built.update(mesh=mesh, train_step=train_step, eval_step=eval_step)
        return state

    shapes = jax.eval_shape(state_only)
    rep = parallel.replicated(built["mesh"])
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
    return built["mesh"], state, built["train_step"], built["eval_step"]


def abstract_batch(
    global_batch: int,
    input_hw: tuple[int, int],
    k: int,
    mesh,
    *,
    keys,
    num_regions: int | None = None,
) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of `keys` as `ShapeDtypeStruct`s split along `data` on `mesh`.

    Shapes and dtypes are those of `lmjax.fake_inputs.fake_batch` with `global_batch`
    rows (one row is made on the host to read them).
    """
    from lmjax import parallel
    from lmjax.fake_inputs import fake_batch

    parallel.check_batch_size(global_batch, mesh)
    one = fake_batch(1, input_hw, k, num_regions=num_regions, pixel_norm="pixel_norm" in keys)
    data = parallel.data_sharding(mesh)
    return {
        key: jax.ShapeDtypeStruct(
            (global_batch, *one[key].shape[1:]), one[key].dtype, sharding=data
        )
        for key in keys
    }


def memory_report(compiled) -> dict[str, int] | None:
    """XLA's per-device memory analysis of a compiled program, in bytes.

    `total_bytes` = arguments + outputs - aliased (donated buffers reused for
    outputs) + temporaries + generated code: what one device must hold while the
    step runs. None where the backend gives no analysis.
    """
    m = compiled.memory_analysis()
    if m is None:
        return None
    r = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "generated_code_bytes": int(m.generated_code_size_in_bytes),
    }
    r["total_bytes"] = (
        r["argument_bytes"]
        + r["output_bytes"]
        - r["alias_bytes"]
        + r["temp_bytes"]
        + r["generated_code_bytes"]
    )
    return r


def device_memory_bytes() -> int | None:
    """Memory of one device as the runtime reports it (`bytes_limit`); None on CPU."""
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats or "bytes_limit" not in stats else int(stats["bytes_limit"])


def abstract_train_step(config, *, num_landmarks: int | None = None):
    """`(train_step, state, batch, mesh)`: the config's jitted train step and abstract
    arguments for it (`abstract_build`, `abstract_batch` at the global batch), ready
    for `train_step.lower(state, batch)`.

    The dataset is read only for its landmark set, unless `num_landmarks` is given
    (then `lmjax.fake_inputs.landmark_set_for` makes one, with regions when needed).
    """
    from lmjax import fake_inputs
    from lmjax.configs import resolve
    from lmjax.task import task_spec
    from lmjax.train import setup

    config = resolve(config)
    landmark_set = fake_inputs.landmark_set_for(config, num_landmarks)
    k = landmark_set.num_landmarks
    mesh, state, train_step, _ = abstract_build(config, k, landmark_set)
    task = task_spec(config, landmark_set.regions)
    batch = abstract_batch(
        config.train.batch_size,
        tuple(config.data.input_size),
        k,
        mesh,
        keys=setup.device_keys(task, augment_on_device=setup.augments_on_device(config)),
        num_regions=landmark_set.num_regions,
    )
    return train_step, state, batch, mesh


def fits_in(memory: dict[str, int] | None, limit_bytes: int | None) -> bool | None:
    """Whether `memory["total_bytes"]` is at most `limit_bytes`; None if either is unknown."""
    if memory is None or limit_bytes is None:
        return None
    return memory["total_bytes"] <= limit_bytes


def compile_check(
    config,
    *,
    num_landmarks: int | None = None,
    device_memory_gb: float | None = None,
) -> dict[str, Any]:
    """Compiles the config's train step for all devices and its global batch, runs nothing.

    Args:
      config: a training config (`get_config(arg)`).
      num_landmarks: K without reading the dataset (see `abstract_train_step`).
      device_memory_gb: memory of one device in GiB (2**30 bytes) for the `fits`
        verdict; None: what the runtime reports (none on CPU, then no verdict).

    Returns:
      JSON-ready: `lower_s`, `compile_s`; `memory` (`memory_report`, per device);
      `flops_per_step` (all devices) and `flops_per_image`, None where XLA gives
      no cost analysis; `device_memory_bytes` and `fits` (None: unknown);
      `compilation_cache` (its folder, and hits and misses of this compile).
    """
    from lmjax import benchmark

    train_step, state, batch, mesh = abstract_train_step(config, num_landmarks=num_landmarks)
    with count_cache_events() as cache:
        t0 = time.perf_counter()
        lowered = train_step.lower(state, batch)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()

    n, global_batch = mesh.size, config.train.batch_size
    flops = benchmark.compiled_flops(compiled)  # one device's partitioned program
    memory = memory_report(compiled)
    limit = device_memory_bytes() if device_memory_gb is None else int(device_memory_gb * 2**30)
    first = mesh.devices.flat[0]
    return {
        "model": config.model.name,
        "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "input_size": list(config.data.input_size),
        "global_batch": global_batch,
        "compute_dtype": config.task.compute_dtype,
        "backend": first.platform,
        "device_kind": first.device_kind,
        "device_count": n,
        "versions": benchmark.versions(),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "memory": memory,
        "flops_per_step": None if flops is None else flops * n,
        "flops_per_image": None if flops is None else flops * n / global_batch,
        "device_memory_bytes": limit,
        "fits": fits_in(memory, limit),
        "compilation_cache": {"dir": jax.config.jax_compilation_cache_dir or None, **cache},
    }


def _size(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def format_compile_check(r: dict[str, Any]) -> str:
    """The result of `compile_check` as labelled lines."""
    v = r["versions"]
    flops = "-" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:.4g} GFLOP"
    per_image = r["flops_per_image"]
    per_image = "" if per_image is None else f" ({per_image / 1e9:.4g} GFLOP per image)"
    lines = [
        f"model        {r['model']} ({r['parameters'] / 1e6:.2f} M parameters), "
        f"input {r['input_size'][0]}x{r['input_size'][1]}, global batch {r['global_batch']}, "
        f"{r['compute_dtype']}",
        f"devices      {r['device_count']} x {r['device_kind']} ({r['backend']})",
        "versions     " + ", ".join(f"{name} {v[name]}" for name in v),
        f"compile      lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s (train step)",
        f"FLOPs        {flops} per step, all devices{per_image}",
    ]
    m = r["memory"]
    if m is None:
        lines.append("memory       - (the backend gives no memory analysis)")
    else:
        lines.append(
            f"memory       {_size(m['total_bytes'])} per device: arguments "
            f"{_size(m['argument_bytes'])}, outputs {_size(m['output_bytes'])} (of which "
            f"{_size(m['alias_bytes'])} reuse donated arguments), temporaries "
            f"{_size(m['temp_bytes'])}, code {_size(m['generated_code_bytes'])}"
        )
    if r["fits"] is None:
        lines.append("fits         unknown: pass --device_memory_gb (no limit reported)")
    else:
        verdict = "yes" if r["fits"] else "NO"
        lines.append(f"fits         {verdict}, in {_size(r['device_memory_bytes'])} per device")
    c = r["compilation_cache"]
    if c["dir"]:
        lines.append(f"cache        {c['dir']}: {c['hits']} hits, {c['misses']} misses")
    return "\n".join(lines)
