"""Dense peak FLOP/s of accelerators, the denominator of MFU (model FLOPs utilisation).

Figures are per GPU, dense (without 2:4 structured sparsity), from NVIDIA's
datasheets, where the sparse figures are twice these:

  H100 SXM5   bf16 989.4, tf32 494.7, fp32 66.9 TFLOP/s  (H100 Tensor Core GPU datasheet)
  H100 PCIe   bf16 756.0, tf32 378.0, fp32 51.2 TFLOP/s  (same datasheet)
  H200        as H100 SXM: the same GH100 compute with more and faster HBM3e
              (H200 Tensor Core GPU datasheet, SXM)
  A100        bf16 312.0, tf32 156.0, fp32 19.5 TFLOP/s, 40 and 80 GB, SXM4 and PCIe
              (A100 Tensor Core GPU datasheet)

`fp32` is the non-tensor-core rate. XLA runs float32 matmuls and convolutions on
Ampere and later GPUs as TF32 unless `jax_default_matmul_precision` asks for full
float32, so a float32 model is measured against the TF32 peak by default.

`cpu_bf16` reports whether the host CPU has bfloat16 arithmetic in hardware
(AVX-512 BF16 dot products, AMX tiles): without it bf16 on the CPU only emulates.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax

# Matched in order against the lower-cased `device_kind`; the word boundaries keep
# "gh200" (Grace Hopper) and "h100 nvl", whose peaks differ, out of these rows.
_KINDS: tuple[tuple[str, str], ...] = (
    (r"\bh200\b", "H200"),
    (r"\bh100\b.*\bpcie\b", "H100 PCIe"),
    (r"\bh100\b.*\b(sxm\w*|hbm3)\b", "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"\ba100\b", "A100"),
)

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def gpu_name(device_kind: str) -> str | None:
    """The `PEAK_TFLOPS` row for a `jax.Device.device_kind`, e.g.
    "NVIDIA H100 80GB HBM3" -> "H100 SXM"; None for CPUs and unlisted devices."""
    kind = device_kind.lower()
    return next((name for pattern, name in _KINDS if re.search(pattern, kind)), None)


def precision(compute_dtype: str) -> str:
    """The peak column that a config's `task.compute_dtype` runs at: bf16, tf32 or fp32."""
    if compute_dtype == "bfloat16":
        return "bf16"
    matmul = str(jax.config.jax_default_matmul_precision or "default").lower()
    return "fp32" if matmul in ("highest", "float32") else "tf32"


def peak_tflops(device_kind: str, compute_dtype: str) -> float | None:
    """Dense peak TFLOP/s of one device at the config's precision; None when unknown."""
    name = gpu_name(device_kind)
    return None if name is None else PEAK_TFLOPS[name][precision(compute_dtype)]


# /proc/cpuinfo flags of bfloat16 arithmetic: AVX-512 BF16 (Cooper Lake, Sapphire
# Rapids, Zen 4) and AMX BF16 tile matrix multiplies (Sapphire Rapids and later).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags (empty where the file is missing, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """`{flag: present}` for `CPU_BF16_FLAGS` on this host."""
    flags = cpu_flags(cpuinfo)
    return {f: f in flags for f in CPU_BF16_FLAGS}
