"""Regions of interest: one network per anatomical region, errors on the full image.

The lower-limb paper trains "an independent network for each joint": each
radiograph is cropped to the hip, knee or ankle and only that joint's landmarks
are predicted. `roi_dataset` turns a dataset into that of one region: the records
keep their full images and landmarks in original pixels, restricted to the
region's landmarks, and carry the region's box in `meta["roi"]`; the input
pipeline crops the box (one affine with the fit, no extra resampling), so
`to_original` maps predictions straight back to the full image and every error
is measured there.

The box is the bounding box of the region's annotated landmarks, grown by
`margin` of its longer side on every side and made square (the paper resamples
every ROI to 512 x 512); the paper crops with annotated bounding boxes, so, as
there, test images are cropped with their annotations too (an oracle region).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from lmjax.data.cache import CachedImage
from lmjax.data.types import Dataset, LandmarkSet, Record

ROI_KEY = "roi"


def _subset_set(lset: LandmarkSet, idx: list[int], name: str) -> LandmarkSet:
    where = {old: new for new, old in enumerate(idx)}
    pairs = tuple((where[a], where[b]) for a, b in lset.flip_pairs if a in where and b in where)
    return dataclasses.replace(
        lset,
        name=f"{lset.name}/{name}",
        names=tuple(lset.names[i] for i in idx),
        flip_pairs=pairs,
        regions=None if lset.regions is None else tuple(lset.regions[i] for i in idx),
        kinds=None if lset.kinds is None else tuple(lset.kinds[i] for i in idx),
    )


def roi_box(points: np.ndarray, *, margin: float, min_side: float) -> np.ndarray | None:
    """Square `(x0, y0, x1, y1)` around the finite `[N, 2]` points, or None if none.

    The box spans the points' bounding box grown by `margin` times its longer
    side on each side, at least `min_side` wide, centred on the bounding box.
    """
    p = np.asarray(points, np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if not len(p):
        return None
    lo, hi = p.min(axis=0), p.max(axis=0)
    side = max(float((hi - lo).max()) * (1 + 2 * margin), min_side)
    c = (lo + hi) / 2
    return np.array([c[0] - side / 2, c[1] - side / 2, c[0] + side / 2, c[1] + side / 2])


def roi_dataset(
    dataset: Dataset,
    groups: Mapping[str, Sequence[str]],
    roi: str,
    *,
    margin: float = 0.25,
    min_side: float = 64.0,
) -> Dataset:
    """The dataset of region `roi`: its landmarks only, each record with its box.

    Args:
      dataset: full images and every landmark.
      groups: region name -> the names of its landmarks.
      roi: the region to keep.
      margin: growth of the box on each side, as a fraction of its longer side.
      min_side: smallest box side in original pixels (a region of one landmark).

    Raises:
      ValueError: an unknown region or landmark name, a negative margin, or no
        record with an annotated landmark of the region.
    """
    if roi not in groups:
        raise ValueError(f"data.roi={roi!r} is not one of data.roi_groups: {sorted(groups)}")
    if margin < 0 or min_side <= 0:
        raise ValueError(f"data.roi_margin must be >= 0 (got {margin}) and min_side > 0")
    names = dataset.landmark_set.names
    unknown = [n for n in groups[roi] if n not in names]
    if unknown or not groups[roi]:
        raise ValueError(f"data.roi_groups[{roi!r}]: unknown landmarks {unknown}; known: {names}")
    idx = [names.index(n) for n in groups[roi]]
    records = []
    for r in dataset.records:
        box = roi_box(np.where(r.visible[idx, None], r.landmarks[idx], np.nan), margin=margin,
                      min_side=min_side)  # fmt: skip
        if box is None:
            continue  # no landmark of the region annotated: nothing to crop or score
        polygons = r.polygons and {k: v for k, v in r.polygons.items() if k in groups[roi]}
        records.append(
            dataclasses.replace(
                r,
                landmarks=r.landmarks[idx],
                visible=r.visible[idx],
                polygons=polygons or None,
                boxes=None,
                meta={**r.meta, ROI_KEY: tuple(float(v) for v in box), "roi_name": roi},
            )
        )
    if not records:
        raise ValueError(f"data.roi={roi!r}: no record has a landmark of the region")
    return dataclasses.replace(
        dataset, landmark_set=_subset_set(dataset.landmark_set, idx, roi), records=records
    )


def crop_matrix(record: Record, to_cache: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Cache frame -> the record's box frame, and the box's `(h, w)` in cache pixels.

    The box frame puts pixel centres on integers like every other frame: its
    top-left edge at (-0.5, -0.5). Records without a box give the identity and
    None for the size.
    """
    box = record.meta.get(ROI_KEY)
    if box is None:
        return np.eye(3), None  # type: ignore[return-value]
    corners = np.array([[box[0], box[1]], [box[2], box[3]]], np.float64)
    c = corners @ np.asarray(to_cache, np.float64)[:2, :2].T + np.asarray(to_cache)[:2, 2]
    m = np.eye(3)
    m[:2, 2] = -c[0] - 0.5
    return m, (float(c[1, 1] - c[0, 1]), float(c[1, 0] - c[0, 0]))


def roi_long_side(record: Record, img: CachedImage, long_side: int) -> int:
    """Cache resolution at which a record's region box keeps `long_side` pixels on its
    longer side (capped at the original): the crop is not upsampled from a coarse cache."""
    box = record.meta.get(ROI_KEY)
    if box is None:
        return long_side
    box_long = max(box[2] - box[0], box[3] - box[1])
    full = max(img.original_hw)
    return min(full, math.ceil(full * long_side / max(box_long, 1.0)))
