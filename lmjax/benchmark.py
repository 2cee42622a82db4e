"""Training-step throughput of a config on synthetic batches: `lmjax benchmark`.

The batch is made once on the host and placed on the devices, so the figure is
the compiled step alone (model, targets rendered on device, loss, update); the
input pipeline has its own benchmark in experiments/bench_pipeline.py.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import jax
import numpy as np

from lmjax import parallel
from lmjax.train import loop


def fake_batch(batch_size: int, input_hw: tuple[int, int], num_landmarks: int, seed: int = 0):
    """A host batch with the pipeline's device keys: random images and landmarks."""
    rng = np.random.default_rng(seed)
    h, w = input_hw
    xy = rng.uniform([4, 4], [w - 5, h - 5], (batch_size, num_landmarks, 2))
    return {
        "image": rng.standard_normal((batch_size, h, w, 1)).astype(np.float32),
        "landmarks": xy.astype(np.float32),
        "visible": np.ones((batch_size, num_landmarks), bool),
        "valid": np.ones((batch_size,), bool),
    }


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def benchmark(config, *, steps: int = 20, warmup: int = 2, num_landmarks: int | None = None):
    """Compile time, step time (median and spread) and images/s of the train step.

    Returns:
      A JSON-ready dict; `flops_per_image` comes from XLA's cost analysis of the
      compiled step (forward and backward), None where XLA gives none.
    """
    k = num_landmarks or loop.load_splits(config)[0].landmark_set.num_landmarks
    mesh, state, train_step, _, _ = loop.build(config, k)
    params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    batch = parallel.shard_batch(
        fake_batch(config.train.batch_size, tuple(config.data.input_size), k), mesh
    )
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    flops = _flops(compiled)
    images = config.train.batch_size
    devices = jax.devices()
    return {
        "model": config.model.name,
        "parameters": params,
        "input_size": list(config.data.input_size),
        "global_batch": images,
        "compute_dtype": config.task.compute_dtype,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform": platform.platform(),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "compile_s": compile_s,
        "step_s_median": float(np.median(t)),
        "step_s_p10": float(np.percentile(t, 10)),
        "step_s_p90": float(np.percentile(t, 90)),
        "images_per_s": images / float(np.median(t)),
        "images_per_s_per_device": images / float(np.median(t)) / len(devices),
        "flops_per_image": None if flops is None else flops / images,
        "achieved_tflops": None if flops is None else flops / float(np.median(t)) / 1e12,
        "steps": steps,
    }


def format_benchmark(r: dict[str, Any]) -> str:
    flops = "-" if r["flops_per_image"] is None else f"{r['flops_per_image'] / 1e9:.2f} GFLOP"
    return "\n".join(
        [
            f"model        {r['model']} ({r['parameters'] / 1e6:.2f} M parameters), "
            f"input {r['input_size'][0]}x{r['input_size'][1]}, batch {r['global_batch']}, "
            f"{r['compute_dtype']}",
            f"devices      {r['device_count']} x {r['device_kind']}",
            f"compile      {r['compile_s']:.1f} s",
            f"step         {r['step_s_median'] * 1e3:.1f} ms median "
            f"(p10 {r['step_s_p10'] * 1e3:.1f}, p90 {r['step_s_p90'] * 1e3:.1f})",
            f"throughput   {r['images_per_s']:.1f} images/s "
            f"({r['images_per_s_per_device']:.1f} per device)",
            f"model FLOPs  {flops} per image (train step), MFU not defined on CPU"
            if r["device_kind"] == "cpu"
            else f"model FLOPs  {flops} per image, {r['achieved_tflops']:.1f} TFLOP/s achieved",
        ]
    )
