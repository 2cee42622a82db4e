"""The clinical-measurement half of `lmjax compare`: each model's measurements
against the truth, paired by image, tested against the reference model.

Values (angles, distances, ratios): the absolute error of each image's value
against the true value (angles wrapped to [-180, 180) first), then the
Wilcoxon signed-rank test on the paired errors, as for landmarks. Classes: each
image is correct or not; accuracy, and McNemar's exact test on the paired
outcomes. Reports need `measurements.per_image` (written by `lmjax evaluate`
since it carries per-image values); without it the comparison is skipped and
says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmjax import paired_stats


def _block(report: dict[str, Any]) -> dict[str, Any] | None:
    return (report.get("measurements") or {}).get("per_image")


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _abs_errors(pred: np.ndarray, truth: np.ndarray, unit: str) -> np.ndarray:
    d = pred - truth
    if unit == "deg":  # 179 against -179 is 2 degrees apart, not 358
        d = (d + 180.0) % 360.0 - 180.0
    return np.abs(d)  # NaN where either is missing


def _misses_for_measurements(misses: str) -> str:
    # --error_cap is in the landmark error unit (mm or px); it means nothing for
    # degrees or ratios, so measurement misses are penalized under "cap".
    return "penalize" if misses == "cap" else misses


def _value_test(blocks, rows, name, unit, misses, kw) -> tuple[dict, list[dict]]:
    truth = _floats(blocks[0]["true"][name])[rows[0]]
    errs = [
        _abs_errors(_floats(b["predicted"][name])[r], truth, unit)
        for b, r in zip(blocks, rows, strict=True)
    ]
    row: dict[str, Any] = {"measurement": name, "kind": "value", "unit": unit, "values": []}
    for e in errs:
        found = e[np.isfinite(e)]
        row["values"].append(float(np.median(found)) if found.size else float("nan"))
    tests = []
    for e in errs[1:]:
        ref, model, rm, mm = paired_stats.apply_misses(errs[0], e, misses)
        t = paired_stats.signed_rank(ref, model, **kw)
        t.update(test="Wilcoxon", missed_reference=int(rm.sum()), missed_model=int(mm.sum()))
        t["affected"] = int((rm | mm).sum())
        tests.append(t)
    return row, tests


def _class_test(blocks, rows, name, misses, kw) -> tuple[dict, list[dict]]:
    truth = [blocks[0]["true_class"][name][i] for i in rows[0]]
    known = np.array([t is not None for t in truth])
    preds = [[b["predicted_class"][name][i] for i in r] for b, r in zip(blocks, rows, strict=True)]
    has = [np.array([p is not None for p in ps]) & known for ps in preds]
    right = [
        np.array([p == t for p, t in zip(ps, truth, strict=True)]) & h
        for ps, h in zip(preds, has, strict=True)
    ]
    row: dict[str, Any] = {"measurement": name, "kind": "class", "unit": "class"}
    # A missing class is a wrong one, except under "drop", where it is left out.
    pool = has if misses == "drop" else [known] * len(preds)
    row["values"] = [
        float(c[p].mean()) if p.any() else float("nan") for c, p in zip(right, pool, strict=True)
    ]
    tests = []
    for c, h in zip(right[1:], has[1:], strict=True):
        keep = (has[0] & h) if misses == "drop" else known
        t = paired_stats.mcnemar_exact(right[0][keep], c[keep], **kw)
        rm, mm = known & ~has[0] & h, known & has[0] & ~h
        t.update(test="McNemar exact", missed_reference=int(rm.sum()), missed_model=int(mm.sum()))
        t["affected"] = int((rm | mm).sum())
        tests.append(t)
    return row, tests


def compare_measurements(
    reports: Sequence[dict[str, Any]], *, misses: str, **kw: Any
) -> dict[str, Any]:
    """Measurement rows and tests of every report against the first.

    Args:
      reports: loaded `lmjax evaluate` reports with `label`s, the reference first.
      misses: the missed-value policy of `paired_stats.apply_misses`.
      **kw: `alternative`, `resamples`, `seed` for the tests.

    Returns:
      `{"skipped": why}` when a report has no per-image measurements or none are
      shared; else `{"n_images", "rows": [{"measurement", "kind" (value or class),
      "unit", "values" (median absolute error or accuracy per report)}], "tests":
      [[test per compared model] per row], "notes": [measurements left out, why]}`.
    """
    blocks = [_block(r) for r in reports]
    lacking = [r["label"] for r, b in zip(reports, blocks, strict=True) if b is None]
    if lacking:
        return {
            "skipped": f"no per-image measurements in {', '.join(lacking)} "
            "(written by `lmjax evaluate` for landmark sets that define measurements)"
        }
    common = set(blocks[0]["images"])
    for b in blocks[1:]:
        common &= set(b["images"])
    images = [im for im in blocks[0]["images"] if im in common]
    if not images:
        return {"skipped": "the reports' measurements share no image"}
    rows = [np.array([b["images"].index(im) for im in images]) for b in blocks]
    policy = _misses_for_measurements(misses)
    out: dict[str, Any] = {"n_images": len(images), "rows": [], "tests": [], "notes": []}
    for name, unit in blocks[0]["units"].items():
        if any(name not in b["units"] for b in blocks[1:]):
            out["notes"].append(f"{name}: not in every report")
            continue
        if unit.startswith("mixed") or any(b["units"][name] != unit for b in blocks[1:]):
            out["notes"].append(f"{name}: units differ ({unit}); compare only like with like")
            continue
        truths = [[b["true"][name][i] for i in r] for b, r in zip(blocks, rows, strict=True)]
        classes = [[b["true_class"][name][i] for i in r] for b, r in zip(blocks, rows, strict=True)]
        if any(t != truths[0] or c != classes[0] for t, c in zip(truths, classes, strict=True)):
            out["notes"].append(f"{name}: the true values differ between reports")
            continue
        if unit != "type":  # a category number has no meaningful difference
            row, tests = _value_test(blocks, rows, name, unit, policy, kw)
            out["rows"].append(row)
            out["tests"].append(tests)
        if any(c is not None for c in classes[0]):
            row, tests = _class_test(blocks, rows, name, policy, kw)
            out["rows"].append(row)
            out["tests"].append(tests)
    return out
