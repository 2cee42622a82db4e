"""Split-conformal radii per landmark: "the true landmark lies within r_k of the
prediction with probability at least 1 - alpha" (NumPy only).

The nonconformity score is the radial error of a prediction in the original frame:
mm when every image has a spacing, else pixels, with the unit named
(`lmjax.metrics.radial_errors`). On a calibration split that was neither trained
on nor used to pick a checkpoint, landmark k's radius is the m-th smallest of its
n_k scores, m = ceil((n_k + 1)(1 - alpha)): the ceil((n+1)(1-alpha))/n empirical
quantile taken at an observed score ("higher", never interpolated). For an
exchangeable new image, P(error_k <= r_k) >= 1 - alpha, and below
1 - alpha + 1/(n_k + 1) for continuous errors. When m > n_k (fewer than
ceil(1/alpha) - 1 calibration errors) no finite radius has that guarantee; the
radius is then unbounded (null in JSON) and the result says so.

Missing landmarks (NaN ground truth) are left out of both calibration and
coverage. A missed prediction (NaN) is an infinite error: in calibration it counts
as a score above every radius, in coverage as not covered.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmjax import metrics

CONFORMAL_FILE = "conformal.json"
METHOD = (
    "split conformal: radius of landmark k = the ceil((n_k + 1)(1 - alpha))-th smallest "
    "radial error of landmark k on the calibration split"
)
_Z95 = 1.959964


def check_alpha(alpha: float) -> float:
    """`alpha` as a float in (0, 1); raises ValueError otherwise."""
    a = float(alpha)
    if not 0 < a < 1:
        raise ValueError(f"conformal.alpha must be between 0 and 1 (exclusive), got {alpha}")
    return a


def quantile_rank(n: int, alpha: float) -> int:
    """m = ceil((n + 1)(1 - alpha)): the rank (1-based) of the radius among n scores."""
    # The tolerance keeps e.g. 20 * 0.9 = 18.000000000000004 at 18.
    return int(math.ceil((n + 1) * (1 - check_alpha(alpha)) - 1e-9))


def min_calibration(alpha: float) -> int:
    """The fewest scores with a finite radius: m <= n  <=>  n >= 1/alpha - 1."""
    return int(math.ceil(1 / check_alpha(alpha) - 1 - 1e-9))


def conformal_radius(scores: np.ndarray, alpha: float) -> float:
    """The split-conformal radius of 1-D `scores` (NaN left out, +inf kept): the
    `quantile_rank`-th smallest, or +inf when there are too few scores."""
    s = np.asarray(scores, np.float64).ravel()
    s = np.sort(s[~np.isnan(s)])
    m = quantile_rank(s.size, alpha)
    return float(s[m - 1]) if m <= s.size else math.inf


def _json_float(v: float, digits: int = 4) -> float | None:
    return round(float(v), digits) if np.isfinite(v) else None


def calibrate(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Any,
    names: Sequence[str],
    alpha: float,
    *,
    confidence: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-landmark split-conformal radii from calibration predictions.

    Args:
      pred, gt: `[N, K, 2]` (x, y) in original pixels; NaN where missing.
      spacing: `[N, 2]` (row_mm, col_mm), NaN rows unknown (as `metrics.radial_errors`).
      names: the K landmark names.
      alpha: miscoverage in (0, 1).
      confidence: `[N, K]` model confidences; their per-landmark median is kept as
        the reference `lmjax predict --review` scales radii by.

    Returns:
      JSON-ready: `alpha`, `nominal` (1 - alpha), `unit`, `n_images`, `landmarks`,
      and per landmark name `n` (scores), `rank` (m), `radius` (null: unbounded),
      `missed`; `unbounded` names and a `note` when any radius is unbounded.
    """
    alpha = check_alpha(alpha)
    errors, unit = metrics.radial_errors(pred, gt, spacing)
    if errors.shape[1] != len(names):
        raise ValueError(f"{errors.shape[1]} landmarks predicted, {len(names)} names")
    out: dict[str, Any] = {
        "method": METHOD,
        "alpha": alpha,
        "nominal": round(1 - alpha, 10),
        "unit": unit,
        "n_images": int(errors.shape[0]),
        "landmarks": list(names),
        "n": {},
        "rank": {},
        "radius": {},
        "missed": {},
    }
    for k, name in enumerate(names):
        e = errors[:, k]
        n = int((~np.isnan(e)).sum())
        out["n"][name] = n
        out["rank"][name] = quantile_rank(n, alpha)
        out["radius"][name] = _json_float(conformal_radius(e, alpha))
        out["missed"][name] = int(np.isposinf(e).sum())
    if confidence is not None:
        c = np.asarray(confidence, np.float64)
        med = [np.nanmedian(col) if np.isfinite(col).any() else np.nan for col in c.T]
        out["median_confidence"] = {n: _json_float(v, 6) for n, v in zip(names, med, strict=True)}
    unbounded = [n for n in names if out["radius"][n] is None]
    if unbounded:
        need = min_calibration(alpha)
        out["unbounded"] = unbounded
        out["note"] = (
            f"{len(unbounded)} landmark(s) have no finite radius at alpha={alpha:g}: a "
            f"finite one needs at least {need} calibration errors (or misses ranked "
            "within them); enlarge data.calib_fraction or raise conformal.alpha"
        )
    return out


def radii_array(radii: dict[str, Any]) -> np.ndarray:
    """`[K]` radii of a `calibrate` result, +inf where unbounded."""
    return np.array(
        [
            math.inf if radii["radius"][n] is None else radii["radius"][n]
            for n in radii["landmarks"]
        ],
        np.float64,
    )


def _band(p: float, variance: float) -> list[float]:
    half = _Z95 * math.sqrt(max(variance, 0.0))
    return [round(max(0.0, p - half), 4), round(min(1.0, p + half), 4)]


def coverage(
    pred: np.ndarray, gt: np.ndarray, spacing: Any, radii: dict[str, Any]
) -> dict[str, Any]:
    """Achieved coverage of `radii` (a `calibrate` result) on a test split.

    Args:
      pred, gt: `[N, K, 2]` in original pixels, NaN where missing.
      spacing: as in `calibrate`; the errors must come out in the radii's unit.

    Returns:
      JSON-ready: `nominal`, `alpha`, `unit`, `coverage` (share of landmarks with
      ground truth whose error is within the radius), `n`, `band` (a 95 % range of
      what a correct calibration gives: binomial sampling error of the n test
      errors plus the spread of the conditional coverage over calibration sets,
      variance about p(1-p)/(n_cal + 2)), `within_band`, `mean_radius` (finite
      radii), and `per_landmark` {name: `coverage`, `n`, `radius`, `band`}.

    Raises:
      ValueError: different landmark count or unit than the radii.
    """
    errors, unit = metrics.radial_errors(pred, gt, spacing)
    names = list(radii["landmarks"])
    if errors.shape[1] != len(names):
        raise ValueError(f"{errors.shape[1]} landmarks predicted, {len(names)} calibrated")
    if unit != radii["unit"]:
        raise ValueError(
            f"the radii are in {radii['unit']}, but this data's errors are in {unit} "
            "(pixel spacing known for some images only, or not at all)"
        )
    r = radii_array(radii)
    p = float(radii.get("nominal", 1 - radii["alpha"]))
    has = ~np.isnan(errors)
    covered = has & (errors <= r[None, :] * (1 + 1e-12))
    per, cal_var = {}, []
    for k, name in enumerate(names):
        n = int(has[:, k].sum())
        n_cal = int(radii.get("n", {}).get(name, 0))
        cal_var.append(p * (1 - p) / (n_cal + 2))
        cov = float(covered[:, k].sum() / n) if n else float("nan")
        band = _band(p, p * (1 - p) / max(n, 1) + cal_var[-1])
        per[name] = {
            "coverage": _json_float(cov),
            "n": n,
            "radius": _json_float(r[k]),
            "band": band,
        }
    total = int(has.sum())
    achieved = float(covered.sum() / total) if total else float("nan")
    # Landmarks' calibration draws are independent-ish: their mean varies K times less.
    band = _band(p, p * (1 - p) / max(total, 1) + float(np.mean(cal_var)) / len(names))
    finite = r[np.isfinite(r)]
    return {
        "nominal": p,
        "alpha": radii["alpha"],
        "unit": unit,
        "coverage": _json_float(achieved),
        "n": total,
        "band": band,
        "within_band": bool(band[0] <= achieved <= band[1]) if total else None,
        "mean_radius": _json_float(finite.mean()) if finite.size else None,
        "unbounded": [n for n, v in zip(names, r, strict=True) if not np.isfinite(v)],
        "per_landmark": per,
    }


def coverage_entry(pred, gt, spacing, radii: dict[str, Any]) -> dict[str, Any]:
    """`coverage`, or `{"nominal", "skipped": why}` when the radii do not apply
    (another landmark count, or errors in another unit than the radii)."""
    try:
        return coverage(pred, gt, spacing, radii)
    except ValueError as e:
        return {"nominal": radii.get("nominal"), "skipped": str(e)}


def format_coverage(entry: dict[str, Any]) -> str:
    """The terminal lines of a `coverage` result: overall, then per landmark."""
    if "skipped" in entry:
        return f"conformal radii: coverage not measured: {entry['skipped']}"
    u = entry["unit"]
    mean_r = "-" if entry["mean_radius"] is None else f"{entry['mean_radius']:.2f} {u}"
    cov = "-" if entry["coverage"] is None else f"{entry['coverage']:.3f}"
    head = (
        f"conformal radii: coverage {cov} on {entry['n']} landmarks, nominal "
        f"{entry['nominal']:.3f} (95% band {entry['band'][0]:.3f}-{entry['band'][1]:.3f}); "
        f"mean radius {mean_r}"
    )
    nan = float("nan")
    rows = [
        {
            "landmark": name,
            "n": v["n"],
            f"radius_{u}": nan if v["radius"] is None else v["radius"],
            "coverage": nan if v["coverage"] is None else v["coverage"],
        }
        for name, v in entry["per_landmark"].items()
    ]
    return head + "\n" + metrics.format_table(rows, ["landmark", "n", f"radius_{u}", "coverage"])


def save(radii: dict[str, Any], workdir: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(workdir) / CONFORMAL_FILE
    path.write_text(json.dumps(radii, indent=1) + "\n")
    return path


def load(workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """`<workdir>/conformal.json`, or None when the run has none."""
    path = pathlib.Path(workdir) / CONFORMAL_FILE
    return json.loads(path.read_text()) if path.exists() else None


__all__ = [
    "calibrate",
    "conformal_radius",
    "coverage",
    "coverage_entry",
    "format_coverage",
    "load",
    "min_calibration",
    "quantile_rank",
    "radii_array",
    "save",
]
