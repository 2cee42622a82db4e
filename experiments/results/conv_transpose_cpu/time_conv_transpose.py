"""Forward and forward+backward time of `nnx.ConvTranspose` against lmjax's phase version.

    python experiments/results/conv_transpose_cpu/time_conv_transpose.py > .../times.txt

Shapes: the ViT heatmap head's first deconv (4x4, stride 2, 768 -> 256, 16x12,
batch 4) and a U-Net-style 2x2 stride-2 upsampling (32 -> 16, 128x96, batch 8).
Best of 2 calls after one warm-up, plain `jax.jit` (XLA's default options).
"""

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose

SHAPES = [  # B, H, W, C_in, C_out, kernel, padding
    (4, 16, 12, 768, 256, 4, ((2, 2), (2, 2))),
    (8, 128, 96, 32, 16, 2, "VALID"),
]
IMPLS = {
    "nnx.ConvTranspose": nnx.ConvTranspose,
    "phases": lambda *a, **kw: ConvTranspose(*a, impl="phases", **kw),
}


def best_ms(f, *args, calls: int = 2) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> None:
    print(f"jax {jax.__version__}, {platform.processor() or platform.machine()}, {jax.devices()}")
    for b, h, w, ci, co, k, pad in SHAPES:
        x = jnp.asarray(np.random.default_rng(0).standard_normal((b, h, w, ci)), jnp.float32)
        for name, cls in IMPLS.items():
            graphdef, params = nnx.split(cls(ci, co, (k, k), (2, 2), padding=pad, rngs=nnx.Rngs(0)))
            fwd = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x))
            loss = lambda p, x, g=graphdef: jnp.sum(nnx.merge(g, p)(x) ** 2)
            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
            f_ms = best_ms(fwd, params, x)
            g_ms = best_ms(grad, params, x)
            print(
                f"{b}x{h}x{w}x{ci}->{co} k{k} s2 {name:18s} forward {f_ms:7.0f} ms  "
                f"forward+backward {g_ms:7.0f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
