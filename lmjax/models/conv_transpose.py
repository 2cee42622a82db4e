"""Transposed convolution computed as stride-1 convolutions, one per output phase.

`lax.conv_transpose` is a convolution of the input dilated by the stride
(`lhs_dilation`). XLA:CPU computes the gradients of such dilated convolutions very
slowly: forward and backward of the ViT heatmap head's 4x4 stride-2 deconv
(768 -> 256 channels, 16x12 -> 32x24, batch 4) took 2.2 s against 40 ms for the
forward alone (experiments/results/conv_transpose_cpu/).

Every output pixel `s*q + r` (stride `s`, phase `r` per axis) reads only the kernel
taps `t = t0(r) + s*m` and input pixels `q + c(r) + m`, so each phase is a plain
stride-1 correlation of the input with the sub-kernel `w[t0::s]`; the phases are
then interleaved (depth-to-space). Forward and both gradients become ordinary
convolutions. Same values and parameters as `flax.nnx.ConvTranspose`
(`tests/models/test_conv_transpose.py`); on CPU this is the default, elsewhere
`lax.conv_transpose` is kept (cuDNN has transposed-conv kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding
from jax import lax

IMPLS = ("auto", "phases", "lax")


def transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """Padding of the dilated input that `lax.conv_transpose` uses for SAME / VALID.

    SAME gives an output `s` times the input; VALID the full transposed conv,
    `(n - 1) * s + k` (the conventions of TensorFlow's conv2d_transpose).
    """
    if padding == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else math.ceil(total / 2)
    elif padding == "VALID":
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    else:
        raise ValueError(f"padding must be SAME, VALID or explicit pairs, got {padding!r}")
    return low, total - low


def conv_transpose_phases(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    *,
    transpose_kernel: bool = False,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.conv_transpose(x, kernel, strides, padding, ...)` for NHWC / HWIO, 2D.

    No kernel dilation. Explicit `padding` pairs are those of the dilated input, as
    in `lax.conv_transpose`.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"2D only: x {x.shape}, kernel {kernel.shape}")
    if transpose_kernel:
        kernel = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    ks, strides = kernel.shape[:2], tuple(strides)
    if isinstance(padding, str):
        pads = [transpose_padding(k, s, padding) for k, s in zip(ks, strides, strict=True)]
    else:
        pads = [tuple(p) for p in padding]
    sizes = x.shape[1:3]
    outs = [
        (n - 1) * s + 1 + lo + hi - k + 1
        for n, s, (lo, hi), k in zip(sizes, strides, pads, ks, strict=True)
    ]
    per = [
        -(-o // s) for o, s in zip(outs, strides, strict=True)
    ]  # phase length, padded to the longest

    def plan(axis: int, r: int):
        """(first tap, number of taps, first input index) of phase r on one axis."""
        s, k, lo = strides[axis], ks[axis], pads[axis][0]
        t0 = (lo - r) % s
        return t0, max(0, -(-(k - t0) // s)), (r + t0 - lo) // s

    def phase(ry: int, rx: int) -> jax.Array:
        (ty, my, cy), (tx, mx, cx) = plan(0, ry), plan(1, rx)
        b, co = x.shape[0], kernel.shape[3]
        dtype = preferred_element_type or jnp.result_type(x, kernel)
        if my == 0 or mx == 0:  # no tap reaches this phase (kernel smaller than stride)
            return jnp.zeros((b, per[0], per[1], co), dtype)
        sub = kernel[ty :: strides[0], tx :: strides[1]]
        v, pad = x, []
        for axis, (c, m) in enumerate(((cy, my), (cx, mx))):
            start = max(c, 0)  # a phase that starts inside the input: drop rows before
            v = lax.slice_in_dim(v, start, v.shape[axis + 1], axis=axis + 1)
            low = max(-c, 0)
            high = max(0, per[axis] + m - 1 - v.shape[axis + 1] - low)
            pad.append((low, high))
        z = lax.conv_general_dilated(
            v,
            sub,
            (1, 1),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        return z[:, : per[0], : per[1]]

    sy, sx = strides
    rows = [jnp.stack([phase(ry, rx) for rx in range(sx)], axis=3) for ry in range(sy)]
    y = jnp.stack(rows, axis=2)  # [B, ny, sy, nx, sx, C]
    b, ny, _, nx, _, c = y.shape
    return y.reshape(b, ny * sy, nx * sx, c)[:, : outs[0], : outs[1]]


class ConvTranspose(nnx.ConvTranspose):
    """`nnx.ConvTranspose` (same parameters and values) that runs as phase convolutions.

    `impl`: "auto" (phases when JAX's default backend is the CPU, else lax),
    "phases" or "lax". Phases need 2D, no kernel dilation, no mask, and
    SAME / VALID / explicit padding; anything else uses lax.
    """

    def __init__(self, *args, impl: str = "auto", **kwargs):
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        super().__init__(*args, **kwargs)
        self.impl = impl

    def _use_phases(self, inputs: jax.Array) -> bool:
        if self.impl == "lax" or (self.impl == "auto" and jax.default_backend() != "cpu"):
            return False
        dilation = self.kernel_dilation
        return (
            len(self.kernel_size) == 2
            and inputs.ndim == 4
            and self.mask is None
            and self.padding != "CIRCULAR"
            and (dilation in (None, 1) or all(d == 1 for d in dilation))
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not self._use_phases(inputs):
            return super().__call__(inputs)
        strides = self.strides
        strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides or (1, 1))
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype(
            (inputs, self.kernel[...], bias), dtype=self.dtype
        )
        y = conv_transpose_phases(
            inputs,
            kernel,
            strides,
            canonicalize_padding(self.padding, 2),
            transpose_kernel=self.transpose_kernel,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )
        if self.use_bias:
            y += jnp.reshape(bias, (1, 1, 1, -1))
        return y
