"""Measurements over a dataset, as JSON-ready records, CSV rows, and a comparison.

`measure_dataset` is what the `lmjax measure` command calls; `compare` scores
measurements from predicted landmarks against those from ground truth (or one
annotator against another): median absolute error and IQR per measurement,
accuracy and per-class and macro precision, recall and F1 per classification.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmjax import metrics
from lmjax.data.types import LandmarkSet
from lmjax.measurements.base import MeasurementDef, evaluate
from lmjax.measurements.registry import as_landmark_set, definitions_for

Result = dict[str, Any]  # {"image": str, "measurements": {name: entry}}


def measure_dataset(
    landmarks: Any,
    spacing: Any,
    landmark_set: LandmarkSet | str,
    images: Sequence[str],
    *,
    definitions: Sequence[MeasurementDef] | None = None,
    name_map: Mapping[str, str] | None = None,
) -> list[Result]:
    """Every measurement the landmark set supports, for every image.

    Args:
      landmarks: `[N, K, 2]` (x, y) in original pixels; NaN where missing.
      spacing: `[N, 2]` (row_mm, col_mm) with NaN rows for unknown, one pair for
        all images, or None (all unknown: lengths in px, angles on square pixels).
      landmark_set: the set of the K landmarks, or a known set's name.
      images: N image names, carried into the records.
      definitions: measurements to compute; None for `definitions_for(landmark_set)`.
      name_map: canonical -> set landmark names, passed to `definitions_for`.

    Returns:
      One record per image: {"image", "measurements": {name: {"value", "unit",
      "class", and "reason" when the value or class is missing}}}; missing
      values and classes are None, never NaN.
    """
    lset = as_landmark_set(landmark_set)
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[0] != len(images):
        raise ValueError(f"landmarks {lm.shape} do not match {len(images)} images")
    defs = list(definitions) if definitions is not None else definitions_for(lset, name_map)
    results: list[Result] = [{"image": str(im), "measurements": {}} for im in images]
    for d in defs:
        ev = evaluate(d, lm, lset.names, spacing)
        for i, res in enumerate(results):
            v = ev.values[i]
            entry: dict[str, Any] = {
                "value": float(v) if np.isfinite(v) else None,
                "unit": str(ev.units[i]),
                "class": ev.classes[i],
            }
            if ev.reasons[i] is not None:
                entry["reason"] = ev.reasons[i]
            res["measurements"][d.name] = entry
    return results


def _names(results: Sequence[Result]) -> list[str]:
    """Measurement names in order of first appearance."""
    return list(dict.fromkeys(n for r in results for n in r["measurements"]))


def to_csv_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One flat row per image: image, then <name>, <name>_class, <name>_unit per
    measurement (empty where missing), and `reasons` ("name: why; ...")."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"image": r["image"]}
        why = []
        for name in _names(results):
            m = r["measurements"].get(name, {})
            value, cls = m.get("value"), m.get("class")
            row[name] = "" if value is None else value
            row[f"{name}_class"] = "" if cls is None else cls
            row[f"{name}_unit"] = m.get("unit", "")
            if m.get("reason"):
                why.append(f"{name}: {m['reason']}")
        row["reasons"] = "; ".join(why)
        rows.append(row)
    return rows


def _numeric(pred: np.ndarray, gt: np.ndarray, unit: str) -> dict[str, Any]:
    if unit == "deg":
        e = metrics.angle_errors(pred, gt)  # wraps differences to [-180, 180)
        return {k: e[k] for k in ("n", "missed", "mae", "median", "iqr")}
    d = np.abs(pred - gt)
    a = d[np.isfinite(d)]
    missed = int((np.isfinite(gt) & ~np.isfinite(pred)).sum())
    out: dict[str, Any] = {"n": int(a.size), "missed": missed}
    if a.size:
        q25, q50, q75 = np.percentile(a, [25, 50, 75])
        out.update(mae=float(a.mean()), median=float(q50), iqr=float(q75 - q25))
    else:
        out.update(mae=float("nan"), median=float("nan"), iqr=float("nan"))
    return out


def _classification(pred: list[Any], gt: list[Any]) -> dict[str, Any]:
    both = [(p, t) for p, t in zip(pred, gt, strict=True) if p is not None and t is not None]
    missed = sum(1 for p, t in zip(pred, gt, strict=True) if t is not None and p is None)
    if not both:
        return {"n": 0, "missed": missed}
    yp, yt = [p for p, _ in both], [t for _, t in both]
    rep = metrics.classification_report(yt, yp, labels=sorted(set(yt) | set(yp)))
    conf = rep["confusion"]
    # Agreement expected from the two label frequencies alone, and Cohen's kappa:
    # accuracy means little without it when one class dominates.
    chance = float((conf.sum(axis=1) * conf.sum(axis=0)).sum() / conf.sum() ** 2)
    kappa = (rep["accuracy"] - chance) / (1.0 - chance) if chance < 1.0 else float("nan")
    rep["confusion"] = conf.tolist()
    return {**rep, "missed": missed, "chance": chance, "kappa": float(kappa)}


def compare(pred_results: Sequence[Result], gt_results: Sequence[Result]) -> dict[str, Any]:
    """Scores measurements of `pred_results` against `gt_results`, paired by image.

    Numbers: per measurement `n` (pairs with both values), `missed` (ground truth
    present, prediction missing), `mae`, `median` and `iqr` of absolute errors;
    angles through `lmjax.metrics.angle_errors` (wrapped), other units as plain
    absolute differences. Pairs whose units differ (mm against px) are never
    mixed: such a measurement reports an `error` instead of numbers.

    Classes: per classified measurement, over images where both have a class,
    `lmjax.metrics.classification_report` (accuracy, per-class and macro precision,
    recall, F1, confusion over the classes seen), plus `missed`, `chance` (the
    accuracy expected from the two class frequencies alone) and Cohen's `kappa`.

    Returns:
      {"images": paired count, "unpaired": images in only one list,
       "measurements": {name: numbers}, "classifications": {name: classes}}.
    """
    gt_by = {r["image"]: r for r in gt_results}
    pred_by = {r["image"]: r for r in pred_results}
    paired = [im for im in gt_by if im in pred_by]
    unpaired = sorted(set(gt_by) ^ set(pred_by))
    out: dict[str, Any] = {"images": len(paired), "unpaired": unpaired}
    numbers, classes = {}, {}
    for name in _names([gt_by[i] for i in paired]):
        g = [gt_by[i]["measurements"].get(name, {}) for i in paired]
        p = [pred_by[i]["measurements"].get(name, {}) for i in paired]
        gv = np.array([np.nan if m.get("value") is None else m["value"] for m in g], np.float64)
        pv = np.array([np.nan if m.get("value") is None else m["value"] for m in p], np.float64)
        valued = zip(g + p, np.concatenate([gv, pv]), strict=True)
        units = sorted({m["unit"] for m, v in valued if np.isfinite(v)})
        if not units:  # nothing measured on either side: report the declared unit
            units = sorted({m["unit"] for m in g + p if "unit" in m})[:1]
        if len(units) > 1:
            numbers[name] = {"error": f"mixed units {units}; compare only like with like"}
        elif units and units[0] != "type":  # a category number has no meaningful difference
            numbers[name] = {"unit": units[0], **_numeric(pv, gv, units[0])}
        gc, pc = [m.get("class") for m in g], [m.get("class") for m in p]
        if any(c is not None for c in gc + pc):
            classes[name] = _classification(pc, gc)
    out["measurements"], out["classifications"] = numbers, classes
    return out


def per_image(pred_results: Sequence[Result], gt_results: Sequence[Result]) -> dict[str, Any]:
    """Every image's predicted and true value and class, for paired tests between
    models (`lmjax compare`), which need each image rather than the summary.

    Returns:
      `{"images": [...], "units": {name: unit}, "predicted": {name: [value]},
      "true": {...}, "predicted_class": {name: [class]}, "true_class": {...}}`
      over the images of `gt_results` that `pred_results` also has; missing values
      and classes are None. A measurement whose values come in several units
      (mm on some images, px on others) has unit "mixed: mm, px".
    """
    pred_by = {r["image"]: r for r in pred_results}
    paired = [r for r in gt_results if r["image"] in pred_by]
    out: dict[str, Any] = {"images": [r["image"] for r in paired], "units": {}}
    for key in ("predicted", "true", "predicted_class", "true_class"):
        out[key] = {}
    for name in _names(paired):
        g = [r["measurements"].get(name, {}) for r in paired]
        p = [pred_by[r["image"]]["measurements"].get(name, {}) for r in paired]
        units = sorted({m["unit"] for m in g + p if m.get("value") is not None})
        units = units or sorted({m["unit"] for m in g + p if "unit" in m})[:1]
        out["units"][name] = units[0] if len(units) == 1 else "mixed: " + ", ".join(units)
        out["predicted"][name] = [m.get("value") for m in p]
        out["true"][name] = [m.get("value") for m in g]
        out["predicted_class"][name] = [m.get("class") for m in p]
        out["true_class"][name] = [m.get("class") for m in g]
    return out
