"""Item geometry on the host: validation, centroids and the item set a folder implies.

An outline or patch item is stored as its vertices in `Record.polygons` and as one
point, its centroid, in `Record.landmarks`, so point metrics apply to every item.
"""

from __future__ import annotations

import numpy as np

from lmjax.data.types import ITEM_KINDS, LandmarkDataError, LandmarkSet


def item_centroid(kind: str, vertices: np.ndarray) -> np.ndarray:
    """float32 `(x, y)`: the vertex mean of an outline, the area centroid of a patch.

    A landmark's single point is its own centroid.
    """
    v = np.asarray(vertices, np.float64).reshape(-1, 2)
    if kind == "patch":
        x, y = v[:, 0], v[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = cross.sum() / 2
        if area != 0:
            cx = ((x + xn) * cross).sum() / (6 * area)
            cy = ((y + yn) * cross).sum() / (6 * area)
            return np.array([cx, cy], np.float32)
    return v.mean(axis=0).astype(np.float32)


def check_item(kind: str, vertices: np.ndarray, *, name: str, source: str) -> np.ndarray:
    """The vertices as float32 `[V, 2]`, or a LandmarkDataError naming `source` and the item."""
    # Imported here so that reading a landmark-only folder never loads jax.
    from lmjax.ops.item_targets import check_item_geometry

    v = np.asarray(vertices, np.float32).reshape(-1, 2)
    try:
        check_item_geometry(kind, v, name=name)
    except ValueError as e:
        raise LandmarkDataError(f"{source}: {e}") from e
    if kind != "landmark" and not np.isfinite(v).all():
        raise LandmarkDataError(f"{source}: {kind} {name!r} has a missing (NaN) vertex")
    return v


def item_set(name: str, labels: dict[str, str], *, sort_key=None) -> LandmarkSet:
    """The item set of `labels` (label -> kind): landmarks, then outlines, then patches.

    Within a kind, labels are sorted by `sort_key`; with only landmarks this is the
    plain landmark set (`kinds` None).
    """
    names, kinds = [], []
    for kind in ITEM_KINDS:
        found = sorted((n for n, k in labels.items() if k == kind), key=sort_key)
        names += found
        kinds += [kind] * len(found)
    return LandmarkSet(name=name, names=tuple(names), kinds=tuple(kinds))


def item_vertices(
    records, landmark_set: LandmarkSet, *, max_vertices: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The geometry of every item of `records`, padded for the device renderers.

    Returns `(vertices [N, K, V, 2] float32, valid [N, K, V] bool)` in original
    pixels: a landmark is its point (vertex 0), an outline or patch the vertices in
    `Record.polygons`; padding and missing items are NaN and not valid. `V` is the
    longest vertex list (at least 1) unless `max_vertices` is given.

    Raises:
      LandmarkDataError: a visible outline or patch without its vertices, or with
        more than `max_vertices`.
    """
    kinds = landmark_set.item_kinds
    geometry = []
    for r in records:
        row = []
        for k, (name, kind) in enumerate(zip(landmark_set.names, kinds, strict=True)):
            if not r.visible[k]:
                row.append(np.zeros((0, 2), np.float32))
            elif kind == "landmark":
                row.append(r.landmarks[k : k + 1])
            elif r.polygons is None or name not in r.polygons:
                raise LandmarkDataError(f"{r.name}: {kind} {name!r} is visible but has no vertices")
            else:
                row.append(np.asarray(r.polygons[name], np.float32).reshape(-1, 2))
        geometry.append(row)
    longest = max([1] + [len(v) for row in geometry for v in row])
    v_max = longest if max_vertices is None else int(max_vertices)
    if longest > v_max:
        raise LandmarkDataError(f"an item has {longest} vertices, more than max_vertices={v_max}")
    out = np.full((len(geometry), landmark_set.num_landmarks, v_max, 2), np.nan, np.float32)
    for i, row in enumerate(geometry):
        for k, v in enumerate(row):
            out[i, k, : len(v)] = v
    return out, np.isfinite(out).all(axis=-1)
