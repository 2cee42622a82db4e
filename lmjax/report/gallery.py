"""The report's gallery: one card per image of the split, worst first, with the
prediction drawn against the ground truth (`lmjax.overlay.compare_overlay`)."""

from __future__ import annotations

import html
import io

import numpy as np

from lmjax import progress
from lmjax.overlay import compare_overlay
from lmjax.report.plots import data_uri, error_matrix

THUMB_SIDE = 512  # px; 150 JPEG cards of this size make a page of about 5 MB
JPEG_QUALITY = 80


def predicted_coords(report: dict) -> np.ndarray | None:
    """`[N, K, 2]` predicted landmarks of the report (NaN: missed), or None when the
    trainer's report does not carry them."""
    rows = report["per_image"].get("predicted")
    if rows is None:
        return None
    return np.array(
        [[[np.nan if v is None else v for v in p] for p in row] for row in rows], np.float64
    )


def image_order(errors: np.ndarray, missed: np.ndarray) -> np.ndarray:
    """Worst first: most missed landmarks, then highest mean error (images without
    any error last)."""
    counted = np.isfinite(errors).any(1)
    mean = np.full(len(errors), -np.inf)
    mean[counted] = np.nanmean(errors[counted], 1)
    return np.lexsort((-mean, -missed))


def _ellipses(radii, coords, spacing) -> np.ndarray | None:
    if radii is None:
        return None
    from lmjax import review

    unc = review.Uncertainty(radii, None)
    sp = None if not np.isfinite(spacing).all() else spacing
    return review.annotate(unc, coords, np.zeros(len(coords)), sp).ellipse_px


def _measurement_rows(measurements: dict | None, i: int) -> str:
    if not measurements:
        return ""
    per = measurements["per_image"]
    classed = any(c is not None for cs in per["true_class"].values() for c in cs)
    rows = []
    for name, unit in per["units"].items():
        p, t = per["predicted"][name][i], per["true"][name][i]
        pc, tc = per["predicted_class"][name][i], per["true_class"][name][i]
        if p is None and t is None:
            continue
        cls = "" if pc is None and tc is None else f"{pc or '-'} / {tc or '-'}"
        bad = ' class="wrong"' if pc != tc and tc is not None else ""
        rows.append(
            f"<tr{bad}><td>{html.escape(name)}</td><td>{_num(p)}</td><td>{_num(t)}</td>"
            f"<td>{html.escape(unit)}</td>"
            + (f"<td>{html.escape(cls)}</td>" if classed else "")
            + "</tr>"
        )
    if not rows:
        return ""
    head = "<tr><th></th><th>pred</th><th>true</th><th></th>"
    head += "<th>class p / t</th></tr>" if classed else "</tr>"
    return f'<table class="meas">{head}{"".join(rows)}</table>'


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def cards(report: dict, dataset, radii: dict | None = None) -> list[str]:
    """HTML of every image's card, worst first. `radii`: the run's conformal.json,
    drawn as circles around each prediction."""
    names = list(dataset.landmark_set.names)
    errors = error_matrix(report)
    pred = predicted_coords(report)
    gt = dataset.landmarks()
    if pred is None:  # nothing to draw but the ground truth
        pred = np.full(gt.shape, np.nan)
    missed = (np.isfinite(gt).all(-1) & ~np.isfinite(pred).all(-1)).sum(1)
    spacings = dataset.spacings()
    unit = report["unit"]
    # The report's names: `--anonymize_names` replaces the files' own.
    shown = report["per_image"]["images"]
    out = []
    order = image_order(errors, missed)
    with progress.Progress(len(order), "report gallery", unit="image") as bar:
        for rank, i in enumerate(order):
            record = dataset.records[i]
            pic = compare_overlay(
                record,
                pred[i],
                names,
                long_side=THUMB_SIDE,
                radii_px=_ellipses(radii, pred[i], spacings[i]),
            )
            buf = io.BytesIO()
            pic.save(buf, format="JPEG", quality=JPEG_QUALITY)
            e = errors[i]
            if np.isfinite(e).any():
                worst = int(np.nanargmax(e))
                stats = (
                    f"mean {np.nanmean(e):.2f} {unit} · max {e[worst]:.2f} "
                    f"({worst + 1} {html.escape(names[worst])})"
                )
            else:
                stats = "no error measured"
            if missed[i]:
                stats += f" · <b>{int(missed[i])} missed</b>"
            out.append(
                f'<figure class="card" id="img-{i}" data-rank="{rank + 1}">'
                f'<img loading="lazy" alt="{html.escape(shown[i])}" '
                f'src="{data_uri(buf.getvalue(), "image/jpeg")}">'
                f"<figcaption><b>#{rank + 1} {html.escape(shown[i])}</b><br>{stats}"
                f"{_measurement_rows(report.get('measurements'), i)}</figcaption></figure>"
            )
            bar.advance(1)
    return out
