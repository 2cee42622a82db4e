"""Training targets rendered on device from landmark coordinates.

Every renderer takes coordinates `[..., K, 2]` as `(x, y)` = (column, row) with
pixel centres on integer coordinates, and returns maps `[..., H, W, K]` (NHWC,
landmarks last). A landmark that is missing (NaN) or not visible renders an
all-zero channel, never NaN. Maps are built by broadcasting a pixel grid against
the coordinates, so they trace once under `jax.jit` whatever B and K are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike


def _split_coords(
    coords: ArrayLike, visible: ArrayLike | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns `(x, y, valid)`, each `[..., K]`, with invalid coordinates set to 0.

    Zeroing the invalid coordinates before any arithmetic keeps NaN out of both
    the maps and their gradients (a `where` after the fact would still let NaN
    flow backwards through the unused branch).
    """
    coords = jnp.asarray(coords, jnp.float32)
    valid = jnp.all(jnp.isfinite(coords), axis=-1)
    if visible is not None:
        valid = valid & jnp.asarray(visible, bool)
    safe = jnp.where(valid[..., None], coords, 0.0)
    return safe[..., 0], safe[..., 1], valid


def _axis_offsets(centre: jax.Array, size: int) -> jax.Array:
    """Pixel index minus centre along one axis: `[..., size, K]` from `[..., K]`."""
    grid = jnp.arange(size, dtype=jnp.float32)[:, None]
    return grid - centre[..., None, :]


def _per_landmark(value: ArrayLike, like: jax.Array) -> jax.Array:
    """Broadcasts a scalar, `[K]` or `[..., K]` hyperparameter to the shape of `like`."""
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), like.shape)


def _outer(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """`[..., H, K]` and `[..., W, K]` -> `[..., H, W, K]` (product or logical and)."""
    return rows[..., :, None, :] * cols[..., None, :, :]


def gaussian_heatmaps(
    coords: ArrayLike,
    *,
    shape: tuple[int, int],
    sigma: ArrayLike,
    visible: ArrayLike | None = None,
    normalize: bool = False,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Isotropic Gaussian heatmaps, one channel per landmark.

    `h(p) = exp(-|p - c|^2 / (2 sigma^2))`, so the value is 1 at the landmark
    itself (exactly 1 only when the landmark sits on a pixel centre).

    Args:
      coords: `[B, K, 2]` (x, y) in pixels of the map (any leading axes allowed).
      shape: `(H, W)` of the maps, static.
      sigma: standard deviation in pixels: a scalar, `[K]` or `[B, K]`.
      visible: optional bool `[B, K]`; False renders an all-zero channel.
      normalize: when True each non-empty channel is divided by its sum over
        the image, so it sums to 1 (truncation at the border is renormalised).
      dtype: output dtype.

    Returns:
      `[B, H, W, K]` heatmaps; differentiable in `coords` and `sigma`.
    """
    h, w = shape
    x, y, valid = _split_coords(coords, visible)
    sigma = _per_landmark(sigma, x)
    inv = -0.5 / jnp.square(sigma)
    # The Gaussian is separable: H + W exponentials per landmark instead of H * W.
    gx = jnp.exp(jnp.square(_axis_offsets(x, w)) * inv[..., None, :])
    gy = jnp.exp(jnp.square(_axis_offsets(y, h)) * inv[..., None, :])
    gy = gy * valid[..., None, :]
    maps = _outer(gy, gx)
    if normalize:
        total = jnp.sum(maps, axis=(-3, -2), keepdims=True)
        # A landmark far outside the image underflows to an all-zero channel;
        # keep it zero instead of dividing by zero.
        maps = jnp.where(total > 0, maps / jnp.where(total > 0, total, 1.0), 0.0)
    return maps.astype(dtype)


def circle_masks(
    coords: ArrayLike,
    *,
    shape: tuple[int, int],
    radius: ArrayLike,
    visible: ArrayLike | None = None,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Binary discs: pixels whose centre lies within `radius` of the landmark.

    The pixel nearest to the landmark (`floor(x + 0.5), floor(y + 0.5)`, ties
    rounding up) is always included, so `radius=0` gives that single pixel and
    small radii never give an empty mask for a landmark inside the image.

    Args:
      coords: `[B, K, 2]` (x, y) in pixels of the mask (any leading axes allowed).
      shape: `(H, W)` of the masks, static.
      radius: disc radius in pixels (inclusive, `d <= radius`): a scalar, `[K]`
        or `[B, K]`.
      visible: optional bool `[B, K]`; False renders an all-zero channel.
      dtype: output dtype.

    Returns:
      `[B, H, W, K]` masks with values 0 or 1.
    """
    h, w = shape
    x, y, valid = _split_coords(coords, visible)
    r2 = jnp.square(_per_landmark(radius, x))
    dx, dy = _axis_offsets(x, w), _axis_offsets(y, h)
    d2 = jnp.square(dy)[..., :, None, :] + jnp.square(dx)[..., None, :, :]
    nearest = _outer(
        jnp.arange(h, dtype=jnp.float32)[:, None] == jnp.floor(y + 0.5)[..., None, :],
        jnp.arange(w, dtype=jnp.float32)[:, None] == jnp.floor(x + 0.5)[..., None, :],
    )
    inside = (d2 <= r2[..., None, None, :]) | nearest
    return (inside & valid[..., None, None, :]).astype(dtype)


def square_masks(
    coords: ArrayLike,
    *,
    shape: tuple[int, int],
    side: ArrayLike,
    visible: ArrayLike | None = None,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Binary squares of `side` x `side` pixels centred on the landmark.

    Along each axis the square holds the pixels `i` with
    `c - side / 2 < i <= c + side / 2`: a half-open interval of length `side`,
    so it always holds exactly `side` pixels (for an integer `side`) before
    clipping at the border. For odd sides and a landmark on a pixel centre this
    is symmetric; for even sides and a landmark on a pixel centre the extra
    pixel goes after the landmark (e.g. side 20 at x = 50 covers columns 41..60).
    The square is thus the block of pixels whose centre is nearest the landmark.

    Args:
      coords: `[B, K, 2]` (x, y) in pixels of the mask (any leading axes allowed).
      shape: `(H, W)` of the masks, static.
      side: side length in pixels: a scalar, `[K]` or `[B, K]`.
      visible: optional bool `[B, K]`; False renders an all-zero channel.
      dtype: output dtype.

    Returns:
      `[B, H, W, K]` masks with values 0 or 1.
    """
    h, w = shape
    x, y, valid = _split_coords(coords, visible)
    half = 0.5 * _per_landmark(side, x)[..., None, :]
    dx, dy = _axis_offsets(x, w), _axis_offsets(y, h)
    in_cols = (dx > -half) & (dx <= half)
    in_rows = (dy > -half) & (dy <= half) & valid[..., None, :]
    return _outer(in_rows, in_cols).astype(dtype)


def add_background(masks: ArrayLike, *, exclusive: bool = False) -> jax.Array:
    """Appends a background channel as the LAST channel.

    Args:
      masks: `[B, H, W, K]` masks or heatmaps with values in [0, 1].
      exclusive: False gives background `1 - max_k masks` next to the masks
        unchanged (overlapping landmarks stay overlapping). True makes the
        labels mutually exclusive, for softmax cross-entropy: each pixel becomes
        one-hot on the largest of the K channels and the background, ties going
        to the lowest landmark index, so overlapping discs are split and every
        pixel sums to 1.

    Returns:
      `[B, H, W, K + 1]` in the dtype of `masks`.
    """
    masks = jnp.asarray(masks)
    background = 1.0 - jnp.clip(jnp.max(masks, axis=-1, keepdims=True), 0.0, 1.0)
    full = jnp.concatenate([masks, background.astype(masks.dtype)], axis=-1)
    if exclusive:
        full = jax.nn.one_hot(jnp.argmax(full, axis=-1), full.shape[-1], dtype=masks.dtype)
    return full
