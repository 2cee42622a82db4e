"""Convolutions with CPU-friendly gradients for the train step (XLA:CPU only).

XLA:CPU computes a convolution's weight gradient as another convolution whose
window is the whole image. For 1x1 convolutions (the U-Net's heads and the 1x1
conv of its resize upsampling) that is 2-6x slower than the same sum written as
one matrix product `x[N, C_in]^T @ dy[N, C_out]` over the N = B*H*W pixels.
`with_cpu_convs(fn)` re-traces `fn` and replaces each NHWC/HWIO convolution by
`gemm_conv`, a `jax.custom_vjp` convolution whose weight gradient is one GEMM over
im2col patches (for a 1x1 kernel the patches are the input itself, and the forward
pass and input gradient are dots too). Which convolutions take it is `uses_gemm`'s
rule: measured on a 2-core AVX-512 CPU, the im2col patches of a 3x3 kernel (9x
the input) cost more than XLA's own weight gradient saves, at every U-Net level
(experiments/results/peer_cpu/README.md), so "auto" routes 1x1 kernels only and
"all" every convolution (kept to measure that again on other CPUs). End to end
the 1x1 change is small: 10 % less CPU time for the HRNet step (many 1x1 fuse
convolutions), none measurable for the U-Net's.

The train step applies it only when its devices are CPUs (`enabled`): on GPUs and
TPUs cuDNN and XLA's own convolutions are faster, and the step stays as written.
Gradients equal `jax.grad` of the plain convolution up to float32 rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex

MODES = ("auto", "all", "off")

# NHWC inputs, HWIO kernels, NHWC outputs, as ConvDimensionNumbers store them.
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"train.cpu_conv_kernels must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def enabled(mode: str, devices) -> bool:
    """Whether a step on `devices` (a mesh or device list) uses `gemm_conv`:
    mode is not "off" and every device is a CPU."""
    if check_mode(mode) == "off":
        return False
    if isinstance(devices, jax.sharding.Mesh):
        devices = devices.devices.flat
    devices = list(devices)
    return bool(devices) and all(d.platform == "cpu" for d in devices)


def effective(mode: str, devices) -> str:
    """The mode a step on `devices` runs with: `mode` on CPUs, "off" elsewhere."""
    return mode if enabled(mode, devices) else "off"


def _out_size(n: int, k: int, stride: int, pad: tuple[int, int], dilation: int) -> int:
    return (n + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1


def _is_pointwise(w_shape, strides, padding, dilation) -> bool:
    return (
        tuple(w_shape[:2]) == (1, 1)
        and tuple(strides) == (1, 1)
        and all(tuple(p) == (0, 0) for p in padding)
    )


def _conv(x, w, strides, padding, dilation):
    if _is_pointwise(w.shape, strides, padding, dilation):
        y = jnp.dot(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[2:]))
        return y.reshape(*x.shape[:-1], w.shape[-1])
    return lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC
    )


def patches(x: jax.Array, kernel: Sequence[int], strides, padding, dilation) -> jax.Array:
    """im2col: `[B, H, W, C] -> [B, Ho, Wo, kh*kw*C]`, the (zero-padded, strided,
    dilated) input window of every output pixel, taps in HWIO order."""
    b, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    ho = _out_size(h, kh, sh, padding[0], dh)
    wo = _out_size(w, kw, sw, padding[1], dw)
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    taps = [
        lax.slice(
            xp,
            (0, i * dh, j * dw, 0),
            (b, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def weight_grad(x, g, w_shape, strides, padding, dilation) -> jax.Array:
    """dL/dw `[kh, kw, C_in, C_out]` as one GEMM: `patches(x)^T @ g` over all pixels."""
    cols = patches(x, w_shape[:2], strides, padding, dilation)
    cols = cols.reshape(-1, cols.shape[-1])
    return (cols.T @ g.reshape(-1, g.shape[-1])).reshape(w_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def gemm_conv(x, w, strides, padding, dilation):
    """`lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation)` on
    NHWC / HWIO operands, whose weight gradient is `weight_grad`'s GEMM.

    `strides`, `dilation`: `(sh, sw)`; `padding`: `((top, bottom), (left, right))`,
    all tuples of ints. A stride-1 unpadded 1x1 kernel runs as dots both ways.
    """
    return _conv(x, w, strides, padding, dilation)


def _fwd(x, w, strides, padding, dilation):
    return _conv(x, w, strides, padding, dilation), (x, w)


def _bwd(strides, padding, dilation, res, g):
    x, w = res
    if _is_pointwise(w.shape, strides, padding, dilation):
        dx = jnp.dot(g.reshape(-1, g.shape[-1]), w.reshape(w.shape[2:]).T).reshape(x.shape)
    else:  # XLA's own input gradient: fast on the CPU
        _, vjp_x = jax.vjp(lambda x_: _conv(x_, w, strides, padding, dilation), x)
        (dx,) = vjp_x(g)
    dw = weight_grad(x, g, w.shape, strides, padding, dilation).astype(w.dtype)
    return dx, dw


gemm_conv.defvjp(_fwd, _bwd)


def uses_gemm(mode: str, w_shape: Sequence[int]) -> bool:
    """Whether a supported convolution with kernel `w_shape` takes `gemm_conv`."""
    return mode == "all" or (mode == "auto" and tuple(w_shape[:2]) == (1, 1))


def _supported(params: dict[str, Any], x_aval, w_aval) -> bool:
    """2D NHWC/HWIO float convolutions without input dilation, groups or a
    different output dtype: the ones `gemm_conv` computes exactly as lax does."""
    return (
        len(params["window_strides"]) == 2
        and params["dimension_numbers"] == _NHWC
        and tuple(params["lhs_dilation"]) == (1, 1)
        and params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and params.get("preferred_element_type") in (None, x_aval.dtype)
        and x_aval.dtype == w_aval.dtype
        and jnp.issubdtype(x_aval.dtype, jnp.floating)
    )


def _eval(jaxpr, consts, args, mode: str):
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        p = eqn.params
        if (
            eqn.primitive is lax.conv_general_dilated_p
            and _supported(p, *(v.aval for v in eqn.invars))
            and uses_gemm(mode, eqn.invars[1].aval.shape)
        ):
            pad = tuple(tuple(int(a) for a in q) for q in p["padding"])
            outs = [
                gemm_conv(
                    *invals,
                    tuple(p["window_strides"]),
                    pad,
                    tuple(p["rhs_dilation"]),
                )
            ]
        elif eqn.primitive.name in ("pjit", "jit", "closed_call"):  # inline, look inside
            inner = p["jaxpr"] if "jaxpr" in p else p["call_jaxpr"]
            outs = _eval(inner.jaxpr, inner.consts, invals, mode)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(p))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def with_cpu_convs(fn: Callable, mode: str = "auto") -> Callable:
    """`fn` with its convolutions (see `uses_gemm`) computed by `gemm_conv`.

    Traces `fn` to a jaxpr at each call (inside the caller's trace, so under `jit`
    once per compilation) and evaluates it with those convolutions swapped;
    convolutions inside other higher-order primitives (scan, cond, remat) stay.
    Differentiate the result, not `fn`: the swap only changes gradients' cost.
    """
    check_mode(mode)
    if mode == "off":
        return fn

    @functools.wraps(fn)
    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args), mode)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped
