"""Masks and boxes of mixed item sets, one kind per channel, rendered on the device.

`kind` is an int array (`KIND_IDS`: 0 landmark, 1 outline, 2 patch) broadcasting
against the items, so the channels of one call may be any mix of kinds; a traced
`kind` (prompts sampled per step) renders every kind and keeps the right one.
Geometry is `lmjax.data.items.item_vertices`': a landmark is vertex 0, an outline
or patch its valid vertices. Conventions are `lmjax.ops.item_targets`'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lmjax.ops.item_targets import (
    KINDS,
    _at,
    _pixel_grid,
    item_boxes,
    polygon_masks,
    polyline_masks,
)

KIND_IDS = {k: i for i, k in enumerate(KINDS)}


def kind_ids(kinds) -> jax.Array:
    """`KIND_IDS` of a sequence of kind names, int32."""
    return jnp.asarray([KIND_IDS[k] for k in kinds], jnp.int32)


def disc_masks(
    points: ArrayLike,
    *,
    shape: tuple[int, int],
    radius: ArrayLike,
    visible: ArrayLike | None = None,
    soft: bool = False,
) -> jax.Array:
    """Discs `[B, H, W, K]` around `points [B, K, 2]`: centre within `radius` (inclusive),
    or with `soft` the coverage ramp `clip(radius + 0.5 - d, 0, 1)`."""
    p = jnp.asarray(points, jnp.float32)
    ok = jnp.all(jnp.isfinite(p), axis=-1)
    if visible is not None:
        ok = ok & jnp.asarray(visible, bool)
    p = jnp.where(ok[..., None], p, 0.0)
    r = jnp.broadcast_to(jnp.asarray(radius, jnp.float32), ok.shape)
    px, py = _pixel_grid(shape)
    d2 = (px - _at(p[..., 0])) ** 2 + (py - _at(p[..., 1])) ** 2
    if soft:
        m = jnp.clip(_at(r) + 0.5 - jnp.sqrt(d2), 0.0, 1.0)
    else:
        m = (d2 <= _at(r * r)).astype(jnp.float32)
    return jnp.where(_at(ok), m, 0.0)


def item_masks(
    vertices: ArrayLike,
    vertex_valid: ArrayLike,
    kind: ArrayLike,
    *,
    shape: tuple[int, int],
    radius: ArrayLike,
    width: ArrayLike,
    visible: ArrayLike | None = None,
    soft: bool = False,
) -> jax.Array:
    """`[B, H, W, K]` masks of items `vertices [B, K, V, 2]` of `kind [K]` or `[B, K]`.

    Landmarks are discs of `radius`, outlines strokes `width` wide (both in pixels
    of the masks: scalars, `[B]`-shaped values need `[:, None]`), patches filled
    polygons. `soft` anti-aliases discs and strokes (polygons stay 0/1).
    """
    v = jnp.asarray(vertices, jnp.float32)
    kind = jnp.broadcast_to(jnp.asarray(kind, jnp.int32), v.shape[:-2])
    disc = disc_masks(v[..., 0, :], shape=shape, radius=radius, visible=visible, soft=soft)
    line = polyline_masks(v, vertex_valid, shape=shape, width=width, visible=visible, soft=soft)
    fill = polygon_masks(v, vertex_valid, shape=shape, visible=visible)
    k = _at(kind)
    return jnp.where(
        k == KIND_IDS["landmark"], disc, jnp.where(k == KIND_IDS["outline"], line, fill)
    )


def item_boxes_by_kind(
    vertices: ArrayLike,
    vertex_valid: ArrayLike,
    kind: ArrayLike,
    *,
    radius: ArrayLike,
    width: ArrayLike,
    visible: ArrayLike | None = None,
    shape: tuple[int, int] | None = None,
) -> jax.Array:
    """Tight `(x0, y0, x1, y1)` boxes `[B, K, 4]` around what `item_masks` draws.

    A landmark's box is its disc's (`radius` out from the point), an outline's its
    stroke's (`width / 2` out), a patch's its vertices'; NaN where nothing is drawn.
    """
    v = jnp.asarray(vertices, jnp.float32)
    kind = jnp.broadcast_to(jnp.asarray(kind, jnp.int32), v.shape[:-2])
    r = jnp.broadcast_to(jnp.asarray(radius, jnp.float32), kind.shape)
    w = jnp.broadcast_to(jnp.asarray(width, jnp.float32), kind.shape)
    pad = jnp.where(
        kind == KIND_IDS["landmark"], r, jnp.where(kind == KIND_IDS["outline"], w / 2, 0.0)
    )
    valid = jnp.asarray(vertex_valid, bool)
    # A landmark is its first vertex only, whatever else the row carries.
    first = jnp.arange(v.shape[-2]) == 0
    valid = jnp.where((kind == KIND_IDS["landmark"])[..., None], valid & first, valid)
    return item_boxes(v, valid, pad=pad, shape=shape, visible=visible)
