"""Summary of a dataset as the training loader reads it: how a user checks new data."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from lmjax import progress
from lmjax.data import image_io
from lmjax.data.types import ITEM_KINDS, Dataset, LandmarkDataError


def summarize(dataset: Dataset, *, read_images: bool = True) -> dict[str, Any]:
    """Counts images, landmarks, missing points, spacing sources and problems.

    Args:
      dataset: as `load_dataset` returns it.
      read_images: decode every image, checking that it reads and that the
        landmarks fall inside it (slower, but what training would hit).

    Returns:
      A JSON-ready dict with `n_images`, `n_landmarks`, `landmark_names`,
      `missing`, `spacing` (count per source), `warnings` and `errors` (lines
      naming the file), plus per-split counts, image sizes and bit depths.
      `items` counts the set's items per kind and `items_present` gives, per
      kind, how many records have each item.
    """
    warnings, errors = list(dataset.warnings), list(dataset.errors)
    lset = dataset.landmark_set
    spacing_sources: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    depths: collections.Counter[int] = collections.Counter()
    missing_per_landmark = np.zeros(lset.num_landmarks, np.int64)
    unreadable = 0
    # Reading every image is the slow part: counted when images are read.
    records = (
        progress.track(dataset.records, desc="inspect", unit="image")
        if read_images
        else dataset.records
    )
    for record in records:
        spacing_sources[record.spacing_source if record.spacing else "none"] += 1
        missing_per_landmark += ~record.visible
        if not read_images:
            continue
        try:
            image = (
                image_io.read_radiograph(record.image, spacing=record.spacing)
                if isinstance(record.image, str)
                else None
            )
        except LandmarkDataError as e:
            errors.append(str(e))
            unreadable += 1
            continue
        h, w = image.shape if image is not None else np.asarray(record.image).shape[:2]
        sizes[f"{h}x{w}"] += 1
        if image is not None:
            depths[image.bit_depth] += 1
            warnings.extend(image.warnings)
        pts = record.landmarks[record.visible]
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5)
        outside |= pts[:, 1] > h - 0.5
        if outside.any():
            names = [lset.names[k] for k in np.flatnonzero(record.visible)[outside]]
            warnings.append(f"{record.image}: landmarks outside the {w}x{h} image: {names}")
    splits = collections.Counter(r.split or "all" for r in dataset.records)
    present = len(dataset.records) - missing_per_landmark
    item_kinds = lset.item_kinds
    items_present = {
        kind: {
            n: int(c) for n, c, k in zip(lset.names, present, item_kinds, strict=True) if k == kind
        }
        for kind in ITEM_KINDS
    }
    return {
        "name": dataset.name,
        "n_images": len(dataset.records),
        "n_unreadable": unreadable,
        "n_landmarks": lset.num_landmarks,
        "landmark_names": list(lset.names),
        "flip_pairs": [[lset.names[a], lset.names[b]] for a, b in lset.flip_pairs],
        "regions": list(lset.region_names),
        "items": {kind: len(items_present[kind]) for kind in ITEM_KINDS},
        "items_present": items_present,
        "missing": int(missing_per_landmark.sum()),
        "missing_per_landmark": {
            n: int(c) for n, c in zip(lset.names, missing_per_landmark, strict=True) if c
        },
        "splits": dict(sorted(splits.items())),
        "spacing": dict(sorted(spacing_sources.items())),
        "image_sizes": dict(sizes.most_common()),
        "bit_depths": {str(k): v for k, v in sorted(depths.items())},
        # The header pass and the decode pass can both report one problem.
        "warnings": list(dict.fromkeys(warnings)),
        "errors": list(dict.fromkeys(errors)),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for the terminal."""
    lines = [
        f"dataset      {summary['name']}",
        f"images       {summary['n_images']}  splits {summary['splits']}",
        f"landmarks    {summary['n_landmarks']}: {', '.join(summary['landmark_names'])}",
        f"missing      {summary['missing']} {summary['missing_per_landmark'] or ''}".rstrip(),
        f"spacing      {summary['spacing']}",
    ]
    items = summary.get("items", {})
    if items.get("outline") or items.get("patch"):
        lines.append(
            f"items        {items['landmark']} landmarks, {items['outline']} outlines, "
            f"{items['patch']} patches"
        )
        for kind, plural in (("outline", "outlines"), ("patch", "patches")):
            if summary["items_present"][kind]:
                lines.append(f"  {plural:<10} {summary['items_present'][kind]}")
    if summary["image_sizes"]:
        lines.append(f"image sizes  {summary['image_sizes']}")
    if summary["bit_depths"]:
        lines.append(f"bit depths   {summary['bit_depths']}")
    if summary["flip_pairs"]:
        lines.append(f"flip pairs   {len(summary['flip_pairs'])}")
    for kind in ("warnings", "errors"):
        lines.append(f"{kind:<12} {len(summary[kind])}")
        lines.extend(f"  - {line}" for line in summary[kind])
    return "\n".join(lines)
