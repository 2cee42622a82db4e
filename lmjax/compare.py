"""`lmjax compare`: evaluation reports side by side, with paired significance tests.

Each report is the JSON of `lmjax evaluate`; its `per_image` block holds the
radial error of every (image, landmark). Reports are paired on image names and
landmarks, and every report after the first is tested against the first (the
reference) with the Wilcoxon signed-rank test (`lmjax.paired_stats`):

- overall, per image: each image's mean error over its landmarks, paired by
  image, so n is the number of images (pooling every landmark error would treat
  the landmarks of one image as independent and overstate n);
- per landmark, paired by image;
- per clinical measurement, when the reports carry per-image measurements
  (`lmjax.compare_measurements`).

Multiple-comparison corrections (Holm by default) run over three families, each
spanning every compared model: the overall tests (one per model), the
per-landmark tests (landmarks x models) and the measurement tests (measurements
x models). Misses are never dropped silently: see `paired_stats.apply_misses`
for the policies, and every test counts the pairs they affected.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmjax import metrics, paired_stats
from lmjax.compare_measurements import compare_measurements

MARKS = ("stars", "paper002")
FORMATS = ("text", "markdown")
FAMILIES = ("overall", "per_landmark", "measurements")  # each corrected on its own


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


def _missed(report: dict[str, Any], errors: np.ndarray, others: list[np.ndarray]) -> int:
    # The report's own count is exact (it knew misses from unannotated landmarks);
    # without it, a null where another report has an error is a miss.
    if "missed" in report:
        return int(report["missed"])
    found_elsewhere = np.any([np.isfinite(o) for o in others], axis=0)
    return int((~np.isfinite(errors) & found_elsewhere).sum())


def compare_reports(
    paths: Sequence[str | pathlib.Path],
    *,
    alternative: str = "two-sided",
    correction: str = "holm",
    misses: str = "penalize",
    error_cap: float | None = None,
    marks: str = "stars",
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Errors and measurements of each report, with tests against the first.

    Args:
      paths: two or more `lmjax evaluate` JSON reports; the first is the reference.
      alternative: "two-sided", "less" (the model's errors are smaller than the
        reference's) or "greater".
      correction: "holm", "bonferroni" or "none", applied per family (module doc).
      misses: "penalize", "cap" (with `error_cap`) or "drop".
      marks: "stars" (`*` `**` `***` at corrected p < 0.05, 0.01, 0.001) or
        "paper002" (`paired_stats.paper002_marks`).
      resamples, seed: of the percentile bootstrap of each effect size.

    Raises:
      CompareError: fewer than two reports, an unknown option, mixed units,
        different landmarks, or reports with no image in common.
    """
    for name, value, allowed in (
        ("alternative", alternative, paired_stats.ALTERNATIVES),
        ("correction", correction, paired_stats.CORRECTIONS),
        ("misses", misses, paired_stats.MISSES),
        ("marks", marks, MARKS),
    ):
        if value not in allowed:
            raise CompareError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")
    if misses == "cap" and (error_cap is None or not error_cap >= 0):
        raise CompareError("--misses=cap needs --error_cap=MM (an error >= 0)")
    if error_cap is not None and misses != "cap":
        raise CompareError("--error_cap only applies with --misses=cap")
    if len(paths) < 2:
        raise CompareError("compare needs at least two reports")
    reports = [_load(p) for p in paths]
    labels = [r["label"] for r in reports]
    if len(set(labels)) < len(labels):  # same file names: tell them apart by folder
        for r, path in zip(reports, paths, strict=True):
            path = pathlib.Path(path)
            r["label"] = f"{path.parent.name}/{path.stem}"
        labels = [r["label"] for r in reports]
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
    opts = {
        "alternative": alternative,
        "correction": correction,
        "misses": misses,
        "error_cap": error_cap,
        "marks": marks,
        "resamples": resamples,
        "seed": seed,
        "confidence": 0.95,
    }
    models = []
    for i, (r, e) in enumerate(zip(reports, paired, strict=True)):
        s = metrics.summarize(e, unit=unit, thresholds=thresholds)
        models.append(
            {
                "label": r["label"],
                "model": r.get("model"),
                "split": r.get("split"),
                "ground_truth": r.get("ground_truth"),
                **{k: s[k] for k in ("n", "mre", "sd", "median", "p95")},
                "sdr": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
                "missed": _missed(r, e, paired[:i] + paired[i + 1 :]),
            }
        )
    kw = {k: opts[k] for k in ("alternative", "misses", "error_cap", "resamples", "seed")}
    pairs = [paired_stats.error_tests(paired[0], e, **kw) for e in paired[1:]]
    overall = [p["overall"] for p in pairs]
    per_lm = [[p["per_landmark"][k] for p in pairs] for k in range(len(landmarks))]
    meas = compare_measurements(
        reports, misses=misses, alternative=alternative, resamples=resamples, seed=seed
    )
    sizes = [
        paired_stats.correct_family(family, correction)
        for family in (overall, sum(per_lm, []), sum(meas.get("tests", []), []))
    ]
    for m, cell in zip(models, paired_stats.mark_row(overall, marks), strict=True):
        m["marks"] = cell
    per_landmark = []
    for k, name in enumerate(landmarks):
        row: dict[str, Any] = {"landmark": name}
        for r, e in zip(reports, paired, strict=True):
            col = e[:, k]
            row[r["label"]] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
        row["marks"] = dict(zip(labels, paired_stats.mark_row(per_lm[k], marks), strict=True))
        per_landmark.append(row)
    for row, tests in zip(meas.get("rows", []), meas.get("tests", []), strict=True):
        row["marks"] = paired_stats.mark_row(tests, marks)
    # What each correction spans; "tests" counts those that could run (finite p).
    n_models, n_meas = len(pairs), len(meas.get("rows", []))
    covers = (
        f"1 per-image test x {n_models} model(s)",
        f"{len(landmarks)} landmarks x {n_models} model(s)",
        f"{n_meas} measurements and classes x {n_models} model(s)",
    )
    families = {
        name: {"tests": size, "covers": text}
        for name, size, text in zip(FAMILIES, sizes, covers, strict=True)
    }
    tests = [
        {
            "label": r["label"],
            "against": ref["label"],
            "overall": p["overall"],
            "per_landmark": dict(zip(landmarks, p["per_landmark"], strict=True)),
            "measurements": {
                f"{row['measurement']} ({row['kind']})": ts[j]
                for row, ts in zip(meas.get("rows", []), meas.get("tests", []), strict=True)
            },
        }
        for j, (r, p) in enumerate(zip(reports[1:], pairs, strict=True))
    ]
    return {
        "unit": unit,
        "n_images": len(images),
        "reference": ref["label"],
        "settings": opts,
        "families": families,
        "models": models,
        "tests": tests,
        "per_landmark": per_landmark,
        "measurements": meas,
    }


# ---------------------------------------------------------------- formatting


def _p(p: float) -> str:
    return f"{p:.1e}" if np.isfinite(p) else "-"


def _num(x: float, fmt: str = ".3f") -> str:
    return format(x, fmt) if np.isfinite(x) else ("inf" if x == np.inf else "-")


def _cell(value: str, mark: dict[str, Any], style: str) -> str:
    """A value with its marks: bold as `**v**` in Markdown and a trailing `b` in text."""
    if style == "markdown":
        head = f"**{value}**" if mark["bold"] else value
        return head + mark["symbols"].replace("*", r"\*")
    return value + ("b" if mark["bold"] else "") + mark["symbols"]


def _table(rows: list[dict[str, Any]], columns: list[str], style: str) -> str:
    if style == "text":
        return metrics.format_table(rows, columns, floatfmt=".3f")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [r.get(c, "") for c in columns]
        cells = [_num(v) if isinstance(v, float) else str(v).replace("|", r"\|") for v in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _test_row(t: dict[str, Any], head: dict[str, Any], style: str) -> dict[str, Any]:
    effect = t.get("median_difference", t.get("error_rate_difference"))
    lo, hi = t["ci"]
    marks = t["marks"].replace("*", r"\*") if style == "markdown" else t["marks"]
    return {
        **head,
        "n": t["n"],
        "missed ref/model": f"{t['missed_reference']}/{t['missed_model']}",
        "affected": t["affected"],
        "effect": _num(effect),
        "95% CI": f"[{_num(lo)}, {_num(hi)}]",
        "p": _p(t["p"]),
        "p corrected": _p(t["p_corrected"]),
        "marks": marks,
    }


def _title(text: str, style: str) -> str:
    return f"#### {text}" if style == "markdown" else text


def _legend(result: dict[str, Any], style: str) -> list[str]:
    s, ref = result["settings"], result["reference"]
    alt = {
        "two-sided": "two-sided",
        "less": "one-sided, H1: the model's errors are smaller than the reference's",
        "greater": "one-sided, H1: the model's errors are larger than the reference's",
    }[s["alternative"]]
    misses = {
        "penalize": "penalized (a value one model missed and the other found ranks worse "
        "than any found error; an image with such a miss has an infinite mean)",
        "cap": f"capped (a miss counts as an error of {s['error_cap']} "
        f"{result['unit']}; measurement misses are penalized)",
        "drop": "dropped (pairs with a miss are left out; counted under 'affected')",
    }[s["misses"]]
    if s["marks"] == "paper002":
        n = len(result["tests"])
        syms = " ".join(paired_stats.paper002_symbol(i) for i in range(n))
        marks = (
            f"marks as paper 002: bold (b in text) = significantly lower error, raw p < 0.05; "
            f"{syms} on {ref} = differs from model 1..{n} at raw p < 0.05/{n} (Bonferroni "
            "over the models)"
        )
    else:
        which = "uncorrected" if s["correction"] == "none" else f"{s['correction']}-corrected"
        marks = f"marks: * ** *** = {which} p < 0.05, 0.01, 0.001"
    fam = "; ".join(
        f"{k.replace('_', ' ')} {f['tests']} test{'' if f['tests'] == 1 else 's'} ({f['covers']})"
        for k, f in result["families"].items()
    )
    lines = [
        f"{result['n_images']} paired images; each model against {ref}: Wilcoxon signed-rank "
        f"on paired differences (model - {ref}), {alt}",
        f"misses {misses}",
        f"correction {s['correction']}, within each family: {fam}",
        marks,
        f"effect: median paired difference (classes: error-rate difference), model - {ref}, "
        f"with a {s['confidence']:.0%} percentile bootstrap CI over images "
        f"({s['resamples']} resamples, seed {s['seed']})",
    ]
    if style == "markdown":  # a list, and `*` as text rather than emphasis
        return ["- " + line.replace("*", r"\*") for line in lines]
    return lines


def format_comparison(result: dict[str, Any], style: str = "text") -> str:
    """The comparison as tables: overall, per-image tests, per landmark, measurements.

    `style` is "text" or "markdown" (bold marks as `**value**`).
    """
    if style not in FORMATS:
        raise CompareError(f"unknown format {style!r}; use one of {', '.join(FORMATS)}")
    unit = result["unit"]
    labels = [m["label"] for m in result["models"]]
    rows = []
    for m in result["models"]:
        rows.append(
            {
                "model": m["label"],
                "n": m["n"],
                "missed": m["missed"],
                f"MRE ({unit})": _cell(_num(m["mre"]), m["marks"], style),
                "SD": m["sd"],
                "median": m["median"],
                **{f"SDR@{k}": v for k, v in m["sdr"].items()},
            }
        )
    out = [*_legend(result, style), "", _table(rows, list(rows[0]), style)]
    test_rows = [_test_row(t["overall"], {"model": t["label"]}, style) for t in result["tests"]]
    title = f"Overall test per image (mean error over each image's landmarks, {unit})"
    out += ["", _title(title, style)]
    out.append(_table(test_rows, list(test_rows[0]), style))
    lm_rows = []
    for row in result["per_landmark"]:
        cells = {lab: _cell(_num(row[lab]), row["marks"][lab], style) for lab in labels}
        lm_rows.append({"landmark": row["landmark"], **cells})
    out += ["", _title(f"MRE per landmark ({unit})", style)]
    out.append(_table(lm_rows, ["landmark", *labels], style))
    t_rows = []
    for row in result["per_landmark"]:
        for t in result["tests"]:
            head = {"landmark": row["landmark"], "model": t["label"]}
            t_rows.append(_test_row(t["per_landmark"][row["landmark"]], head, style))
    out += ["", _title(f"Per-landmark tests (paired by image, {unit})", style)]
    out.append(_table(t_rows, list(t_rows[0]), style))
    return "\n".join(out + _format_measurements(result, labels, style))


def _format_measurements(result: dict[str, Any], labels: list[str], style: str) -> list[str]:
    meas = result["measurements"]
    if "skipped" in meas:
        return ["", f"Measurements not compared: {meas['skipped']}"]
    out = [""]
    if meas["rows"]:
        rows, t_rows = [], []
        for row, tests in zip(meas["rows"], meas["tests"], strict=True):
            values = [_num(v) for v in row["values"]]
            cells = [_cell(v, mk, style) for v, mk in zip(values, row["marks"], strict=True)]
            what = "median |error|" if row["kind"] == "value" else "accuracy"
            rows.append({"measurement": row["measurement"], "unit": row["unit"], "shows": what})
            rows[-1].update(zip(labels, cells, strict=True))
            unit = row["unit"] if row["kind"] == "value" else "error rate"
            for label, t in zip(labels[1:], tests, strict=True):
                head = {"measurement": row["measurement"], "unit": unit, "model": label}
                t_rows.append(_test_row(t, {**head, "test": t["test"]}, style))
        head = f"Measurements on {meas['n_images']} paired images, against the truth"
        out += [_title(head, style), _table(rows, ["measurement", "unit", "shows", *labels], style)]
        out += ["", _title("Measurement tests", style), _table(t_rows, list(t_rows[0]), style)]
    out += [f"not compared: {note}" for note in meas["notes"]]
    return out
