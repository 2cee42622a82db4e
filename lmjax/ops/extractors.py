"""Landmark coordinates from predicted maps, on device.

Every extractor takes maps `[..., H, W, K]` (NHWC, landmarks last; usually
`[B, H, W, K]`) and returns `(coords, confidence)`: coords `[..., K, 2]` float32
as `(x, y)` = (column, row) with pixel centres on integer coordinates, and
confidence `[..., K]` float32 whose meaning each function states. All are pure
`jnp`, trace once under `jax.jit` for any B and K, and take no Python loops over
landmarks or batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _flat(maps: ArrayLike) -> tuple[jax.Array, int, int]:
    """`[..., H, W, K]` -> float32 `[..., H * W, K]`, with H and W."""
    maps = jnp.asarray(maps, jnp.float32)
    *lead, h, w, k = maps.shape
    return maps.reshape(*lead, h * w, k), h, w


def _index_to_xy(index: jax.Array, w: int) -> jax.Array:
    """Flat row-major pixel index `[..., K]` -> float32 `[..., K, 2]` (x, y)."""
    return jnp.stack([index % w, index // w], axis=-1).astype(jnp.float32)


def _expected_xy(probs: jax.Array) -> jax.Array:
    """Expectation of (x, y) under per-channel weights `[..., H, W, K]` summing to 1."""
    h, w = probs.shape[-3], probs.shape[-2]
    # Marginals first: two small dot products instead of two full-size products.
    x = jnp.einsum("...wk,w->...k", jnp.sum(probs, axis=-3), jnp.arange(w, dtype=jnp.float32))
    y = jnp.einsum("...hk,h->...k", jnp.sum(probs, axis=-2), jnp.arange(h, dtype=jnp.float32))
    return jnp.stack([x, y], axis=-1)


def _outer_and(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """`[..., R, K]` and `[..., C, K]` booleans -> `[..., R, C, K]`."""
    return rows[..., :, None, :] & cols[..., None, :, :]


def hard_argmax(maps: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Integer position of each channel's maximum.

    Ties go to the first pixel in row-major order. Not differentiable in the
    coordinates.

    Args:
      maps: `[B, H, W, K]` heatmaps, logits or probabilities.

    Returns:
      coords `[B, K, 2]` (x, y) on pixel centres; confidence `[B, K]` = the
      maximum value of the channel, in the units of `maps`.
    """
    flat, _, w = _flat(maps)
    index = jnp.argmax(flat, axis=-2)
    return _index_to_xy(index, w), jnp.max(flat, axis=-2)


def soft_argmax(maps: ArrayLike, *, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Expected position under a spatial softmax (integral regression).

    `p = softmax(maps / temperature)` over the H * W pixels of each channel, and
    coords = `sum_p p * (x, y)`. With log-heatmaps as `maps` the softmax is the
    heatmap itself, so a Gaussian is recovered to sub-pixel accuracy; with
    heatmaps in [0, 1] use a small temperature, or the flat background pulls the
    estimate toward the image centre.

    Args:
      maps: `[B, H, W, K]` logits.
      temperature: divides `maps` before the softmax; smaller is sharper.

    Returns:
      coords `[B, K, 2]` (x, y), differentiable in `maps`; confidence `[B, K]`
      = the spatial softmax's peak probability, in (0, 1].
    """
    flat, h, w = _flat(maps)
    probs = jax.nn.softmax(flat / temperature, axis=-2)
    coords = _expected_xy(probs.reshape(*probs.shape[:-2], h, w, probs.shape[-1]))
    return coords, jnp.max(probs, axis=-2)


def local_soft_argmax(
    maps: ArrayLike, *, window: int = 7, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Soft-argmax restricted to a `window` x `window` patch around the hard maximum.

    Distant secondary peaks, which bias a global soft-argmax, are ignored. The
    window stays centred on the maximum; near the border its pixels that fall
    outside the map are dropped (masked out of the softmax) rather than the
    window being shifted inward, so a maximum on the border is not pulled
    toward the inside by pixels farther than `window // 2` from it. The patch
    is gathered with `take_along_axis`, so the softmax costs O(window^2) per
    channel.

    Args:
      maps: `[B, H, W, K]` logits (log-heatmaps, or heatmaps with a small
        temperature).
      window: odd side of the patch in pixels.
      temperature: divides `maps` before the softmax; smaller is sharper.

    Returns:
      coords `[B, K, 2]` (x, y), within `window // 2` of the hard maximum and
      differentiable in `maps` (the window's position is not); confidence
      `[B, K]` = the maximum value of the channel, as in `hard_argmax`. The
      window's own softmax peak is not used: it only sees `window^2` pixels and
      so says nothing about how the peak stands against the rest of the map.
    """
    if window < 1 or window % 2 != 1:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}")
    flat, h, w = _flat(maps)
    index = jnp.argmax(flat, axis=-2)  # [..., K]
    offsets = jnp.arange(window)[:, None] - window // 2
    rows = (index // w)[..., None, :] + offsets  # [..., window, K]
    cols = (index % w)[..., None, :] + offsets
    inside = _outer_and((rows >= 0) & (rows < h), (cols >= 0) & (cols < w))
    # Clipped indices keep the gather in bounds; `inside` masks what they fetch.
    gather = (
        jnp.clip(rows, 0, h - 1)[..., :, None, :] * w + jnp.clip(cols, 0, w - 1)[..., None, :, :]
    )
    patch = jnp.take_along_axis(flat, gather.reshape(*flat.shape[:-2], -1, flat.shape[-1]), -2)
    patch = patch.reshape(gather.shape)  # [..., window, window, K]
    # The centre pixel is always inside, so each softmax has a finite logit.
    logits = jnp.where(inside, patch / temperature, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=(-3, -2))
    x = jnp.sum(jnp.sum(probs, axis=-3) * cols.astype(jnp.float32), axis=-2)
    y = jnp.sum(jnp.sum(probs, axis=-2) * rows.astype(jnp.float32), axis=-2)
    coords = jnp.stack([x, y], axis=-1)
    return coords, jnp.max(flat, axis=-2)


def sigmoid_argmax(logits: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Position of the maximum of `sigmoid(logits)` (per-pixel binary segmentation).

    The sigmoid is monotonic, so this is the argmax of the logits; the sigmoid
    is applied only to the peak. Not differentiable in the coordinates.

    Args:
      logits: `[B, H, W, K]` per-pixel logits.

    Returns:
      coords `[B, K, 2]` (x, y) on pixel centres; confidence `[B, K]` = the
      sigmoid of the peak logit, the peak foreground probability, in (0, 1).
    """
    coords, peak = hard_argmax(logits)
    return coords, jax.nn.sigmoid(peak)


def probability_centroid(probs: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Probability-weighted centroid of each channel (Method 1 of the lower-limb paper).

    `C = sum_p P(p) * (x, y) / sum_p P(p)` over the whole map.

    Args:
      probs: `[B, H, W, K]` non-negative probabilities (e.g. sigmoid outputs).

    Returns:
      coords `[B, K, 2]` (x, y), differentiable in `probs`; NaN for a channel
      with zero total mass. confidence `[B, K]` = the channel's peak
      probability, 0 where the mass is zero.
    """
    probs = jnp.asarray(probs, jnp.float32)
    mass = jnp.sum(probs, axis=(-3, -2))
    ok = mass > 0
    # Divide by a safe mass so the unused branch cannot send NaN into gradients.
    weights = probs / jnp.where(ok, mass, 1.0)[..., None, None, :]
    coords = jnp.where(ok[..., None], _expected_xy(weights), jnp.nan)
    return coords, jnp.where(ok, jnp.max(probs, axis=(-3, -2)), 0.0)
