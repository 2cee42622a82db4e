"""`lmjax sweep`: one config trained and evaluated at every value of a grid.

The lower-limb paper chooses its mask radius (a single pixel, r = 7, 15, 30, 45
px) by training one network per radius and comparing them (Table 3); `--values`
makes any such sweep one command. Each value is a config override, so any
field can be swept; lengths may be given in millimetres (`task.radius=2mm`),
converted to model-input pixels through the training images' spacing and the
fit to the input, and the table shows both. With cross-validation in the
config every setting runs its folds and the table reads the pooled held-out
errors, as the paper's Table 3 does.

Every run lives in its own folder below the sweep's workdir and resumes there;
`sweep.json` holds the table, and the settings are tested against the best one
(lowest median error) with `lmjax compare`'s per-image test.
"""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmjax import metrics

MM = re.compile(r"^\s*([-+0-9.eE]+)\s*mm\s*$")
# Fields measured in model-input pixels, which a value in mm may set.
PIXEL_FIELDS = ("task.radius", "task.side", "task.sigma")


class SweepError(ValueError):
    """The grid cannot be run (bad syntax, mm on a field not in pixels, no spacing)."""


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`["task.radius=1,7,15", ...]` -> `[("task.radius", ["1", "7", "15"]), ...]`."""
    grid = []
    for item in items:
        name, sep, text = item.partition("=")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not name or not values:
            raise SweepError(f"--values: {item!r} is not FIELD=V1,V2,...")
        if name in (g[0] for g in grid):
            raise SweepError(f"--values: {name} is given twice")
        grid.append((name.removeprefix("config."), values))
    if not grid:
        raise SweepError("--values: give at least one FIELD=V1,V2,...")
    return grid


def mm_per_input_pixel(config, *, sample: int = 8) -> float:
    """Millimetres per model-input pixel along the rows, median over training images.

    Raises:
      SweepError: when no sampled training image has a known spacing.
    """
    from lmjax.data.image_io import read_radiograph
    from lmjax.data.pipeline import fit_matrix
    from lmjax.train.setup import load_splits

    train = load_splits(config)[0]
    hw = tuple(config.data.input_size)
    out = []
    for r in train.records[:sample]:
        if not r.spacing:
            continue
        shape = r.image.shape if isinstance(r.image, np.ndarray) else None
        if shape is None:
            shape = read_radiograph(r.image).pixels.shape
        rows_scale = abs(fit_matrix(tuple(shape[:2]), hw, config.data.fit)[1, 1])
        out.append(r.spacing[0] / rows_scale)
    if not out:
        raise SweepError("a value in mm needs training images with a known pixel spacing")
    return float(np.median(out))


def settings(config, grid) -> list[dict[str, Any]]:
    """Every combination of the grid: its overrides (mm turned into pixels) and label."""
    scale = None
    out = []
    for combo in itertools.product(*(values for _, values in grid)):
        overrides, shown = [], {}
        for (name, _), value in zip(grid, combo, strict=True):
            m = MM.match(value)
            if m:
                if name not in PIXEL_FIELDS:
                    raise SweepError(f"--values: {name} is not in pixels; mm is for {PIXEL_FIELDS}")
                scale = mm_per_input_pixel(config) if scale is None else scale
                px = float(m.group(1)) / scale
                shown[name] = {"mm": float(m.group(1)), "px": round(px, 3)}
                value = f"{px:.6g}"
            elif name in PIXEL_FIELDS:
                shown[name] = {"px": float(value)}
            else:
                shown[name] = value
            overrides.append(f"{name}={value}")
        label = ",".join(f"{n.split('.')[-1]}={v}" for (n, _), v in zip(grid, combo, strict=True))
        out.append({"label": label, "overrides": overrides, "values": shown})
    if scale is not None:
        for s in out:
            for v in s["values"].values():
                if isinstance(v, dict) and "mm" not in v:
                    v["mm"] = round(v["px"] * scale, 3)
    return out


def readings(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """`(extractor, report)` of each reading: every extractor's of an
    `--extractor=all` report (the configured one first), else the one report."""
    if "extractors" not in report:
        return [("", report)]
    first = report["configured_extractor"]
    names = [first, *(n for n in report["extractors"] if n != first)]
    return [(n, {"unit": report["unit"], **report["extractors"][n]}) for n in names]


def _row(setting: dict[str, Any], extractor: str, report: dict[str, Any]) -> dict[str, Any]:
    row = {"setting": setting["label"], "extractor": extractor}
    for name, v in setting["values"].items():
        if isinstance(v, dict):
            row.update({f"{name.split('.')[-1]} ({unit})": x for unit, x in v.items()})
    row.update({k: report[k] for k in ("mre", "median", "iqr", "p95", "missed")})
    row["false_positives"] = report.get("false_positives")
    row.update({f"SDR@{t}": v for t, v in report["sdr"].items()})
    return row


def run_sweep(
    config,
    workdir: str | pathlib.Path,
    grid: Sequence[tuple[str, list[str]]],
    train_and_evaluate: Callable[[Any, pathlib.Path], dict[str, Any]],
    *,
    log=print,
) -> dict[str, Any]:
    """Trains and evaluates every setting; writes and returns `sweep.json`.

    `train_and_evaluate(config, run_dir)` trains one setting (resuming) and returns
    its held-out report (the evaluate JSON, or a fold-pooled one), or
    `{"stopped_by": ...}` when interrupted, which stops the sweep to be resumed.
    """
    from lmjax import configs

    workdir = pathlib.Path(workdir)
    runs = []
    for i, setting in enumerate(settings(config, grid)):
        run_config = configs.apply_overrides(config, setting["overrides"], source="--values")
        run_dir = workdir / re.sub(r"[^A-Za-z0-9_.=,-]", "_", setting["label"])
        log(f"sweep {i + 1}: {setting['label']} into {run_dir}")
        report = train_and_evaluate(run_config, run_dir)
        if "stopped_by" in report:
            return {"stopped_by": report["stopped_by"], "setting": setting["label"]}
        main = readings(report)[0][1]  # the configured extractor's: what the tests pair
        path = run_dir / "sweep_report.json"
        path.write_text(json.dumps(main))
        runs.append((setting, report, main, path))
    rows = [_row(s, name, r) for s, report, _, _ in runs for name, r in readings(report)]
    result = {"grid": [list(g) for g in grid], "unit": runs[0][1]["unit"], "rows": rows}
    result["tests"] = _tests(runs)
    (workdir / "sweep.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    return result


def _tests(runs) -> dict[str, Any] | None:
    """Each setting against the one with the lowest median error (per-image test of
    the configured extractor's readings)."""
    if len(runs) < 2:
        return None
    from lmjax.compare import compare_reports

    medians = [m["median"] if math.isfinite(m["median"]) else math.inf for _, _, m, _ in runs]
    best = int(np.argmin(medians))
    order = [best, *(i for i in range(len(runs)) if i != best)]
    for setting, _, main, path in runs:  # compare names the reports by their labels
        path.write_text(json.dumps({**main, "label": setting["label"]}))
    result = compare_reports([runs[i][3] for i in order])
    return {
        "reference": runs[best][0]["label"],
        "overall": {t["label"]: t["overall"] for t in result["tests"]},
    }


def format_sweep(result: dict[str, Any]) -> str:
    rows = result["rows"]
    tests = (result.get("tests") or {}).get("overall", {})
    shown, seen = [], set()
    for row in rows:
        # The test belongs to a setting's first reading (its configured extractor).
        t = None if row["setting"] in seen else tests.get(row["setting"])
        seen.add(row["setting"])
        out = {k: v for k, v in row.items() if k not in ("extractor", "false_positives") or v}
        out["p vs best"] = f"{t['p_corrected']:.2e}" if t and "p_corrected" in t else "-"
        shown.append(out)
    cols = list(dict.fromkeys(k for row in shown for k in row))
    head = f"{len({r['setting'] for r in rows})} settings; errors in {result['unit']}"
    if tests:
        head += f"; per-image Wilcoxon against the best median, {result['tests']['reference']}"
    return head + "\n" + metrics.format_table(shown, cols, floatfmt=".3f")
