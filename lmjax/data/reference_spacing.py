"""Pixel spacing from an anatomical reference distance, for films without one.

Hand radiographs are often scanned without a pixel spacing; the usual convention
(Payer et al. 2019 on the Graz hand dataset, followed by MedSapiens) takes the
wrist width, the distance between two wrist landmarks, as 50 mm and scales each
image's errors by it. `with_reference_spacing` sets each record's spacing so that
the distance between landmarks `a` and `b` is `mm`; errors in mm then follow that
convention everywhere (evaluation, SDR, measurements).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmjax.data.types import Dataset

SOURCE = "reference distance"


def with_reference_spacing(dataset: Dataset, a: str, b: str, mm: float) -> Dataset:
    """Each record's spacing from the annotated distance between `a` and `b`.

    A record missing either landmark (or with both at one point) keeps no spacing
    and gets a warning naming it; its errors stay in pixels.

    Raises:
      ValueError: an unknown landmark name or a distance that is not positive.
    """
    names = dataset.landmark_set.names
    if a not in names or b not in names or not mm > 0:
        raise ValueError(
            f"reference distance ({a!r}, {b!r}, {mm}): needs two of {names} and mm > 0"
        )
    i, j = names.index(a), names.index(b)
    records, warnings = [], list(dataset.warnings)
    for r in dataset.records:
        d = float(np.hypot(*(r.landmarks[i] - r.landmarks[j])))
        if not (np.isfinite(d) and d > 0):
            warnings.append(f"{r.name}: no {a}-{b} distance, so no spacing; errors in pixels")
            records.append(dataclasses.replace(r, spacing=None, spacing_source="none"))
            continue
        s = mm / d
        src = f"{SOURCE} {a}-{b} = {mm:g} mm"
        records.append(dataclasses.replace(r, spacing=(s, s), spacing_source=src))
    return dataclasses.replace(dataset, records=records, warnings=warnings)
