"""Item geometry through the input pipeline: outline and patch vertices move like landmarks.

For a set with any outline or patch item, every pipeline example carries

    item_vertices  float32 [K, V, 2]  model-input (x, y) of each item's vertices
    vertex_valid   bool    [K, V]     False only for NaN padding (and absent items)

in the layout of `lmjax.data.items.item_vertices` (a landmark is vertex 0), so
the device renders masks and boxes from geometry after augmentation instead of
warping rasterised masks. `V` is fixed per dataset: its longest vertex list.
Vertices go through the same affine, elastic inversion and flip relabelling as
the landmarks; vertices outside the image are kept (boxes clip them later).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lmjax.data.augment import ElasticField
from lmjax.data.items import item_vertices
from lmjax.data.types import LandmarkSet, Record

VERTEX_KEYS = ("item_vertices", "vertex_valid")


def has_item_geometry(landmark_set: LandmarkSet) -> bool:
    """Whether the set has an outline or patch item (and examples carry vertices)."""
    return any(kind != "landmark" for kind in landmark_set.item_kinds)


@dataclasses.dataclass(frozen=True)
class ItemGeometry:
    """The per-dataset vertex layout of a sampler: `K` items of at most `V` vertices.

    Attributes:
      landmark_set: the item set (names and kinds).
      max_vertices: `V`, the longest vertex list of the dataset (at least 1).
    """

    landmark_set: LandmarkSet
    max_vertices: int

    @classmethod
    def of(cls, records: Sequence[Record], landmark_set: LandmarkSet) -> ItemGeometry | None:
        """The layout of `records`, or None for a landmark-only set.

        Raises:
          LandmarkDataError: a visible outline or patch without its vertices.
        """
        if not has_item_geometry(landmark_set):
            return None
        # One record at a time: the whole dataset's [N, K, V, 2] is never held.
        longest = max([1] + [item_vertices([r], landmark_set)[0].shape[2] for r in records])
        return cls(landmark_set, longest)

    def original(self, record: Record) -> np.ndarray:
        """float64 `[K, V, 2]` vertices of `record` in original pixels, NaN-padded."""
        v, _ = item_vertices([record], self.landmark_set, max_vertices=self.max_vertices)
        return v[0].astype(np.float64)

    def padding(self) -> dict[str, np.ndarray]:
        """All-NaN vertices and all-False `vertex_valid`."""
        k, v = self.landmark_set.num_landmarks, self.max_vertices
        return {
            "item_vertices": np.full((k, v, 2), np.nan, np.float32),
            "vertex_valid": np.zeros((k, v), bool),
        }


def invert_field(
    field: ElasticField, points: np.ndarray, vertices: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Landmarks `[K, 2]` and vertices `[K, V, 2]` (or None) through the field's inverse.

    Both are solved together, so one convergence test decides for the example:
    `(points, vertices, ok)`, returned unchanged when the field cannot be inverted
    (the caller then drops the warp for the image as well).
    """
    if vertices is None:
        moved, ok = field.invert(points)
        return (moved if ok else points), None, ok
    flat = np.concatenate([points.reshape(-1, 2), vertices.reshape(-1, 2)])
    moved, ok = field.invert(flat)
    if not ok:
        return points, vertices, False
    k = points.shape[0]
    return moved[:k], moved[k:].reshape(vertices.shape), True


def vertex_entries(vertices: np.ndarray) -> dict[str, np.ndarray]:
    """The example entries of moved vertices `[K, V, 2]`: only NaN padding is invalid."""
    return {
        "item_vertices": vertices.astype(np.float32),
        "vertex_valid": np.isfinite(vertices).all(axis=-1),
    }
