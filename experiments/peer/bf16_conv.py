"""A 3x3 convolution's forward and weight gradient, and a matmul, in float32 and
bfloat16 on the CPU: does XLA:CPU's bf16 path (AVX-512 BF16 / AMX hardware, see
`lmjax.hardware.cpu_bf16`) run faster? Median ms of 3 calls, compiled with lmjax's
CPU options and with XLA's defaults.

    python experiments/peer/bf16_conv.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

OPT = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
DN = ("NHWC", "HWIO", "NHWC")


def bench(f, a, n=3):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*a))
        ts.append(time.perf_counter() - t)
    return 1e3 * np.median(ts)


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def wgrad(x, w, g):
    return jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]


def main() -> None:
    rng = np.random.default_rng(0)
    for b, h, w, ci, co in [(8, 128, 96, 32, 32), (8, 32, 24, 128, 128)]:
        for dt in (jnp.float32, jnp.bfloat16):
            x = jnp.asarray(rng.standard_normal((b, h, w, ci)), dt)
            wt = jnp.asarray(rng.standard_normal((3, 3, ci, co)), dt)
            g = jnp.asarray(rng.standard_normal((b, h, w, co)), dt)
            times = []
            for opt in (OPT, None):
                fw = jax.jit(conv).lower(x, wt).compile(compiler_options=opt)
                wg = jax.jit(wgrad).lower(x, wt, g).compile(compiler_options=opt)
                times += [bench(fw, (x, wt)), bench(wg, (x, wt, g))]
            print(
                (b, h, w, ci, co),
                dt.__name__,
                f"fwd {times[0]:.1f} wgrad {times[1]:.1f} | "
                f"xla default: fwd {times[2]:.1f} wgrad {times[3]:.1f}",
                flush=True,
            )
        x = jnp.asarray(rng.standard_normal((8 * h * w // 4, ci * 4)), jnp.float32)
        for dt in (jnp.float32, jnp.bfloat16):
            a, m = x.astype(dt), jnp.asarray(rng.standard_normal((ci * 4, co * 4)), dt)
            f = jax.jit(lambda a, m: a @ m).lower(a, m).compile(compiler_options=OPT)
            print("dot", a.shape, m.shape, dt.__name__, f"{bench(f, (a, m)):.1f}", flush=True)


if __name__ == "__main__":
    main()
