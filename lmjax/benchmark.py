"""Throughput of a config: `lmjax benchmark`.

Three measurements, all on the state and compiled steps of `lmjax.train.setup.build`:

  train step   one batch made once on the host and kept on the devices, so the
               step time is the compiled step alone (model, targets rendered on
               device, loss, update); FLOPs from XLA's cost analysis, MFU
               against the device's dense peak (`lmjax.hardware`).
  input        with `data="real"`: the training pipeline alone, then the step fed
               by it, overlapped as in the training loop (dispatch the step, then
               fetch the next batch while the device works).
  inference    the eval step at one image per device (latency) and at a large batch.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lmjax import hardware, parallel
from lmjax.configs import resolve
from lmjax.fake_inputs import (  # noqa: F401  (part of this module's interface)
    FAKE_REGIONS,
    fake_batch,
    landmark_set_for,
    synthetic_landmark_set,
)
from lmjax.task import task_spec
from lmjax.train import setup

DATA = ("fake", "real")


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled program (one device's share), from XLA's cost
    analysis; None where the backend gives none."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def spread(seconds: list[float], prefix: str) -> dict[str, float]:
    """Median, 10th and 90th percentile of per-call times, in seconds."""
    t = np.asarray(seconds)
    return {
        f"{prefix}_median": float(np.median(t)),
        f"{prefix}_p10": float(np.percentile(t, 10)),
        f"{prefix}_p90": float(np.percentile(t, 90)),
    }


def _time_calls(fn: Callable[[], Any], calls: int, warmup: int) -> list[float]:
    """Seconds per call of `fn`, each call waited for, after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def versions() -> dict[str, str]:
    """Versions of Python and the JAX libraries the figures depend on."""
    names = ("jax", "jaxlib", "flax", "optax")
    return {n: importlib.metadata.version(n) for n in names} | {"python": platform.python_version()}


def _peak_memory_bytes() -> int | None:
    """Largest `peak_bytes_in_use` over this process's devices; None where the
    backend keeps no statistics (CPU)."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return None
    return max(int(s["peak_bytes_in_use"]) for s in stats)


def efficiency(r: dict[str, Any]) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU from a result's measured fields.

    Reads `flops_per_image`, `images_per_s`, `images_per_s_per_device`,
    `device_kind`, `backend` and `compute_dtype`. MFU is
    `flops_per_image * images_per_s_per_device / peak`, i.e. the whole step's
    FLOPs (forward, backward, optimizer) against one device's dense peak.

    Returns:
      `achieved_tflops` (all devices), `peak_tflops` (one device) and `mfu` (a
      fraction), each None when undefined, and `mfu_note` saying which peak or why none.
    """
    flops = r["flops_per_image"]
    achieved = None if flops is None else flops * r["images_per_s"] / 1e12
    peak = hardware.peak_tflops(r["device_kind"], r["compute_dtype"])
    name, prec = hardware.gpu_name(r["device_kind"]), hardware.precision(r["compute_dtype"])
    if r["backend"] == "cpu":
        note, peak = "MFU not defined on CPU", None
    elif peak is None:
        note = f"no peak known for {r['device_kind']}"
    else:
        note = f"of the {name} {prec} dense peak, {peak:g} TFLOP/s per device"
        if prec == "tf32":
            note += " (XLA runs float32 matmuls and convolutions as TF32 by default)"
        elif prec == "fp32":
            note += " (jax_default_matmul_precision asks for full float32)"
    mfu = None
    if peak is not None and flops is not None:
        mfu = flops * r["images_per_s_per_device"] / (peak * 1e12)
    return {"achieved_tflops": achieved, "peak_tflops": peak, "mfu": mfu, "mfu_note": note}


def _real_input(config, dataset, step, state, mesh, *, steps: int, warmup: int, keys):
    """The training pipeline alone, then feeding the step; returns `(state, report)`.

    Without `config.data.cache_dir` the decode cache is a fresh temporary folder,
    so for datasets read from files the figures include first decodes; point
    `--config.data.cache_dir` at a warm cache to measure the steady state.

    Report: `pipeline_images_per_s` (this process's batches drained without the
    step), `input_wait_fraction` (time blocked in `next(batches)` / wall time of
    the fed steps, in [0, 1]), `images_per_s` (all processes, step fed by the
    pipeline), `step_s` (wall time per fed step).
    """
    local_batch = config.train.batch_size // jax.process_count()
    with contextlib.ExitStack() as stack:
        cache_dir = config.data.cache_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="lmjax_bench_")
        )
        # lmjax.train.loop.train's own pipeline (with device augmentation, the step
        # augments), so the figures are the training run's.
        batches = setup.make_train_pipeline(config, dataset, cache_dir=cache_dir)
        stack.callback(batches.close)
        drained = _time_calls(lambda: next(batches), steps, warmup)
        for _ in range(warmup):
            state, _ = step(state, to_device(next(batches), mesh, keys))
        jax.block_until_ready(state)
        batch, waited = next(batches), 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, to_device(batch, mesh, keys))
            t = time.perf_counter()
            batch = next(batches)  # overlaps the step just dispatched
            waited += time.perf_counter() - t
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - t0
    return state, {
        "pipeline_images_per_s": steps * local_batch / sum(drained),
        "input_wait_fraction": waited / wall,
        "images_per_s": steps * config.train.batch_size / wall,
        "step_s": wall / steps,
        "cache_dir": config.data.cache_dir or None,
    }


def to_device(batch: dict[str, np.ndarray], mesh, keys=setup.DEVICE_KEYS) -> dict[str, jax.Array]:
    """The entries `keys` of a host batch, split along `data` on `mesh`."""
    return parallel.shard_batch({k: batch[k] for k in keys}, mesh)


def _inference(eval_step, state, mesh, input_hw, *, batch: int, calls: int, warmup: int):
    """Eval-step time at one image per device (latency) and at `batch` images.

    `batch` is rounded up to a multiple of the device count. Times the device step
    only: a host extractor (Methods 1-5) would add its own time.

    Returns:
      `latency_batch` (= device count), `latency_s` (median seconds per call at that
      batch, i.e. per image on each device), `batch`, `batch_s` (median seconds per
      call), `images_per_s` (all devices).
    """
    n = jax.device_count()
    big = -(-batch // n) * n

    def median_call(b: int) -> float:
        h, w = input_hw
        images = np.random.default_rng(0).standard_normal((b // jax.process_count(), h, w, 1))
        x = parallel.shard_batch({"image": images.astype(np.float32)}, mesh)
        return float(np.median(_time_calls(lambda: eval_step(state, x), calls, max(warmup, 1))))

    latency, batch_s = median_call(n), median_call(big)
    return {
        "latency_batch": n,
        "latency_s": latency,
        "batch": big,
        "batch_s": batch_s,
        "images_per_s": big / batch_s,
    }


def benchmark(
    config,
    *,
    steps: int = 20,
    warmup: int = 2,
    data: str = "fake",
    infer_batch: int = 32,
    num_landmarks: int | None = None,
) -> dict[str, Any]:
    """Measures a config's train step, input pipeline (`data="real"`) and inference.

    Args:
      config: a training config (`get_config(arg)`).
      steps: timed steps (and timed inference calls) after `warmup` untimed ones.
      data: "fake" (device-resident random batch only) or "real" (also the
        config's training split through the training pipeline).
      infer_batch: batch of the inference throughput figure.
      num_landmarks: K for fake data without reading the dataset (tests); the
        landmark set is then `landmark_set_for`'s, with regions when needed.

    Fake batches carry a random `region_mask` when the task's losses read one
    (`TaskSpec.needs_region_mask`); with `data="real"` they need a dataset with
    region masks (the phantom has them).

    Returns:
      A JSON-ready dict: times in seconds, throughput in images/s, FLOPs per image
      from XLA's cost analysis of the compiled train step (None where XLA gives
      none), MFU as a fraction, memory in bytes; `input` is None for fake data.
    """
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    config = resolve(config)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    dataset = None
    if data == "real" or num_landmarks is None:
        dataset = setup.load_splits(config)[0]
    landmark_set = landmark_set_for(config, None if dataset is not None else num_landmarks, dataset)
    k = landmark_set.num_landmarks
    task = task_spec(config, landmark_set.regions)
    shipped = setup.device_keys(task, augment_on_device=setup.augments_on_device(config))
    if data == "real":
        setup.check_region_masks(dataset, shipped, task.losses)
    mesh, state, train_step, eval_step, _ = setup.build(config, k, landmark_set)
    params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    images = config.train.batch_size
    input_hw = tuple(config.data.input_size)
    regions = landmark_set.num_regions if task.needs_region_mask else None
    host = fake_batch(
        images // jax.process_count(),
        input_hw,
        k,
        num_regions=regions,
        pixel_norm="pixel_norm" in shipped,
    )
    batch = to_device(host, mesh, shipped)

    t0 = time.perf_counter()
    step = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[warmup:]))

    fed = None
    if data == "real":
        state, fed = _real_input(
            config, dataset, step, state, mesh, steps=steps, warmup=warmup, keys=shipped
        )
    memory = _peak_memory_bytes()  # before inference, so it is the train step's

    flops = compiled_flops(step)
    devices = jax.devices()
    r = {
        "model": config.model.name,
        "parameters": params,
        "input_size": list(input_hw),
        "global_batch": images,
        # An ensemble's members all train on each image: images/s counts images, and
        # member-images/s is `ensemble` times that; `parameters` are all members'.
        "ensemble": config.train.get("ensemble", 1),
        "compute_dtype": config.task.compute_dtype,
        "data": data,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform": platform.platform(),
        "versions": versions(),
        "steps": steps,
        "warmup": warmup,
        "compile_s": compile_s,
        **spread(times[warmup:], "step_s"),
        "images_per_s": images / step_s,
        "images_per_s_per_device": images / step_s / len(devices),
        # The cost analysis is of one device's partitioned program, which sees
        # global_batch / device_count images.
        "flops_per_image": None if flops is None else flops * len(devices) / images,
        "peak_memory_bytes": memory,
        "input": fed,
        "inference": _inference(
            eval_step, state, mesh, input_hw, batch=infer_batch, calls=steps, warmup=warmup
        ),
    }
    return r | efficiency(r)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def format_benchmark(r: dict[str, Any]) -> str:
    """The result as a table of labelled lines."""
    flops = "-" if r["flops_per_image"] is None else f"{r['flops_per_image'] / 1e9:.3g} GFLOP"
    achieved = "" if r["achieved_tflops"] is None else f", {r['achieved_tflops']:.3g} TFLOP/s"
    mfu = r["mfu_note"] if r["mfu"] is None else f"MFU {r['mfu']:.1%} {r['mfu_note']}"
    memory = r["peak_memory_bytes"]
    v = r["versions"]
    lines = [
        f"model        {r['model']} ({r['parameters'] / 1e6:.2f} M parameters), "
        f"input {r['input_size'][0]}x{r['input_size'][1]}, batch {r['global_batch']}, "
        f"{r['compute_dtype']}"
        + (
            f", ensemble of {r['ensemble']} (images/s counts images, each seen by every member)"
            if r.get("ensemble", 1) > 1
            else ""
        ),
        f"devices      {r['device_count']} x {r['device_kind']} ({r['backend']})",
        "versions     " + ", ".join(f"{name} {v[name]}" for name in v),
        f"compile      {r['compile_s']:.1f} s",
        f"step         {_ms(r['step_s_median'])} median (p10 {_ms(r['step_s_p10'])}, "
        f"p90 {_ms(r['step_s_p90'])}) over {r['steps']} steps after {r['warmup']} warm-up, "
        "batch kept on device",
        f"throughput   {r['images_per_s']:.1f} images/s ({r['images_per_s_per_device']:.1f} "
        "per device)",
        f"model FLOPs  {flops} per image (train step){achieved}; {mfu}",
        "memory       "
        + (
            f"- (the {r['backend']} backend keeps no statistics)"
            if memory is None
            else f"{memory / 2**30:.2f} GiB peak per device (train step)"
        ),
    ]
    if r["input"] is not None:
        i = r["input"]
        lines.append(
            f"input        pipeline alone {i['pipeline_images_per_s']:.1f} images/s; fed steps "
            f"{i['images_per_s']:.1f} images/s, {i['input_wait_fraction']:.1%} of the time "
            "waiting for input"
        )
    inf = r["inference"]
    lines.append(
        f"inference    {_ms(inf['latency_s'])} latency at batch {inf['latency_batch']} "
        "(one image per device); "
        f"{inf['images_per_s']:.1f} images/s at batch {inf['batch']}"
    )
    return "\n".join(lines)
