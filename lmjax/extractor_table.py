"""Every coordinate extractor on the maps of one model: the lower-limb paper's Table 3.

`lmjax evaluate --extractor=all` reads the probability maps of one forward pass
with each extractor below and reports, per extractor, MRE, median, IQR, p95,
SDR, false positives and misses, as the paper's Table 3 compares its five
centroid methods. This module names the extractors and lays out the table; the
reading itself is `lmjax.train.evaluation.compare_extractors`.
"""

from __future__ import annotations

from typing import Any

from lmjax import metrics
from lmjax.ops.centroids import METHODS

# The paper's Methods 1-5 (host), then the device readings that need no tuning on
# [0, 1] maps: the probability-weighted centroid (Method 1 computed on the device,
# in float32) and the hard argmax. The spatial-softmax extractors are left out:
# their temperature is tuned to one kind of map, so they join only when configured.
COMPARED = (*METHODS, "probability_centroid", "hard_argmax")
ALL = "all"


def known_extractors() -> tuple[str, ...]:
    """Every name `--extractor` takes: the task's extractors and `all`."""
    from lmjax.task import EXTRACTORS, HOST_EXTRACTORS

    return (*HOST_EXTRACTORS, *EXTRACTORS, ALL)


def extractor_names(choice: str, configured: str) -> tuple[str, ...]:
    """The extractors `--extractor=choice` evaluates: one, or for `all` every
    `COMPARED` one and the configured extractor when it is not among them."""
    known = known_extractors()
    if choice not in known:
        raise ValueError(f"--extractor: unknown extractor {choice!r}; known: {', '.join(known)}")
    if choice != ALL:
        return (choice,)
    return COMPARED if configured in COMPARED else (*COMPARED, configured)


def comparison_report(reports: dict[str, dict[str, Any]], configured: str) -> dict[str, Any]:
    """The JSON of `--extractor=all`: the shared facts, and each extractor's full
    error report (per landmark and per image, so `lmjax compare` can pair them) with
    the paper's method number (null for the device extractors)."""
    first = next(iter(reports.values()))
    return {
        "extractor": ALL,
        "configured_extractor": configured,
        "n_images": first["n_images"],
        "unit": first["unit"],
        "sdr_thresholds": [float(t) for t in first["sdr"]],
        "extractors": {
            name: {"method": METHODS.get(name), **report} for name, report in reports.items()
        },
    }


def comparison_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per extractor; `fp` only where the extractor counts false
    positives, so an extractor without them shows an empty cell, not a zero (and
    `method` only for the paper's methods)."""
    rows = []
    for name, r in report["extractors"].items():
        row = {"extractor": name}
        if r["method"] is not None:
            row["method"] = r["method"]
        row.update({key: r[key] for key in ("n", "mre", "median", "iqr", "p95")})
        row.update({metrics.sdr_key(float(t)): v for t, v in r["sdr"].items()})
        if "false_positives" in r:
            row["fp"] = r["false_positives"]
        row["missed"] = r["missed"]
        rows.append(row)
    return rows


def format_comparison(report: dict[str, Any]) -> str:
    """The table the terminal shows for `--extractor=all`."""
    unit = report["unit"]
    sdr_cols = [metrics.sdr_key(t) for t in report["sdr_thresholds"]]
    cols = ["extractor", "method", "n", "mre", "median", "iqr", "p95", *sdr_cols, "fp", "missed"]
    head = (
        f"every extractor on the same maps ({report['n_images']} images, errors in {unit}, "
        f"SDR in %; configured: {report['configured_extractor']}; fp: components beyond "
        "the first, counted by the binary-mask methods only)"
    )
    return head + "\n" + metrics.format_table(comparison_rows(report), cols)
