"""Affine geometry on device: move points and warp images with 3x3 matrices.

A matrix `M` acts on homogeneous column vectors `(x, y, 1)` with pixel centres on
integer coordinates; it maps a point of the source frame to the output frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import ndimage


def apply_affine(points: jax.Array, matrix: jax.Array) -> jax.Array:
    """Maps points through an affine matrix.

    Args:
      points: `[..., K, 2]` (x, y); NaN rows stay NaN.
      matrix: `[..., 3, 3]`, broadcastable against the leading axes of `points`.

    Returns:
      `[..., K, 2]` mapped points.
    """
    points = jnp.asarray(points)
    matrix = jnp.asarray(matrix, points.dtype)
    lin = matrix[..., None, :2, :2]
    off = matrix[..., None, :2, 2]
    return jnp.einsum("...ij,...kj->...ki", lin[..., 0, :, :], points) + off


def invert_affine(matrix: jax.Array) -> jax.Array:
    """Inverse of `[..., 3, 3]` affine matrices (last row `0 0 1`)."""
    matrix = jnp.asarray(matrix)
    lin = matrix[..., :2, :2]
    a, b, c, d = lin[..., 0, 0], lin[..., 0, 1], lin[..., 1, 0], lin[..., 1, 1]
    det = a * d - b * c
    inv_lin = jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-c, a], -1)], -2) / det[..., None, None]
    inv_off = -jnp.einsum("...ij,...j->...i", inv_lin, matrix[..., :2, 2])
    top = jnp.concatenate([inv_lin, inv_off[..., None]], -1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], matrix.dtype), top.shape[:-2] + (1, 3))
    return jnp.concatenate([top, bottom], -2)


def warp_image(
    image: jax.Array,
    matrix: jax.Array,
    out_hw: tuple[int, int],
    *,
    order: int = 1,
    cval: float = 0.0,
) -> jax.Array:
    """Warps an NHWC image batch so that source point p lands at `matrix @ p`.

    Args:
      image: `[B, H, W, C]`.
      matrix: `[B, 3, 3]` source-to-output affines.
      out_hw: output `(height, width)`, static.
      order: 0 nearest (for label maps), 1 bilinear.
      cval: value outside the source.

    Returns:
      `[B, out_h, out_w, C]` in the dtype of `image`.
    """
    h, w = out_hw
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    grid = jnp.stack([xs.ravel(), ys.ravel()], -1)  # [H*W, 2] (x, y)

    def one(img, m):
        src = apply_affine(grid, invert_affine(m.astype(jnp.float32)))

        def channel(ch):
            out = ndimage.map_coordinates(
                ch.astype(jnp.float32),
                [src[:, 1], src[:, 0]],
                order=order,
                mode="constant",
                cval=cval,
            )
            return out.reshape(h, w)

        return jax.vmap(channel, in_axes=-1, out_axes=-1)(img).astype(image.dtype)

    return jax.vmap(one)(image, matrix)


def resize_nearest(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """`[B, H, W, ...]` -> `[B, h, w, ...]` by nearest sampling (labels stay labels).

    Output pixel i reads input pixel `floor((i + 0.5) * H / h)`: pixel centres match,
    as in `lmjax.task.rescale`, so halving picks one pixel of every 2 x 2 block.
    """
    h, w = hw
    if x.shape[1:3] == (h, w):
        return x
    rows = jnp.floor((jnp.arange(h) + 0.5) * (x.shape[1] / h)).astype(jnp.int32)
    cols = jnp.floor((jnp.arange(w) + 0.5) * (x.shape[2] / w)).astype(jnp.int32)
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)
