"""Uncertainty beside each predicted landmark, and the review queue of
`lmjax predict --review` (NumPy only).

A trained workdir may hold `conformal.json` (split-conformal radii, `lmjax.conformal`)
and `shape_model.json` (`lmjax.shape_check`). Each predicted landmark then gets its
radius (`radius_mm`, or `radius_px` when calibrated without spacing) with the
`coverage` it holds at (1 - alpha), and its `shape_score` with an `implausible`
flag.

The review queue ranks landmarks most doubtful first by, in this order:

1. missed (the model gave no position),
2. implausible (shape score above the shape model's threshold),
3. `review_score`: with radii, the landmark's radius scaled by how much less
   confident the model is here than on a typical calibration image,
   `radius_k * clip(median_confidence_k / confidence, 1/4, 4)` (in the radii's
   unit; the plain radius when the calibration kept no confidences). The
   conformal guarantee is for the plain radius; the scaling only orders images.
   Without radii, the shape score; without either, nothing (0),
4. then the shape score, then lower confidence.

An image ranks by its most doubtful landmark under the same order.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Any, NamedTuple

import numpy as np

from lmjax import conformal, shape_check

_RATIO_CLIP = (0.25, 4.0)


class Uncertainty(NamedTuple):
    radii: dict[str, Any] | None  # conformal.json, or None
    shape: shape_check.ShapeModel | None


class Annotation(NamedTuple):
    """What one image's landmarks get: `fields` `[K]` (JSON keys per landmark),
    `ellipse_px` `[K, 2]` (x, y semi-axes of the radius in original pixels, NaN
    where it cannot be drawn), `implausible` `[K]`, `descriptions` `[K]`, and the
    ranking `keys` `[K]` (tuples, larger is more doubtful)."""

    fields: list[dict[str, Any]]
    ellipse_px: np.ndarray
    implausible: np.ndarray
    descriptions: list[str]
    keys: list[tuple]
    review_scores: np.ndarray


def load(workdir: str | pathlib.Path, names: tuple[str, ...]) -> Uncertainty:
    """The workdir's radii and shape model; either None when absent.

    Raises:
      ValueError: a file's landmark names differ from the run's `names`.
    """
    radii, shape = conformal.load(workdir), shape_check.load(workdir)
    found = {
        "conformal.json": radii and radii["landmarks"],
        "shape_model.json": shape and shape.names,
    }
    for what, got in found.items():
        if got and tuple(got) != tuple(names):
            raise ValueError(f"{workdir}/{what}: landmarks {list(got)} differ from the run's")
    return Uncertainty(radii, shape)


def basis(unc: Uncertainty) -> str:
    """How `review_score` is computed for this run, in words."""
    if unc.radii is not None:
        return (
            f"conformal radius ({unc.radii['unit']}) x clip(median calibration confidence "
            "/ confidence, 1/4, 4)"
        )
    if unc.shape is not None:
        return "shape score (no conformal.json: radii need data.calib_fraction > 0)"
    return "none: ranked by missed landmarks and confidence only"


def annotate(unc: Uncertainty, coords: np.ndarray, conf: np.ndarray, spacing) -> Annotation:
    """One image's uncertainty fields.

    Args:
      coords: `[K, 2]` (x, y) in original pixels, NaN where missed.
      conf: `[K]` confidences.
      spacing: `(row_mm, col_mm)` or None.
    """
    coords = np.asarray(coords, np.float64)
    conf = np.asarray(conf, np.float64)
    k = len(coords)
    missed = ~np.isfinite(coords).all(1)
    fields: list[dict[str, Any]] = [{} for _ in range(k)]
    ellipse = np.full((k, 2), np.nan)
    radius = np.full(k, np.nan)
    score = np.full(k, np.nan)
    flags = np.zeros(k, bool)
    sp = None if spacing is None else np.asarray(spacing, np.float64)
    if unc.radii is not None:
        unit = unc.radii["unit"]
        radius = conformal.radii_array(unc.radii)
        for j in range(k):
            fields[j][f"radius_{unit}"] = float(radius[j]) if np.isfinite(radius[j]) else None
            fields[j]["coverage"] = unc.radii["nominal"]
        if unit == "px":
            ellipse[:] = radius[:, None]
        elif sp is not None:  # x goes with columns (col_mm), y with rows
            ellipse[:] = radius[:, None] / sp[None, ::-1]
    if unc.shape is not None:
        s, f = shape_check.score(unc.shape, coords[None], None if sp is None else sp[None])
        score, flags = s[0], f[0]
        for j in range(k):
            fields[j]["shape_score"] = round(float(score[j]), 3) if np.isfinite(score[j]) else None
            fields[j]["implausible"] = bool(flags[j])
    review = _review_scores(unc, radius, score, conf)
    keys = [
        (bool(missed[j]), bool(flags[j]), _num(review[j]), _num(score[j]), -_num(conf[j], 0.0))
        for j in range(k)
    ]
    return Annotation(fields, ellipse, flags, [description(f) for f in fields], keys, review)


def _num(v: float, missing: float = -math.inf) -> float:
    return float(v) if np.isfinite(v) else missing


def _review_scores(unc: Uncertainty, radius, shape_score, conf) -> np.ndarray:
    if unc.radii is None:
        return np.asarray(shape_score, np.float64) if unc.shape is not None else np.zeros(len(conf))
    ref = unc.radii.get("median_confidence")
    if not ref:
        return radius
    ref = np.array([np.nan if (v := ref[n]) is None else v for n in unc.radii["landmarks"]])
    with np.errstate(all="ignore"):
        ratio = ref / np.maximum(conf, 1e-12)
    ratio = np.where(np.isfinite(ratio), np.clip(ratio, *_RATIO_CLIP), 1.0)
    return radius * ratio


def description(fields: dict[str, Any]) -> str:
    """The LabelMe description of a landmark's fields, e.g. `r90=2.10mm IMPLAUSIBLE`."""
    parts = []
    for unit in ("mm", "px"):
        if f"radius_{unit}" in fields:
            r = fields[f"radius_{unit}"]
            cov = f"{100 * fields['coverage']:g}"
            parts.append(f"r{cov}={'unbounded' if r is None else f'{r:.2f}{unit}'}")
    if fields.get("shape_score") is not None:
        parts.append(f"shape={fields['shape_score']:.2f}")
    if fields.get("implausible"):
        parts.append("IMPLAUSIBLE")
    return " ".join(parts)


def write_review(
    out: pathlib.Path, unc: Uncertainty, items: list[tuple[str, tuple[str, ...], Any, Any, Any]]
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `review.csv` (one row per image and landmark, most doubtful first) and
    `review.json` (images ranked, each with its landmarks ranked).

    `items`: `(image, names, coords [K, 2], confidence [K], Annotation)` per image.
    """
    unit = unc.radii["unit"] if unc.radii is not None else None
    images = []
    for image, names, coords, conf, ann in items:
        order = sorted(range(len(names)), key=lambda j: ann.keys[j], reverse=True)
        rows = []
        for rank, j in enumerate(order, 1):
            x, y = (float(v) for v in coords[j])
            f = ann.fields[j]
            rows.append(
                {
                    "rank": rank,
                    "landmark": names[j],
                    "x": x if math.isfinite(x) else None,
                    "y": y if math.isfinite(y) else None,
                    "confidence": float(conf[j]),
                    "missed": ann.keys[j][0],
                    "implausible": bool(f.get("implausible", False)),
                    "shape_score": f.get("shape_score"),
                    "radius": f.get(f"radius_{unit}") if unit else None,
                    "review_score": _json(ann.review_scores[j]),
                }
            )
        top = ann.keys[order[0]] if order else ()
        images.append((top, image, rows))
    images.sort(key=lambda t: t[0], reverse=True)
    doc = {
        "ranking": "missed, then implausible, then review_score, then shape score, "
        "then lower confidence; an image by its most doubtful landmark",
        "review_score": basis(unc),
        "unit": unit,
        "coverage": unc.radii["nominal"] if unc.radii is not None else None,
        "images": [
            {
                "rank": i,
                "image": image,
                "missed": sum(r["missed"] for r in rows),
                "implausible": sum(r["implausible"] for r in rows),
                "review_score": rows[0]["review_score"] if rows else None,
                "landmarks": rows,
            }
            for i, (_, image, rows) in enumerate(images, 1)
        ],
    }
    json_path, csv_path = out / "review.json", out / "review.csv"
    json_path.write_text(json.dumps(doc, indent=2))
    fields = ("x", "y", "confidence", "missed", "implausible", "shape_score", "radius")
    head = ["image_rank", "image", "landmark_rank", "landmark", *fields, "review_score"]
    head[-2] = f"radius_{unit}" if unit else "radius"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for entry in doc["images"]:
            for r in entry["landmarks"]:
                values = [r[c] for c in (*fields, "review_score")]
                w.writerow(
                    [entry["rank"], entry["image"], r["rank"], r["landmark"]]
                    + ["" if v is None else v for v in values]
                )
    return csv_path, json_path


def _json(v) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


__all__ = ["Annotation", "Uncertainty", "annotate", "basis", "description", "load", "write_review"]
