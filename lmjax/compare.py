"""`lmjax compare`: evaluation reports side by side, with paired significance tests.

Each report is the JSON of `lmjax evaluate`; its `per_image` block holds the
radial error of every (image, landmark). Reports are paired on image names and
landmarks, and every report after the first is tested against the first (the
reference) with the Wilcoxon signed-rank test on paired errors, overall and per
landmark, as the lower-limb paper marks its tables: `*` p < 0.05, `**` p < 0.01,
`***` p < 0.001. Pairs where either error is missing are left out of the test.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from lmjax import metrics


class CompareError(ValueError):
    """The reports cannot be compared (no per-image errors, other units or images)."""


def _load(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{path}: not a readable JSON report ({e})") from e
    if "per_image" not in report:
        raise CompareError(
            f"{path}: no per-image errors; write it with `lmjax evaluate --output=...`"
        )
    report.setdefault("label", path.stem)
    return report


def _errors(report: dict[str, Any]) -> np.ndarray:
    return np.array(report["per_image"]["errors"], dtype=np.float64)  # None -> NaN


def significance(p: float) -> str:
    """The lower-limb paper's marks for a p-value."""
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def wilcoxon(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired errors; NaN pairs are dropped.

    Returns:
      `{"n", "statistic", "p", "marks", "median_difference"}` (b - a); p is NaN
      when fewer than two pairs remain or every difference is zero.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    out = {"n": int(ok.sum()), "statistic": float("nan"), "p": float("nan")}
    out["median_difference"] = float(np.median(d)) if d.size else float("nan")
    if d.size >= 2 and np.any(d != 0):
        res = stats.wilcoxon(a[ok], b[ok], zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    out["marks"] = significance(out["p"])
    return out


def compare_reports(paths: Sequence[str | pathlib.Path]) -> dict[str, Any]:
    """Overall and per-landmark errors of each report, tests against the first.

    Raises:
      CompareError: fewer than two reports, mixed units, different landmarks, or
        reports with no image in common.
    """
    if len(paths) < 2:
        raise CompareError("compare needs at least two reports")
    reports = [_load(p) for p in paths]
    labels = [r["label"] for r in reports]
    if len(set(labels)) < len(labels):  # same file names: tell them apart by folder
        for r, path in zip(reports, paths, strict=True):
            path = pathlib.Path(path)
            r["label"] = f"{path.parent.name}/{path.stem}"
    ref = reports[0]
    units = {r["unit"] for r in reports}
    if len(units) > 1:
        raise CompareError(f"reports mix units {sorted(units)}; errors must be comparable")
    landmarks = ref["per_image"]["landmarks"]
    for r in reports[1:]:
        if r["per_image"]["landmarks"] != landmarks:
            raise CompareError(f"{r['label']}: other landmarks than {ref['label']}")
    common = set(ref["per_image"]["images"])
    for r in reports[1:]:
        common &= set(r["per_image"]["images"])
    if not common:
        raise CompareError("the reports have no image in common")
    images = [name for name in ref["per_image"]["images"] if name in common]
    paired = []
    for r in reports:
        row = {name: i for i, name in enumerate(r["per_image"]["images"])}
        paired.append(_errors(r)[[row[name] for name in images]])
    unit = ref["unit"]
    thresholds = [float(t) for t in ref["sdr"]]
    models = []
    for r, e in zip(reports, paired, strict=True):
        s = metrics.summarize(e, unit=unit, thresholds=thresholds)
        models.append(
            {
                "label": r["label"],
                "model": r.get("model"),
                "split": r.get("split"),
                "ground_truth": r.get("ground_truth"),
                **{k: s[k] for k in ("n", "mre", "sd", "median", "p95")},
                "sdr": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
            }
        )
    tests = []
    for r, e in zip(reports[1:], paired[1:], strict=True):
        per = [wilcoxon(paired[0][:, k], e[:, k]) for k in range(len(landmarks))]
        tests.append(
            {
                "label": r["label"],
                "against": ref["label"],
                "overall": wilcoxon(paired[0], e),
                "per_landmark": dict(zip(landmarks, per, strict=True)),
            }
        )
    per_landmark = []
    for k, name in enumerate(landmarks):
        row: dict[str, Any] = {"landmark": name}
        for r, e in zip(reports, paired, strict=True):
            col = e[:, k]
            row[r["label"]] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
        per_landmark.append(row)
    return {
        "unit": unit,
        "n_images": len(images),
        "reference": ref["label"],
        "models": models,
        "tests": tests,
        "per_landmark": per_landmark,
    }


def format_comparison(result: dict[str, Any]) -> str:
    """Overall table (with test marks against the reference), then per-landmark MRE."""
    unit = result["unit"]
    marks = {t["label"]: t for t in result["tests"]}
    rows = []
    for m in result["models"]:
        t = marks.get(m["label"])
        row = {
            "model": m["label"],
            "n": m["n"],
            f"MRE ({unit})": m["mre"],
            "SD": m["sd"],
            "median": m["median"],
            **{f"SDR@{k}": v for k, v in m["sdr"].items()},
            "p (Wilcoxon)": t["overall"]["p"] if t else float("nan"),
            "": t["overall"]["marks"] if t else "reference",
        }
        rows.append(row)
    head = metrics.format_table(rows, list(rows[0]), floatfmt=".3f")
    labels = [m["label"] for m in result["models"]]
    lm_rows = []
    for row in result["per_landmark"]:
        out = {"landmark": row["landmark"]}
        for label in labels:
            t = marks.get(label)
            mark = t["per_landmark"][row["landmark"]]["marks"] if t else ""
            out[label] = f"{row[label]:.3f}{mark}" if np.isfinite(row[label]) else "-"
        lm_rows.append(out)
    table = metrics.format_table(lm_rows, ["landmark", *labels])
    return (
        f"{result['n_images']} paired images; tests against {result['reference']}: "
        f"* p<0.05  ** p<0.01  *** p<0.001\n{head}\n\nMRE per landmark ({unit})\n{table}"
    )
