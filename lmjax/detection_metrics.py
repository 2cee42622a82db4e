"""Detection in the pelvis paper's terms: per-class top-1 boxes scored against the boxes
of the items' drawn masks, in the original image.

- detection rate: visible items whose class was found, over visible items;
- false positives: classes found where the item is absent;
- box IoU: of each found, visible item with its true box;
- box-centre error in mm for identified items, and SDR with misses counted as
  failures (the paper counts a missed landmark as a failure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmjax import metrics
from lmjax.data.items import item_vertices
from lmjax.data.types import Dataset
from lmjax.ops.item_masks import item_boxes_by_kind, kind_ids


def true_boxes(dataset: Dataset) -> np.ndarray:
    """`[N, K, 4]` `(x0, y0, x1, y1)` in original pixels around what each item draws
    (a landmark's `radius_mm` disc, an outline's `width_mm` stroke, a patch's
    polygon); NaN where the item is absent. Pixels are taken square at the mean of
    an image's spacing (unknown spacing: the sizes are read as pixels)."""
    ls = dataset.landmark_set
    vertices, valid = item_vertices(dataset.records, ls)
    mm_per_px = np.array(
        [float(np.mean(r.spacing)) if r.spacing is not None else 1.0 for r in dataset.records]
    )[:, None]
    boxes = item_boxes_by_kind(
        vertices, valid, kind_ids(ls.item_kinds), radius=ls.radius_mm / mm_per_px,
        width=ls.width_mm / mm_per_px,
    )  # fmt: skip
    return np.asarray(boxes, np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise IoU of `(x0, y0, x1, y1)` boxes `[..., 4]`; NaN where either is NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[..., 2:] - x[..., :2], 0, None), axis=-1)
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0) + 0 * (a[..., 0] + b[..., 0])


def sdr_with_misses(errors: np.ndarray, thresholds) -> dict[str, float]:
    """SDR in percent of every visible item, a missed one (+inf) counting as a failure."""
    e = np.asarray(errors, np.float64).ravel()
    e = e[~np.isnan(e)]
    return {
        f"{t:g}": float(100.0 * np.mean(e <= t * (1 + 1e-9))) if e.size else float("nan")
        for t in thresholds
    }


def detection_report(
    boxes: np.ndarray,
    found: np.ndarray,
    dataset: Dataset,
    *,
    thresholds=metrics.DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The report of per-class boxes `[N, K, 4]` (original pixels) on `dataset`."""
    truth = true_boxes(dataset)
    visible = np.isfinite(truth).all(-1)
    found = np.asarray(found, bool) & np.isfinite(boxes).all(-1)
    names = dataset.landmark_set.names
    iou = np.where(visible & found, box_iou(boxes, truth), np.nan)
    centres = np.where(found[..., None], (boxes[..., :2] + boxes[..., 2:]) / 2, np.nan)
    true_centres = np.where(visible[..., None], (truth[..., :2] + truth[..., 2:]) / 2, np.nan)
    errors, unit = metrics.radial_errors(centres, true_centres, dataset.spacings())

    def summary(cols) -> dict[str, Any]:
        v, f = visible[:, cols], found[:, cols]
        s = metrics.summarize(errors[:, cols], unit=unit, thresholds=thresholds)
        ious = iou[:, cols][np.isfinite(iou[:, cols])]
        return {
            "visible": int(v.sum()),
            "detected": int((v & f).sum()),
            "detection_rate": float((v & f).sum() / v.sum()) if v.any() else float("nan"),
            "false_positives": int((~v & f).sum()),
            "box_iou_mean": float(ious.mean()) if ious.size else float("nan"),
            "box_iou_median": float(np.median(ious)) if ious.size else float("nan"),
            "centre_error": {
                k: s[k] for k in ("unit", "n", "missed", "mre", "sd", "median", "p95")
            },
            "sdr_identified": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
            "sdr_with_misses": sdr_with_misses(errors[:, cols], thresholds),
        }

    kinds = dataset.landmark_set.item_kinds
    report = {"all": summary(list(range(len(names))))}
    for kind, plural in (("landmark", "landmarks"), ("outline", "outlines"), ("patch", "patches")):
        cols = [j for j, kd in enumerate(kinds) if kd == kind]
        if cols:
            report[plural] = summary(cols)
    report["per_item"] = {
        name: {
            "detection_rate": float((visible[:, j] & found[:, j]).sum() / visible[:, j].sum())
            if visible[:, j].any()
            else None,
            "box_iou_mean": float(np.nanmean(iou[:, j])) if np.isfinite(iou[:, j]).any() else None,
        }
        for j, name in enumerate(names)
    }
    return report


def format_detection(report: dict[str, Any]) -> str:
    lines = []
    for what in ("landmarks", "outlines", "patches", "all"):
        if what not in report or (what == "all" and len(report) <= 3):
            continue
        r = report[what]
        c = r["centre_error"]
        line = (
            f"  detector {what:9s} detected {r['detected']}/{r['visible']} "
            f"({100 * r['detection_rate']:.1f}%)  false positives {r['false_positives']}  "
            f"box IoU mean {r['box_iou_mean']:.3f}"
        )
        if what == "landmarks":
            line += (
                f"  box-centre MRE {c['mre']:.3f} {c['unit']}  SDR@2 identified "
                f"{r['sdr_identified'].get('2', float('nan')):.1f}%, with misses "
                f"{r['sdr_with_misses'].get('2', float('nan')):.1f}%"
            )
        lines.append(line)
    return "\n".join(lines)


__all__ = ["box_iou", "detection_report", "format_detection", "sdr_with_misses", "true_boxes"]
