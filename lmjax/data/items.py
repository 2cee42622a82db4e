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
