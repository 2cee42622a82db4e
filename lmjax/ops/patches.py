"""Patches around points, cut on the device, and the exact map between their frames.

A patch of side P is a grid of P x P samples; its frame is the 3x3 affine `F` that
maps a patch pixel `(u, v, 1)` (pixel centres on integers, `(P - 1) / 2` the
centre) to image pixels. Every patch of a batch is cut by one bilinear gather
(`extract_patches`), and points go from patch to image and back through `F` and
its inverse, so a refinement's answer lands in the image frame exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def patch_frames(
    centres: ArrayLike,
    *,
    size: int,
    step: ArrayLike = 1.0,
    angle: ArrayLike = 0.0,
    scale: ArrayLike = 1.0,
) -> jax.Array:
    """Frames of patches centred on `centres`.

    Args:
      centres: `[..., 2]` (x, y) in image pixels.
      size: patch side P in samples, static.
      step: image pixels between neighbouring samples (broadcast to `centres[..., 0]`).
      angle: rotation of the patch grid in radians, counter-clockwise in (x, y).
      scale: multiplies `step` (scale augmentation).

    Returns:
      `[..., 3, 3]` affines from patch pixels to image pixels.
    """
    centres = jnp.asarray(centres, jnp.float32)
    shape = centres.shape[:-1]
    s = jnp.broadcast_to(jnp.asarray(step, jnp.float32) * jnp.asarray(scale, jnp.float32), shape)
    a = jnp.broadcast_to(jnp.asarray(angle, jnp.float32), shape)
    cos, sin = jnp.cos(a) * s, jnp.sin(a) * s
    half = (size - 1) / 2.0
    # F = T(centre) R(angle) S(step) T(-half)
    tx = centres[..., 0] - half * (cos - sin)
    ty = centres[..., 1] - half * (sin + cos)
    zero, one = jnp.zeros(shape), jnp.ones(shape)
    rows = [
        jnp.stack([cos, -sin, tx], -1),
        jnp.stack([sin, cos, ty], -1),
        jnp.stack([zero, zero, one], -1),
    ]
    return jnp.stack(rows, -2)


def apply_frames(points: ArrayLike, frames: ArrayLike) -> jax.Array:
    """`points [..., 2]` through `frames [..., 3, 3]` (one frame per point)."""
    points = jnp.asarray(points, jnp.float32)
    frames = jnp.asarray(frames, jnp.float32)
    return jnp.einsum("...ij,...j->...i", frames[..., :2, :2], points) + frames[..., :2, 2]


def invert_frames(frames: ArrayLike) -> jax.Array:
    """Inverses of affine `frames [..., 3, 3]` (closed form, no general solve)."""
    frames = jnp.asarray(frames, jnp.float32)
    a, b = frames[..., 0, 0], frames[..., 0, 1]
    c, d = frames[..., 1, 0], frames[..., 1, 1]
    tx, ty = frames[..., 0, 2], frames[..., 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx, ity = -(ia * tx + ib * ty), -(ic * tx + id_ * ty)
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    rows = [
        jnp.stack([ia, ib, itx], -1),
        jnp.stack([ic, id_, ity], -1),
        jnp.stack([zero, zero, one], -1),
    ]
    return jnp.stack(rows, -2)


def extract_patches(images: ArrayLike, frames: ArrayLike, *, size: int) -> jax.Array:
    """Bilinear samples of each image on its patches' grids, zero outside the image.

    Args:
      images: `[N, H, W, C]`.
      frames: `[N, K, 3, 3]` patch-to-image affines (`patch_frames`).
      size: patch side P, static.

    Returns:
      `[N, K, P, P, C]` patches: sample `[n, k, v, u]` is image n at
      `frames[n, k] @ (u, v, 1)`; differentiable in `images` and `frames`.
    """
    images = jnp.asarray(images)
    n, h, w, c = images.shape
    k = frames.shape[1]
    grid = jnp.arange(size, dtype=jnp.float32)
    uv = jnp.stack(jnp.broadcast_arrays(grid[None, :], grid[:, None]), -1)  # [P, P, 2] (u, v)
    xy = apply_frames(uv[None, None], jnp.asarray(frames)[:, :, None, None])  # [N, K, P, P, 2]
    x0, y0 = jnp.floor(xy[..., 0]), jnp.floor(xy[..., 1])
    fx, fy = xy[..., 0] - x0, xy[..., 1] - y0
    flat = images.reshape(n, h * w, c)

    def corner(dx: int, dy: int, weight: jax.Array) -> jax.Array:
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        index = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        got = jnp.take_along_axis(flat, index.reshape(n, -1, 1), axis=1)
        got = got.reshape(n, k, size, size, c)
        return got * (weight * inside)[..., None].astype(got.dtype)

    return (
        corner(0, 0, (1 - fx) * (1 - fy))
        + corner(1, 0, fx * (1 - fy))
        + corner(0, 1, (1 - fx) * fy)
        + corner(1, 1, fx * fy)
    )


def normalize_patches(patches: ArrayLike, *, eps: float = 1e-6) -> jax.Array:
    """Each patch `[..., P, P, C]` to zero mean and unit deviation over its pixels, so
    the local model sees contrast, not the film's exposure."""
    p = jnp.asarray(patches, jnp.float32)
    mean = p.mean(axis=(-3, -2, -1), keepdims=True)
    std = p.std(axis=(-3, -2, -1), keepdims=True)
    return (p - mean) / (std + eps)


__all__ = [
    "apply_frames",
    "extract_patches",
    "invert_frames",
    "normalize_patches",
    "patch_frames",
]
