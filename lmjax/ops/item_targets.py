"""Masks and boxes of outlines and patches rendered on device from their vertices.

Conventions follow `lmjax.ops.targets`: `(x, y)` = (column, row), pixel centres on
integer coordinates, maps `[B, H, W, K]`, and a missing or invisible item renders an
all-zero channel, never NaN. Sizes are in pixels of the map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike, DTypeLike


def mm_to_pixels(value_mm: ArrayLike, spacing_row_col: ArrayLike) -> np.ndarray:
    """`value_mm` in pixels along each axis: `[..., 2]` as (rows, columns).

    The renderers take one isotropic size in pixels; for anisotropic spacing pass
    `mm_to_pixels(v, s).mean(-1)`. That is deliberately simple: a disc or a
    stroke stays round in pixels rather than becoming an ellipse.
    """
    spacing = np.asarray(spacing_row_col, np.float64)
    if spacing.shape[-1:] != (2,) or np.any(~(spacing > 0)):
        raise ValueError(f"spacing must be positive (row, col) pairs, got {spacing.tolist()}")
    return np.asarray(value_mm, np.float64)[..., None] / spacing


def _compact(
    vertices: ArrayLike, vertex_valid: ArrayLike, visible: ArrayLike | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Valid vertices moved to the front in order: `([..., K, V, 2], n [..., K], item_ok)`.

    Invalid (or non-finite) vertices are dropped wherever they sit, so padding at the
    end and a gap in the middle both leave the remaining vertices joined in order.
    Invalid coordinates are zeroed so no NaN reaches the arithmetic.
    """
    v = jnp.asarray(vertices, jnp.float32)
    valid = jnp.asarray(vertex_valid, bool) & jnp.all(jnp.isfinite(v), axis=-1)
    order = jnp.argsort(~valid, axis=-1, stable=True)
    valid = jnp.take_along_axis(valid, order, axis=-1)
    v = jnp.take_along_axis(v, order[..., None], axis=-2)
    v = jnp.where(valid[..., None], v, 0.0)
    n = jnp.sum(valid, axis=-1)
    item_ok = jnp.ones(n.shape, bool) if visible is None else jnp.asarray(visible, bool)
    return v, n, item_ok


def _pixel_grid(shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Column `[1, W, 1]` and row `[H, 1, 1]` centres, broadcasting against `[..., K]`."""
    h, w = shape
    px = jnp.arange(w, dtype=jnp.float32)[None, :, None]
    py = jnp.arange(h, dtype=jnp.float32)[:, None, None]
    return px, py


def _at(values: jax.Array) -> jax.Array:
    """`[..., K]` -> `[..., 1, 1, K]` to broadcast against a `[..., H, W, K]` map."""
    return values[..., None, None, :]


def polyline_masks(
    vertices: ArrayLike,
    vertex_valid: ArrayLike,
    *,
    shape: tuple[int, int],
    width: ArrayLike,
    visible: ArrayLike | None = None,
    soft: bool = False,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Thick polylines: pixels whose centre lies within `width / 2` of a segment.

    Segments join consecutive valid vertices (invalid ones are skipped); the ends
    are round, as the distance is to the closed segment. An outline with fewer
    than two valid vertices or zero total length renders an empty channel
    (`check_item_geometry` reports it on the host).

    Args:
      vertices: `[B, K, V, 2]` (x, y); V is the padded vertex count.
      vertex_valid: bool `[B, K, V]`; non-finite vertices count as invalid.
      shape: `(H, W)` of the masks, static.
      width: stroke width in pixels: a scalar, `[K]` or `[B, K]`.
      visible: optional bool `[B, K]`; False renders an all-zero channel.
      soft: False gives 0/1 with `d <= width / 2` inclusive; True gives the
        coverage ramp `clip(width / 2 + 0.5 - d, 0, 1)` (1 well inside, 0 beyond
        half a pixel outside the stroke).
      dtype: output dtype.

    Returns:
      `[B, H, W, K]` masks.
    """
    v, n, item_ok = _compact(vertices, vertex_valid, visible)
    half = 0.5 * jnp.broadcast_to(jnp.asarray(width, jnp.float32), n.shape)
    px, py = _pixel_grid(shape)
    vt = jnp.moveaxis(v, -2, 0)  # [V, ..., K, 2]: the loop indexes the leading axis
    num_vertices = vt.shape[0]
    seg_len = jnp.linalg.norm(v[..., 1:, :] - v[..., :-1, :], axis=-1)
    seg_ok = jnp.arange(num_vertices - 1) < (n[..., None] - 1)
    has_length = jnp.sum(jnp.where(seg_ok, seg_len, 0.0), axis=-1) > 0

    def segment(s, best):
        a, b = vt[s], vt[s + 1]
        ab = b - a
        len2 = jnp.sum(ab * ab, axis=-1)
        # A zero-length segment is its start point; guarding the division avoids 0/0.
        inv = jnp.where(len2 > 0, 1.0 / jnp.where(len2 > 0, len2, 1.0), 0.0)
        dx, dy = px - _at(a[..., 0]), py - _at(a[..., 1])
        t = jnp.clip((dx * _at(ab[..., 0]) + dy * _at(ab[..., 1])) * _at(inv), 0.0, 1.0)
        ex, ey = dx - t * _at(ab[..., 0]), dy - t * _at(ab[..., 1])
        d2 = jnp.where(_at(s < n - 1), ex * ex + ey * ey, jnp.inf)
        return jnp.minimum(best, d2)

    init = jnp.full((*n.shape[:-1], *shape, n.shape[-1]), jnp.inf, jnp.float32)
    d2 = lax.fori_loop(0, max(num_vertices - 1, 0), segment, init)
    ok = _at(item_ok & has_length)
    if soft:
        d = jnp.sqrt(jnp.where(jnp.isfinite(d2), d2, 0.0))
        cover = jnp.clip(_at(half) + 0.5 - d, 0.0, 1.0)
        return jnp.where(ok & jnp.isfinite(d2), cover, 0.0).astype(dtype)
    return (ok & (d2 <= _at(half * half))).astype(dtype)


def polygon_masks(
    vertices: ArrayLike,
    vertex_valid: ArrayLike,
    *,
    shape: tuple[int, int],
    visible: ArrayLike | None = None,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Filled polygons: the even-odd crossing rule on pixel centres, boundary included.

    This is the rule of `skimage.draw.polygon` (0.26): a pixel centre is inside
    when a ray to +x crosses the edges an odd number of times (pnpoly's half-open
    test `y_i <= y < y_prev`), or when it lies on an edge or a vertex. Two
    boundary-only differences remain: skimage leaves out some centres lying
    exactly where two edges of a self-intersecting polygon cross, and a centre
    within float rounding of a slanted edge can flip (skimage uses float64).
    Fewer than three valid vertices, or all of them on one line, render an
    empty channel.

    Args:
      vertices: `[B, K, V, 2]` (x, y), the polygon closing from the last valid
        vertex back to the first.
      vertex_valid: bool `[B, K, V]`; non-finite vertices count as invalid.
      shape: `(H, W)` of the masks, static.
      visible: optional bool `[B, K]`; False renders an all-zero channel.
      dtype: output dtype.

    Returns:
      `[B, H, W, K]` masks with values 0 or 1.
    """
    v, n, item_ok = _compact(vertices, vertex_valid, visible)
    px, py = _pixel_grid(shape)
    vt = jnp.moveaxis(v, -2, 0)
    num_vertices = vt.shape[0]
    # Vertex 0's previous vertex is the last valid one, which closes the ring.
    last = jnp.take_along_axis(v, jnp.maximum(n - 1, 0)[..., None, None], axis=-2)[..., 0, :]

    def edge(i, parity):
        cur = vt[i]
        prev = jnp.where(i == 0, last, vt[jnp.maximum(i - 1, 0)])
        xi, yi = _at(cur[..., 0]), _at(cur[..., 1])
        xj, yj = _at(prev[..., 0]), _at(prev[..., 1])
        spans = ((yi <= py) & (py < yj)) | ((yj <= py) & (py < yi))
        dy = jnp.where(yj != yi, yj - yi, 1.0)
        real = _at(i < n)
        crosses = spans & (px < (xj - xi) * (py - yi) / dy + xi) & real
        cross = (xj - xi) * (py - yi) - (yj - yi) * (px - xi)
        in_box = (jnp.minimum(xi, xj) <= px) & (px <= jnp.maximum(xi, xj))
        in_box = in_box & (jnp.minimum(yi, yj) <= py) & (py <= jnp.maximum(yi, yj))
        odd, edge_hit = parity
        return odd ^ crosses, edge_hit | ((cross == 0) & in_box & real)

    init = jnp.zeros((*n.shape[:-1], *shape, n.shape[-1]), bool)
    odd, on_edge = lax.fori_loop(0, num_vertices, edge, (init, init))
    # All valid vertices on one line (or fewer than three) enclose nothing; skimage
    # would still draw that line's pixels, but a patch target should be empty.
    rel = v - v[..., :1, :]
    fan = jnp.abs(rel[..., :-1, 0] * rel[..., 1:, 1] - rel[..., :-1, 1] * rel[..., 1:, 0])
    fan_ok = jnp.arange(num_vertices - 1) < (n[..., None] - 1)
    has_area = jnp.sum(jnp.where(fan_ok, fan, 0.0), axis=-1) > 0
    return ((odd | on_edge) & _at(item_ok & (n >= 3) & has_area)).astype(dtype)


def item_boxes(
    points_or_vertices: ArrayLike,
    valid: ArrayLike,
    *,
    pad: ArrayLike = 0.0,
    shape: tuple[int, int] | None = None,
    visible: ArrayLike | None = None,
) -> jax.Array:
    """Tight `(x0, y0, x1, y1)` boxes of each item's valid geometry, `[B, K, 4]`.

    Pass `pad = radius` for landmark discs and `pad = width / 2` for outlines, so
    the box bounds every pixel centre the renderers switch on. Items with no
    valid geometry (or invisible) get NaN. With `shape = (H, W)` the box is
    clipped to the pixel centres `[0, W - 1] x [0, H - 1]`, and an item lying
    wholly outside the image gets NaN.

    Args:
      points_or_vertices: landmarks `[B, K, 2]` or vertices `[B, K, V, 2]`; the
        rank tells which.
      valid: bool `[B, K]` or `[B, K, V]` matching the above.
      pad: margin in pixels: a scalar, `[K]` or `[B, K]`.
      shape: optional `(H, W)` to clip to.
      visible: optional bool `[B, K]`.

    Returns:
      `[B, K, 4]` float32 boxes.
    """
    p = jnp.asarray(points_or_vertices, jnp.float32)
    ok = jnp.asarray(valid, bool)
    if p.ndim == 3:
        p, ok = p[..., None, :], ok[..., None]
    ok = ok & jnp.all(jnp.isfinite(p), axis=-1)
    lo = jnp.min(jnp.where(ok[..., None], p, jnp.inf), axis=-2)
    hi = jnp.max(jnp.where(ok[..., None], p, -jnp.inf), axis=-2)
    pad = jnp.broadcast_to(jnp.asarray(pad, jnp.float32), lo.shape[:-1])[..., None]
    lo, hi = lo - pad, hi + pad
    item_ok = jnp.any(ok, axis=-1)
    if visible is not None:
        item_ok = item_ok & jnp.asarray(visible, bool)
    if shape is not None:
        limit = jnp.array([shape[1] - 1, shape[0] - 1], jnp.float32)
        item_ok = item_ok & jnp.all((hi >= 0) & (lo <= limit), axis=-1)
        lo, hi = jnp.clip(lo, 0.0, limit), jnp.clip(hi, 0.0, limit)
    box = jnp.concatenate([lo, hi], axis=-1)
    return jnp.where(item_ok[..., None], box, jnp.nan)


KINDS = ("landmark", "outline", "patch")


def check_item_geometry(kind: str, vertices: ArrayLike, *, name: str) -> None:
    """Raises a one-line `ValueError` naming the item when its geometry cannot render.

    A wholly missing item (no finite vertex) is fine: it renders as absent. Otherwise
    a landmark needs one point, an outline two distinct points (non-zero length),
    and a patch three distinct points enclosing a non-zero area.
    """
    if kind not in KINDS:
        raise ValueError(f"item {name!r}: unknown kind {kind!r}, expected one of {KINDS}")
    v = np.asarray(vertices, np.float64).reshape(-1, 2)
    finite = np.isfinite(v)
    if np.any(finite.any(-1) & ~finite.all(-1)):
        raise ValueError(f"{kind} {name!r}: a vertex has one finite and one NaN coordinate")
    v = v[finite.all(-1)]
    if len(v) == 0:
        return
    distinct = len(np.unique(v, axis=0))
    if kind == "landmark" and len(v) != 1:
        raise ValueError(f"landmark {name!r}: expected one point, got {len(v)}")
    if kind == "outline" and distinct < 2:
        raise ValueError(f"outline {name!r}: zero length ({len(v)} points, {distinct} distinct)")
    if kind == "patch":
        if distinct < 3:
            raise ValueError(f"patch {name!r}: {distinct} distinct points, a patch needs 3")
        x, y = v[:, 0], v[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        if area == 0:
            raise ValueError(f"patch {name!r}: zero area (all points on one line)")
