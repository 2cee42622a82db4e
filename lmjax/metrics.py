"""Evaluation metrics on the host (NumPy): radial errors, summaries, masks, angles, classes.

Radial errors are measured in the original image frame. An error array `[N, K]`
encodes three cases:

- finite: the error of a detected landmark;
- NaN: no ground truth (missing landmark), excluded everywhere;
- +inf: a missed detection (ground truth exists, prediction is NaN), counted in
  `missed` and never folded into means, percentiles or SDR.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmjax.data.types import as_spacing

DEFAULT_THRESHOLDS = (2.0, 2.5, 3.0, 4.0)
# Relative slack for `<=` at an SDR threshold: an error of exactly 2 mm computed as
# 2.0000000000000004 from a spacing product still counts as a hit.
_SDR_RTOL = 1e-9


def _spacing_table(spacing: Any, n: int) -> np.ndarray:
    """`[N, 2]` (row_mm, col_mm), NaN rows where unknown or invalid."""
    out = np.full((n, 2), np.nan)
    if spacing is None:
        return out
    if isinstance(spacing, np.ndarray) and spacing.dtype != object:
        rows = list(np.broadcast_to(spacing.astype(float), (n, 2)))
    elif len(spacing) == 2 and all(np.isscalar(v) for v in spacing):
        rows = [spacing] * n  # one (row_mm, col_mm) for every image
    else:
        rows = list(spacing)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} spacings for {n} images")
    for i, row in enumerate(rows):
        sp = as_spacing(row)
        if sp is not None:
            out[i] = sp
    return out


def radial_errors(pred: Any, gt: Any, spacing: Any = None) -> tuple[np.ndarray, str]:
    """Euclidean error per landmark, in mm when every image has a spacing.

    `error = sqrt((dx * col_mm)^2 + (dy * row_mm)^2)` with `(dx, dy)` in original
    pixels. Units are never mixed: if any image lacks a valid spacing, all errors
    are in pixels (unit "px"), with a warning when some images did have one.

    Args:
      pred, gt: `[N, K, 2]` (x, y) in original pixels; NaN where missing.
      spacing: `[N, 2]` (row_mm, col_mm) with NaN rows for unknown, a sequence of
        per-image pairs or None, one pair for all images, or None (all unknown).

    Returns:
      `(errors [N, K], unit)`: NaN where gt is missing, +inf for missed detections.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [N, K, 2]")
    n = gt.shape[0]
    sp = _spacing_table(spacing, n)
    known = np.isfinite(sp).all(axis=1)
    if known.all():
        unit, scale = "mm", sp[:, None, ::-1]  # x scales by col_mm, y by row_mm
    else:
        unit, scale = "px", 1.0
        if known.any():
            warnings.warn(
                f"pixel spacing unknown for {int((~known).sum())} of {n} images; "
                "all radial errors are reported in pixels",
                stacklevel=2,
            )
    d = (pred - gt) * scale
    with np.errstate(invalid="ignore"):
        err = np.hypot(d[..., 0], d[..., 1])
    has_gt = np.isfinite(gt).all(-1)
    has_pred = np.isfinite(pred).all(-1)
    return np.where(has_gt, np.where(has_pred, err, np.inf), np.nan), unit


def sdr_key(threshold: float) -> str:
    """The summary key of the success detection rate at `threshold`, e.g. "sdr@2.5"."""
    return f"sdr@{threshold:g}"


def summarize(
    errors: Any, *, unit: str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """MRE and friends over all valid (finite) errors.

    Args:
      errors: any shape, encoded as `radial_errors` returns them.
      unit: "mm" or "px", copied into the result; thresholds are in this unit.
      thresholds: SDR thresholds; a hit is `error <= threshold`.

    Returns:
      dict with `unit`, `n` (valid pairs), `missed`, `mre`, `sd` (population,
      ddof=0), `median`, `iqr` (q75 - q25), `p95`, and `sdr@t` in percent of valid
      pairs for each threshold. Statistics are NaN when `n` is 0.
    """
    e = np.asarray(errors, np.float64).ravel()
    v = e[np.isfinite(e)]
    out: dict[str, Any] = {"unit": unit, "n": int(v.size), "missed": int(np.isposinf(e).sum())}
    if v.size:
        q25, q50, q75, q95 = np.percentile(v, [25, 50, 75, 95])
        out.update(mre=float(v.mean()), sd=float(v.std()), median=float(q50))
        out.update(iqr=float(q75 - q25), p95=float(q95))
    else:
        out.update(dict.fromkeys(("mre", "sd", "median", "iqr", "p95"), float("nan")))
    for t in thresholds:
        hits = v <= t * (1 + _SDR_RTOL)
        out[sdr_key(t)] = float(100.0 * hits.mean()) if v.size else float("nan")
    return out


def per_landmark(
    errors: Any,
    names: Sequence[str],
    *,
    unit: str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> list[dict[str, Any]]:
    """`summarize` per landmark: one dict per column of `errors [N, K]`, with `landmark`."""
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 2 or errors.shape[1] != len(names):
        raise ValueError(f"errors {errors.shape} do not match {len(names)} landmark names")
    return [
        {"landmark": name, **summarize(errors[:, k], unit=unit, thresholds=thresholds)}
        for k, name in enumerate(names)
    ]


def detection_counts(
    missed: Any, false_positives: Any, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Totals of missed detections and false positives of a threshold-based extractor.

    Args:
      missed: bool `[N, K]`, True where a ground-truth landmark got no detection.
      false_positives: int `[N, K]`, detections beyond the one matched (or any
        detection of an absent landmark).
      names: landmark names for the per-landmark rows, or None for indices.

    Returns:
      dict with `images`, `missed`, `false_positives`, `images_with_missed`,
      `images_with_false_positives` and `per_landmark` rows.
    """
    m = np.asarray(missed, bool)
    fp = np.asarray(false_positives, np.int64)
    if m.shape != fp.shape or m.ndim != 2:
        raise ValueError(f"missed {m.shape} and false_positives {fp.shape} must be [N, K]")
    names = list(names) if names is not None else [str(k) for k in range(m.shape[1])]
    rows = [
        {"landmark": name, "missed": int(m[:, k].sum()), "false_positives": int(fp[:, k].sum())}
        for k, name in enumerate(names)
    ]
    return {
        "images": int(m.shape[0]),
        "missed": int(m.sum()),
        "false_positives": int(fp.sum()),
        "images_with_missed": int(m.any(axis=1).sum()),
        "images_with_false_positives": int((fp > 0).any(axis=1).sum()),
        "per_landmark": rows,
    }


def _overlap(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, t = np.asarray(pred) != 0, np.asarray(target) != 0
    if p.shape != t.shape or p.ndim < 3:
        raise ValueError(f"masks {p.shape} and {t.shape} must both be [..., H, W, K]")
    inter = (p & t).sum(axis=(-3, -2))
    return inter, p.sum(axis=(-3, -2)), t.sum(axis=(-3, -2))


def mask_iou(pred: Any, target: Any, *, empty: float = float("nan")) -> np.ndarray:
    """Intersection over union per channel of binary masks (nonzero = foreground).

    Args:
      pred, target: `[..., H, W, K]`, e.g. `[N, H, W, K]`.
      empty: value where both masks are empty. NaN by default, so that `np.nanmean`
        leaves such channels out rather than scoring them perfect (pass 1.0 for that).

    Returns:
      float `[..., K]`.
    """
    inter, ps, ts = _overlap(pred, target)
    union = ps + ts - inter
    return np.where(union > 0, inter / np.maximum(union, 1), empty)


def mask_dice(pred: Any, target: Any, *, empty: float = float("nan")) -> np.ndarray:
    """Dice `2|P.T| / (|P| + |T|)` per channel; arguments and shapes as `mask_iou`."""
    inter, ps, ts = _overlap(pred, target)
    denom = ps + ts
    return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), empty)


def angle_errors(pred_deg: Any, gt_deg: Any) -> dict[str, Any]:
    """Errors of angle measurements in degrees, differences wrapped to [-180, 180).

    Args:
      pred_deg, gt_deg: same-shape arrays; NaN where a measurement is missing.

    Returns:
      dict with `errors` (signed wrapped differences, NaN where either is
      missing), `n`, `missed` (gt present, prediction NaN), and `mae`, `median`
      and `iqr` of the absolute errors (NaN when `n` is 0).
    """
    pred, gt = np.asarray(pred_deg, np.float64), np.asarray(gt_deg, np.float64)
    d = (pred - gt + 180.0) % 360.0 - 180.0
    a = np.abs(d[np.isfinite(d)])
    out: dict[str, Any] = {"errors": d, "n": int(a.size)}
    out["missed"] = int((np.isfinite(gt) & ~np.isfinite(pred)).sum())
    if a.size:
        q25, q50, q75 = np.percentile(a, [25, 50, 75])
        out.update(mae=float(a.mean()), median=float(q50), iqr=float(q75 - q25))
    else:
        out.update(mae=float("nan"), median=float("nan"), iqr=float("nan"))
    return out


def _ratio(num: float, den: float) -> float:
    # Zero division gives 0 (as scikit-learn's zero_division=0), never NaN.
    return float(num / den) if den else 0.0


def classification_report(y_true: Any, y_pred: Any, labels: Any = None) -> dict[str, Any]:
    """Per-class and macro precision, recall and F1, and accuracy.

    A ratio with a zero denominator (a class never predicted, or absent from
    `y_true`) is 0, not NaN. Macro averages run over all `labels`, including
    classes with zero support.

    Args:
      y_true, y_pred: label arrays of the same length.
      labels: the classes to report, in order; None for the sorted union.

    Returns:
      dict with `labels`, `confusion` (int `[L, L]`, rows true, columns predicted;
      samples with a label outside `labels` are left out of it), `per_class`
      (label -> precision, recall, f1, support), `macro` (precision, recall,
      f1), `accuracy` over all samples (0 when empty), and `n`.
    """
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    if labels is None:
        labels = np.unique(np.concatenate([y_true, y_pred]))
    labels = np.asarray(labels).tolist()  # plain Python scalars as dict keys
    index = {lab: i for i, lab in enumerate(labels)}
    conf = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True):
        if t in index and p in index:
            conf[index[t], index[p]] += 1
    per_class = {}
    for i, lab in enumerate(labels):
        tp = conf[i, i]
        precision = _ratio(tp, conf[:, i].sum())
        recall = _ratio(tp, conf[i, :].sum())
        f1 = _ratio(2 * precision * recall, precision + recall)
        support = int((y_true == lab).sum())
        per_class[lab] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro = {
        key: float(np.mean([c[key] for c in per_class.values()])) if labels else 0.0
        for key in ("precision", "recall", "f1")
    }
    accuracy = _ratio(int((y_true == y_pred).sum()), y_true.size)
    return {
        "labels": labels,
        "confusion": conf,
        "per_class": per_class,
        "macro": macro,
        "accuracy": accuracy,
        "n": int(y_true.size),
    }


def _cell(value: Any, floatfmt: str) -> str:
    if isinstance(value, float | np.floating):
        return "-" if np.isnan(value) else format(value, floatfmt)
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, floatfmt: str = ".2f"
) -> str:
    """Plain-text table: a header, a rule, one line per row.

    Floats use `floatfmt` and NaN prints as "-"; numbers are right-aligned, text
    left-aligned; a key missing from a row prints empty.
    """
    cells = [[_cell(r.get(c, ""), floatfmt) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), int | float | np.number) for r in rows if c in r) for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)
