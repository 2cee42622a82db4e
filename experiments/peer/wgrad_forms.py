"""Ways to write one convolution's weight gradient in XLA, timed on the CPU.

XLA:CPU computes dL/dw of a convolution as a convolution whose window is the whole
image. This times that ("lax") against GEMM formulations a `jax.custom_vjp`
convolution could use instead (`lmjax/ops/cpu_conv.py` keeps the winners): im2col
patches and one matmul (also chunked into a batched matmul, also with the
cotangent as the left operand), one dot per kernel tap (also batched over output
rows), channels-first operands, and the lax gradient split over the batch or in
NCHW. Compiled with lmjax's CPU options (`lmjax/xla_cpu.py`); median ms of 5 calls.

    python experiments/peer/wgrad_forms.py main    # the U-Net's largest levels, all forms
    python experiments/peer/wgrad_forms.py deep    # deeper levels and 1x1 heads
    python experiments/peer/wgrad_forms.py split   # batch-split and NCHW lax gradients
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

OPT = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w, s, p):
    return lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=DN)


def taps(x, k, s, p, ho, wo):
    b = x.shape[0]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    out = []
    for i in range(k):
        for j in range(k):
            out.append(
                lax.slice(
                    xp,
                    (0, i, j, 0),
                    (b, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, xp.shape[-1]),
                    (1, s, s, 1),
                )
            )
    return out


def v_lax(x, g, k, s, p):
    w = jnp.zeros((k, k, x.shape[-1], g.shape[-1]))
    return jax.vjp(lambda w_: conv(x, w_, s, p), w)[1](g)[0]


def v_im2col(x, g, k, s, p):
    b, ho, wo, co = g.shape
    cols = jnp.concatenate(taps(x, k, s, p, ho, wo), -1).reshape(-1, k * k * x.shape[-1])
    return (cols.T @ g.reshape(-1, co)).reshape(k, k, x.shape[-1], co)


def v_im2col_chunk(G):
    def f(x, g, k, s, p):
        b, ho, wo, co = g.shape
        cols = jnp.concatenate(taps(x, k, s, p, ho, wo), -1).reshape(G, -1, k * k * x.shape[-1])
        r = jnp.einsum("gnk,gno->gko", cols, g.reshape(G, -1, co))
        return r.sum(0).reshape(k, k, x.shape[-1], co)

    return f


def v_taps(x, g, k, s, p):
    b, ho, wo, co = g.shape
    outs = [
        lax.dot_general(t, g, (((0, 1, 2), (0, 1, 2)), ((), ()))) for t in taps(x, k, s, p, ho, wo)
    ]
    return jnp.stack(outs).reshape(k, k, x.shape[-1], co)


def v_taps_batchh(x, g, k, s, p):
    # batch over output rows: many mid-size GEMMs, then a sum
    b, ho, wo, co = g.shape
    outs = [
        lax.dot_general(t, g, (((0, 2), (0, 2)), ((1,), (1,)))).sum(0)
        for t in taps(x, k, s, p, ho, wo)
    ]
    return jnp.stack(outs).reshape(k, k, x.shape[-1], co)


def v_cf(x, g, k, s, p):
    # channels-first operands: [ci, N] @ [N, co]
    b, ho, wo, co = g.shape
    cols = jnp.stack(taps(x, k, s, p, ho, wo), 0)  # [kk, b, ho, wo, ci]
    cols = jnp.moveaxis(cols, -1, 1).reshape(k * k * x.shape[-1], -1)
    return (cols @ g.reshape(-1, co)).reshape(k, k, x.shape[-1], co)


def v_gT(x, g, k, s, p):
    # out = g^T @ cols  -> [co, kk ci] then transpose
    b, ho, wo, co = g.shape
    cols = jnp.concatenate(taps(x, k, s, p, ho, wo), -1).reshape(-1, k * k * x.shape[-1])
    return (g.reshape(-1, co).T @ cols).T.reshape(k, k, x.shape[-1], co)


VARS = {
    "lax": v_lax,
    "im2col": v_im2col,
    "im2col_c8": v_im2col_chunk(8),
    "im2col_c64": v_im2col_chunk(64),
    "taps": v_taps,
    "taps_bh": v_taps_batchh,
    "cf": v_cf,
    "gT": v_gT,
}


def bench(f, args, n=5):
    f(*args).block_until_ready()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f(*args).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 1e3 * np.median(ts)


def split(nchunk):
    def f(x, g, k, s, p):
        xs, gs = jnp.split(x, nchunk), jnp.split(g, nchunk)
        return sum(v_lax(a, b, k, s, p) for a, b in zip(xs, gs, strict=True))

    return f


def v_nchw(x, g, k, s, p):
    w = jnp.zeros((g.shape[-1], x.shape[-1], k, k))
    xt, gt = x.transpose(0, 3, 1, 2), g.transpose(0, 3, 1, 2)

    def f(w_):
        dn = ("NCHW", "OIHW", "NCHW")
        return lax.conv_general_dilated(xt, w_, (s, s), ((p, p), (p, p)), dimension_numbers=dn)

    return jax.vjp(f, w)[1](gt)[0].transpose(2, 3, 1, 0)


VARS.update(split2=split(2), split8=split(8), nchw=v_nchw)

# (B, H, W, C_in, C_out, kernel, stride, padding)
SETS = {
    "main": (
        [
            (8, 256, 192, 16, 16, 3, 1, 1),
            (8, 128, 96, 32, 32, 3, 1, 1),
            (8, 256, 192, 16, 32, 3, 2, 1),
            (8, 256, 192, 16, 19, 1, 1, 0),
            (8, 256, 192, 32, 16, 3, 1, 1),
            (8, 16, 12, 256, 256, 3, 1, 1),
        ],
        ["lax", "im2col", "im2col_c8", "im2col_c64", "taps", "taps_bh", "cf", "gT"],
    ),
    "deep": (
        [
            (8, 64, 48, 64, 64, 3, 1, 1),
            (8, 128, 96, 32, 64, 3, 2, 1),
            (8, 32, 24, 128, 128, 3, 1, 1),
            (8, 64, 48, 64, 128, 3, 2, 1),
            (8, 16, 12, 256, 256, 3, 1, 1),
            (8, 32, 24, 128, 256, 3, 2, 1),
            (8, 8, 6, 512, 512, 3, 1, 1),
            (8, 16, 12, 256, 512, 3, 2, 1),
            (8, 8, 6, 1024, 512, 3, 1, 1),
            (8, 8, 6, 512, 256, 1, 1, 0),
            (8, 128, 96, 32, 16, 1, 1, 0),
            (8, 128, 96, 16, 19, 1, 1, 0),
        ],
        ["lax", "taps", "im2col", "gT"],
    ),
    "split": (
        [
            (8, 256, 192, 16, 16, 3, 1, 1),
            (8, 128, 96, 32, 32, 3, 1, 1),
            (8, 256, 192, 16, 32, 3, 2, 1),
            (8, 256, 192, 32, 16, 3, 1, 1),
        ],
        ["lax", "split2", "split8", "nchw"],
    ),
}


def main() -> None:
    import os

    shapes, names = SETS[sys.argv[1] if len(sys.argv) > 1 else "main"]
    print("load average", os.getloadavg(), flush=True)
    rng = np.random.default_rng(0)
    for b, h, w, ci, co, k, s, p in shapes:
        x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        g = jnp.asarray(rng.standard_normal((b, ho, wo, co)), jnp.float32)
        ref, row = None, []
        for name in names:
            if k == 1 and name == "taps_bh":
                continue
            fn = jax.jit(lambda x, g, fn=VARS[name], k=k, s=s, p=p: fn(x, g, k, s, p))
            fn = fn.lower(x, g).compile(compiler_options=OPT)
            r = fn(x, g)
            ref = r if ref is None else ref
            err = float(jnp.max(jnp.abs(r - ref)) / jnp.max(jnp.abs(ref)))
            row.append(
                f"{name} {bench(fn, (x, g)):.1f}" + (f" (err {err:.0e})" if err > 1e-5 else "")
            )
        print((b, h, w, ci, co, k, s), " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
