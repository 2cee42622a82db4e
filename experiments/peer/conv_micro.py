"""One 3x3 convolution of the U-Net: forward, input gradient and weight gradient, XLA
variants against PyTorch, alternating, on CPU.

The U-Net's training time on CPU goes mostly to its 3x3 convolutions, and XLA:CPU's
weight gradient is the slow part (DESIGN.md). This screens ways around it cheaply,
before any end-to-end run: XLA options given per compilation (so all variants share
one process and one load), an explicit im2col matmul for the weight gradient, and
NCHW operands. Each variant's three ops are timed in blocks alternating with
PyTorch's same ops, so every figure has a torch figure taken under the same load.

    python experiments/peer/conv_micro.py --shape 8,256,192,16,16 --tag level0

Writes `experiments/results/peer_cpu/conv_micro_<tag>.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DN = ("NHWC", "HWIO", "NHWC")

# name -> XLA debug options for that compilation only.
FLAG_VARIANTS = {
    "xla default": {},
    "ynn convolution": {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    },
    "onednn": {"xla_cpu_use_onednn": True},
    "onednn custom call": {
        "xla_cpu_experimental_onednn_custom_call": True,
        "xla_cpu_use_onednn": True,
    },
    "fast math": {"xla_cpu_enable_fast_math": True},
    "eigen single thread": {"xla_cpu_multi_thread_eigen": False},
    "xnnpack": {"xla_cpu_use_xnnpack": True},
    "thunk runtime off": {"xla_cpu_use_thunk_runtime": False},
}


def conv(x, w, stride=1):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=DN
    )


def conv_nchw(x, w, stride=1):
    # Same maths with NCHW / OIHW operands: the layouts XLA hands to Eigen change.
    y = jax.lax.conv_general_dilated(
        x.transpose(0, 3, 1, 2),
        w.transpose(3, 2, 0, 1),
        (stride, stride),
        ((1, 1), (1, 1)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return y.transpose(0, 2, 3, 1)


def patches(x: jax.Array, k: int = 3) -> jax.Array:
    """`[B, H, W, C]` -> `[B, H, W, k*k*C]`, the zero-padded k x k neighbourhoods."""
    b, h, w, c = x.shape
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    cols = [xp[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)]
    return jnp.concatenate(cols, axis=-1)


@jax.custom_vjp
def conv_im2col(x, w):
    """Stride-1 3x3 'same' conv whose weight gradient is one im2col matmul."""
    return conv(x, w)


def _fwd(x, w):
    return conv(x, w), (x, w)


def _bwd(res, g):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: conv(x_, w), x)
    kh, kw, ci, co = w.shape
    cols = patches(x, kh).reshape(-1, kh * kw * ci)
    dw = (cols.T @ g.reshape(-1, co)).reshape(kh, kw, ci, co)
    return vjp_x(g)[0], dw


conv_im2col.defvjp(_fwd, _bwd)


def tap_weight_grad(x: jax.Array, g: jax.Array, k: int = 3, stride: int = 1) -> jax.Array:
    """dL/dw `[k, k, C_in, C_out]` of a 'same'-padded conv as k*k matmuls.

    Tap (i, j) of the weight gradient is `x_shifted(i, j)^T @ g` contracted over
    B, H, W: one plain dot per tap on a strided slice of the padded input, instead
    of XLA's convolution whose window is the whole image.
    """
    b, ho, wo, co = g.shape
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    gf = g.reshape(-1, co)
    taps = []
    for i in range(k):
        for j in range(k):
            xs = jax.lax.slice(
                xp,
                (0, i, j, 0),
                (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, xp.shape[-1]),
                (1, stride, stride, 1),
            )
            taps.append(xs.reshape(-1, xp.shape[-1]).T @ gf)
    return jnp.stack(taps).reshape(k, k, x.shape[-1], co)


@jax.custom_vjp
def conv_taps(x, w):
    """Stride-1 3x3 'same' conv whose weight gradient is `tap_weight_grad`."""
    return conv(x, w)


def _taps_bwd(res, g):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: conv(x_, w), x)
    return vjp_x(g)[0], tap_weight_grad(x, g, w.shape[0])


conv_taps.defvjp(_fwd, _taps_bwd)


def jax_ops(fn, x, w, g, options):
    """Compiled (forward, input grad, weight grad) for `fn` with XLA `options`."""
    fwd = jax.jit(fn)
    dgrad = jax.jit(lambda x, w, g: jax.vjp(lambda x_: fn(x_, w), x)[1](g)[0])
    wgrad = jax.jit(lambda x, w, g: jax.vjp(lambda w_: fn(x, w_), w)[1](g)[0])
    out = []
    for f, a in ((fwd, (x, w)), (dgrad, (x, w, g)), (wgrad, (x, w, g))):
        c = f.lower(*a).compile(compiler_options=options or None)
        out.append(lambda c=c, a=a: jax.block_until_ready(c(*a)))
    return out


def torch_ops(x, w, g):
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    wt = torch.from_numpy(np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1)))
    gt = torch.from_numpy(np.ascontiguousarray(np.asarray(g).transpose(0, 3, 1, 2)))
    bw = torch.ops.aten.convolution_backward

    def run(mask):
        return bw(gt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        fwd = lambda: torch.nn.functional.conv2d(xt, wt, padding=1)
        return [fwd, lambda: run([True, False, False]), lambda: run([False, True, False])]


def check(fn, x, w, g):
    """Largest relative difference of fn's weight gradient from lax.conv's."""
    ref = jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]
    got = jax.vjp(lambda w_: fn(x, w_), w)[1](g)[0]
    return float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="8,256,192,16,16", help="B,H,W,C_in,C_out")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--tag", default="level0")
    p.add_argument("--variants", default="", help="comma-separated subset of variant names")
    args = p.parse_args()
    b, h, wd, ci, co = map(int, args.shape.split(","))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, h, wd, ci)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, ci, co)) * 0.1, jnp.float32)
    g = jnp.asarray(rng.standard_normal((b, h, wd, co)), jnp.float32)
    gflop = 2 * b * h * wd * ci * co * 9 / 1e9

    variants = {n: (conv, o) for n, o in FLAG_VARIANTS.items()}
    variants["im2col weight grad"] = (conv_im2col, {})
    variants["NCHW operands"] = (conv_nchw, {})
    variants["tap matmul weight grad"] = (conv_taps, {})
    if args.variants:
        keep = args.variants.split(",")
        variants = {n: v for n, v in variants.items() if n in keep}
    t_ops = torch_ops(x, w, g)
    for f in t_ops:
        f()
    results = {}
    for name, (fn, options) in variants.items():
        t0 = time.perf_counter()
        try:
            ops = jax_ops(fn, x, w, g, options)
        except Exception as e:  # an option this jaxlib does not know
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(name, "failed:", results[name]["error"], file=sys.stderr, flush=True)
            continue
        compile_s = time.perf_counter() - t0
        row = {"options": options, "compile_s": compile_s, "wgrad_rel_err": check(fn, x, w, g)}
        for label, jf, tf in zip(("forward", "dgrad", "wgrad"), ops, t_ops, strict=True):
            jf(), tf()
            jt, tt, ratios = [], [], []
            for _ in range(args.blocks):
                jb, tb = [], []
                for _ in range(args.calls):
                    s = time.perf_counter()
                    jf()
                    jb.append(time.perf_counter() - s)
                for _ in range(args.calls):
                    s = time.perf_counter()
                    tf()
                    tb.append(time.perf_counter() - s)
                jt += jb
                tt += tb
                ratios.append(float(np.median(tb) / np.median(jb)))
            row[label] = {
                "jax_ms": 1e3 * float(np.median(jt)),
                "torch_ms": 1e3 * float(np.median(tt)),
                "jax_gflops": gflop / float(np.median(jt)),
                "torch_gflops": gflop / float(np.median(tt)),
                "jax_over_torch_speed": float(np.median(ratios)),
                "ratio_per_block": ratios,
            }
        results[name] = row
        print(
            f"{name:22s} "
            + "  ".join(
                f"{k} {row[k]['jax_ms']:.0f}/{row[k]['torch_ms']:.0f} ms "
                f"({row[k]['jax_over_torch_speed']:.2f}x)"
                for k in ("forward", "dgrad", "wgrad")
            ),
            file=sys.stderr,
            flush=True,
        )
    out = ROOT / "experiments/results/peer_cpu" / f"conv_micro_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "shape_bhwio": [b, h, wd, ci, co],
        "gflop_per_op": gflop,
        "blocks": args.blocks,
        "calls": args.calls,
        "torch_threads": torch.get_num_threads(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "loadavg": list(os.getloadavg()),
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
        "command": "python " + " ".join(sys.argv),
    }
    out.write_text(json.dumps({"meta": meta, "variants": results}, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
