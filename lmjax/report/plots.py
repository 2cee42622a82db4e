"""The report's figures (matplotlib, Agg backend), each returned as an embedded
`data:` URI; their inputs are the numbers of an evaluation report, never errors
computed again."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

SDR_MAX = 10.0  # the SDR curve runs from 0 to this radius (mm, or px without spacing)
_DPI = 96


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display; also in a process that set another
    import matplotlib.pyplot as plt

    return plt


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_uri(fig) -> str:
    """The figure as a PNG data URI; closes it."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue(), "image/png")


def error_matrix(report: dict) -> np.ndarray:
    """`[N, K]` float errors of a report's `per_image` table (NaN: no ground truth or
    missed)."""
    rows = report["per_image"]["errors"]
    return np.array([[np.nan if e is None else e for e in row] for row in rows], np.float64)


def sdr_curve(errors: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Percent of the finite `errors` within each radius (`error <= radius`, the
    summary's SDR definition, so the curve passes through the table's SDRs)."""
    from lmjax import metrics

    return np.array(
        [metrics.summarize(errors, unit="", thresholds=(r,))[metrics.sdr_key(r)] for r in radii]
    )


def sdr_figure(errors: np.ndarray, unit: str, marks: dict[str, float]) -> str:
    """Success rate against radius, 0..SDR_MAX, with the summary's SDRs marked."""
    plt = _pyplot()
    radii = np.linspace(0, SDR_MAX, 201)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(radii, sdr_curve(errors, radii), color="#1f77b4", lw=2)
    for t, v in marks.items():
        ax.plot([float(t)], [v], "o", color="#d62728")
        ax.annotate(f"{v:.1f}%", (float(t), v), textcoords="offset points", xytext=(4, -12))
    ax.set(
        xlim=(0, SDR_MAX),
        ylim=(0, 100.5),
        xlabel=f"radius ({unit})",
        ylabel="landmarks within radius (%)",
        title="Success detection rate",
    )
    ax.grid(alpha=0.3)
    return figure_uri(fig)


def box_figure(errors: np.ndarray, names: Sequence[str], unit: str) -> str:
    """One horizontal box per landmark (whiskers 1.5 IQR, outliers as dots)."""
    plt = _pyplot()
    k = len(names)
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * k))
    data = [c[np.isfinite(c)] for c in errors.T]
    ax.boxplot(data, orientation="horizontal", widths=0.6, flierprops={"markersize": 2})
    ax.set_yticks(range(1, k + 1), [f"{i + 1} {n}" for i, n in enumerate(names)], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"radial error ({unit})", title="Error per landmark")
    ax.grid(axis="x", alpha=0.3)
    return figure_uri(fig)


def histogram_figure(errors: np.ndarray, unit: str) -> str:
    plt = _pyplot()
    e = errors[np.isfinite(errors)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    top = max(SDR_MAX, float(np.percentile(e, 99))) if e.size else SDR_MAX
    ax.hist(np.clip(e, 0, top), bins=50, range=(0, top), color="#2ca02c")
    ax.set(
        xlabel=f"radial error ({unit}; the last bin holds everything beyond)",
        ylabel="landmarks",
        title="Error distribution",
    )
    ax.grid(alpha=0.3)
    return figure_uri(fig)


def confusion_figure(name: str, labels: Sequence[str], confusion) -> str:
    """Counts, rows true class and columns predicted (as `metrics.classification_report`)."""
    plt = _pyplot()
    m = np.asarray(confusion, np.int64)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.4 + 0.55 * n, 1.2 + 0.5 * n))
    ax.imshow(m, cmap="Blues")
    top = m.max() if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > top / 2 else "black",
            )
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=name)
    return figure_uri(fig)


def scatter_figure(name: str, unit: str, predicted, true) -> str:
    """Predicted against true value of one measurement, with the identity line."""
    plt = _pyplot()
    p = np.array([np.nan if v is None else v for v in predicted], np.float64)
    t = np.array([np.nan if v is None else v for v in true], np.float64)
    ok = np.isfinite(p) & np.isfinite(t)
    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    ax.plot(t[ok], p[ok], ".", ms=4)
    if ok.any():
        lo, hi = min(t[ok].min(), p[ok].min()), max(t[ok].max(), p[ok].max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set(xlabel=f"true ({unit})", ylabel=f"predicted ({unit})", title=name)
    ax.tick_params(labelsize=7)
    return figure_uri(fig)
