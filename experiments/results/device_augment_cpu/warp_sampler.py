"""Which bilinear sampler the device warp uses: map_coordinates or a flat gather.

    python experiments/results/device_augment_cpu/warp_sampler.py > warp_sampler.json

Times one jitted affine warp of a `[B, S, S, 1]` batch (one matrix per image),
five rounds of ten calls each, alternating the two samplers; prints JSON with
the per-round milliseconds per call.
"""

import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.ops.geometry import apply_affine, invert_affine, warp_image


def gather_warp(image, matrix, out_hw):
    """Bilinear, zeros outside: four flat gathers from a zero-padded image."""
    h, w = out_hw
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    grid = jnp.stack([xs.ravel(), ys.ravel()], -1)

    def one(img, m):
        hh, ww, _ = img.shape
        src = apply_affine(grid, invert_affine(m))
        x, y = jnp.clip(src[:, 0], -1.0, ww), jnp.clip(src[:, 1], -1.0, hh)
        x0, y0 = jnp.clip(jnp.floor(x), -1, ww - 1), jnp.clip(jnp.floor(y), -1, hh - 1)
        tx, ty = x - x0, y - y0
        i = (y0.astype(jnp.int32) + 1) * (ww + 2) + x0.astype(jnp.int32) + 1

        def channel(c):
            p = jnp.pad(c, 1).ravel()
            top = p[i] * (1 - tx) + p[i + 1] * tx
            bottom = p[i + ww + 2] * (1 - tx) + p[i + ww + 3] * tx
            return (top * (1 - ty) + bottom * ty).reshape(h, w)

        return jax.vmap(channel, -1, -1)(img)

    return jax.vmap(one)(image, matrix)


def main():
    rng = np.random.default_rng(0)
    out = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "cases": [],
    }
    for b, s in ((8, 128), (4, 256)):
        img = jnp.asarray(rng.random((b, s, s, 1), np.float32))
        ang = rng.uniform(-0.3, 0.3, b)
        m = np.tile(np.eye(3), (b, 1, 1)).astype(np.float32)
        m[:, 0, 0], m[:, 0, 1] = 1.1 * np.cos(ang), -np.sin(ang)
        m[:, 1, 0], m[:, 1, 1] = np.sin(ang), 0.9 * np.cos(ang)
        m[:, :2, 2] = 3.3
        m = jnp.asarray(m)
        fns = {
            "map_coordinates": jax.jit(lambda i, m, s=s: warp_image(i, m, (s, s))),
            "gather": jax.jit(lambda i, m, s=s: gather_warp(i, m, (s, s))),
        }
        diff = float(jnp.abs(fns["map_coordinates"](img, m) - fns["gather"](img, m)).max())
        ms = {k: [] for k in fns}
        for _ in range(5):
            for name, f in fns.items():
                f(img, m).block_until_ready()
                t0 = time.perf_counter()
                for _ in range(10):
                    f(img, m).block_until_ready()
                ms[name].append((time.perf_counter() - t0) / 10 * 1e3)
        out["cases"].append({"batch": b, "size": s, "max_abs_diff": diff, "ms_per_call": ms})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
