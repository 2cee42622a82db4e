"""XLA:CPU compile options that lmjax's jitted steps are compiled with.

jaxlib 0.10 hands convolutions and dots on the CPU to YNNPACK fusions by default.
For the weight gradients of the U-Net's convolutions (a reduction over the whole
batch and image into a small kernel) YNNPACK runs 2-4x slower than XLA's own
Eigen kernels, and 1x1 convolutions (lowered to dots) fare worst. Keeping YNNPACK
for reductions only made the heatmap U-Net's CPU train step about 1.5x faster
(experiments/results/peer_cpu/README.md has the measurements).

The options go to `jax.jit(..., compiler_options=...)` of the train and eval steps
only when their devices are CPUs, so GPU compiles never see them. They step aside
when `XLA_FLAGS` sets the same flag (the user's choice wins), when
`LMJAX_XLA_CPU_DEFAULTS=0` asks for XLA's defaults, and when the installed jaxlib
does not know the option.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS: dict[str, Any] = {YNN_FUSION_FLAG: "LIBRARY_FUSION_TYPE_REDUCE"}
ENV = "LMJAX_XLA_CPU_DEFAULTS"  # "0": compile with XLA's own defaults


@functools.cache
def _accepted(name: str, value: Any) -> bool:
    """Whether this jaxlib compiles a trivial program with the option."""
    try:
        jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options={name: value})
    except Exception:  # an unknown option or value: XLA raises, type varies by version
        return False
    return True


def compiler_options(devices) -> dict[str, Any] | None:
    """lmjax's compile options for programs on `devices` (a mesh or device list).

    Returns None (compile with the defaults) unless every device is a CPU.
    """
    if isinstance(devices, jax.sharding.Mesh):
        devices = devices.devices.flat
    devices = list(devices)
    if not devices or any(d.platform != "cpu" for d in devices):
        return None
    if os.environ.get(ENV, "1").strip() == "0":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    chosen = {k: v for k, v in CPU_OPTIONS.items() if f"--{k}" not in flags and _accepted(k, v)}
    return chosen or None
