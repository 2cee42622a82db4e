"""Cross-validation: k-fold and leave-one-group-out over the training records.

Set in the config's `data` block:

  cv_folds: k > 1 for k-fold (records dealt to folds by a seeded permutation).
  cv_group_key / cv_group_pattern: leave-one-group-out, one fold per group (the
    fluoroscopy paper holds out one specimen at a time). The group is the record's
    `meta[cv_group_key]`, or the first capture group (else the whole match) of the
    regular expression `cv_group_pattern` searched in the record's name.
  cv_fold: which fold is held out (-1 with `lmjax train`: every fold in turn).

  cv_refit: after the folds, train once more on every training record (validation
    carved as without cross-validation) into `final/` and evaluate the test
    split there, once: the lower-limb paper's protocol (5-fold CV on 80 % of the
    images for the choices, then the held-out 20 % once).

Fold i's held-out records become the test split; validation is carved from the
rest as without cross-validation. `lmjax train` writes `fold_<i>/` workdirs, an
`eval.json` per fold on its held-out records, and `cv_summary.json`: mean and SD
of the folds' MRE and SDR, and the pooled MRE over all held-out errors (and the
`final` test report with `cv_refit`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmjax.data.types import Record


def cv_enabled(config) -> bool:
    d = config.data
    return bool(d.cv_folds or d.cv_group_key or d.cv_group_pattern)


def _group(record: Record, key: str, pattern: str) -> str:
    if key:
        if key not in record.meta:
            raise ValueError(f"{record.name}: no {key!r} in the record's metadata for cv_group_key")
        return str(record.meta[key])
    match = re.search(pattern, record.name)
    if match is None:
        raise ValueError(f"{record.name}: cv_group_pattern {pattern!r} does not match")
    return match.group(1) if match.groups() else match.group(0)


def assign_folds(records: Sequence[Record], config) -> tuple[np.ndarray, list[str]]:
    """Fold index `[N]` of every record and a name per fold.

    Raises:
      ValueError: both k-fold and groups set, fewer than 2 folds or groups, more
        folds than records, or records without a group.
    """
    d = config.data
    folds, key, pattern = (
        d.cv_folds,
        d.cv_group_key,
        d.cv_group_pattern,
    )
    n = len(records)
    if folds and (key or pattern):
        raise ValueError("set either data.cv_folds (k-fold) or a cv_group_* (leave-one-group-out)")
    if key or pattern:
        groups = [_group(r, key, pattern) for r in records]
        names = sorted(set(groups))
        if len(names) < 2:
            raise ValueError(f"leave-one-group-out needs at least 2 groups, found {names}")
        return np.array([names.index(g) for g in groups]), names
    if not 2 <= folds <= n:
        raise ValueError(f"data.cv_folds must be from 2 to the {n} training records, not {folds}")
    order = np.random.default_rng(config.train.seed).permutation(n)
    fold = np.empty(n, int)
    fold[order] = np.arange(n) % folds
    return fold, [f"fold {i}" for i in range(folds)]


def held_out(records: Sequence[Record], config) -> tuple[list[Record], list[Record]]:
    """`(training records, held-out records)` for `config.data.cv_fold`."""
    fold, names = assign_folds(records, config)
    i = config.data.cv_fold
    if not 0 <= i < len(names):
        raise ValueError(f"data.cv_fold must be in 0..{len(names) - 1} for one run, not {i}")
    keep = [r for r, f in zip(records, fold, strict=True) if f != i]
    out = [r for r, f in zip(records, fold, strict=True) if f == i]
    return keep, out


def summarize_folds(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean and SD over folds of MRE and SDR, and the pooled MRE of every held-out error."""
    mre = np.array([r["mre"] for r in reports], np.float64)
    pooled = np.concatenate(
        [
            np.array(r["per_image"]["errors"], np.float64).ravel()
            for r in reports
            if "per_image" in r
        ]
        or [np.array([np.nan])]
    )
    sdr_keys = list(reports[0]["sdr"])
    return {
        "n_folds": len(reports),
        "unit": reports[0]["unit"],
        "mre_mean": float(mre.mean()),
        "mre_sd": float(mre.std()),
        "pooled_mre": float(np.nanmean(pooled)),
        "n_errors": int(np.isfinite(pooled).sum()),
        "sdr_mean": {k: float(np.mean([r["sdr"][k] for r in reports])) for k in sdr_keys},
        "folds": [
            {"fold": name, "n_images": r["n_images"], "mre": r["mre"], "sdr": r["sdr"]}
            for name, r in zip(names, reports, strict=True)
        ],
    }


def pooled_report(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The folds' held-out reports as one: every held-out image once, each error kept.

    A report writes a missed landmark as null, like one without ground truth, so the
    misses are the folds' own counts.
    """
    from lmjax import metrics

    first = reports[0]
    errors = [row for r in reports for row in r["per_image"]["errors"]]
    thresholds = [float(t) for t in first["sdr"]]
    arr = [[float("nan") if e is None else e for e in row] for row in errors]
    s = metrics.summarize(arr, unit=first["unit"], thresholds=thresholds)
    return {
        "unit": first["unit"],
        "split": "cross-validation (pooled held-out folds)",
        "n_images": len(errors),
        **{k: s[k] for k in ("mre", "sd", "median", "iqr", "p95", "n")},
        "missed": int(sum(r.get("missed", 0) for r in reports)),
        "sdr": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
        "per_image": {
            "images": [n for r in reports for n in r["per_image"]["images"]],
            "landmarks": first["per_image"]["landmarks"],
            "errors": errors,
        },
    }


def refit_config(config):
    """The config of the final run of `cv_refit`: cross-validation off, the same rest."""
    if not cv_enabled(config):
        raise ValueError("data.cv_refit needs cross-validation (data.cv_folds or cv_group_*)")
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.data.cv_folds, out.data.cv_group_key, out.data.cv_group_pattern = 0, "", ""
        out.data.cv_fold, out.data.cv_refit = -1, False
    return out


def run_folds(config, workdir, dataset, train_fn, evaluate_fn, *, log=print) -> dict[str, Any]:
    """Trains and evaluates every fold into `workdir/fold_<i>`; writes `cv_summary.json`.

    `dataset` is the config's whole dataset (`lmjax.train.setup.load_config_dataset`).
    `train_fn(config, fold_workdir)` trains one fold (resuming if it has started);
    `evaluate_fn(fold_workdir, output_path)` returns the held-out report. A fold
    stopped by SIGTERM or SIGINT stops the whole run, to be resumed later.
    """
    import json
    import pathlib

    d = config.data
    ds = dataset
    pool = ds.split(d.train_split) if d.train_split in {r.split for r in ds.records} else ds
    _, names = assign_folds(pool.records, config)
    workdir = pathlib.Path(workdir)
    reports = []
    for i, name in enumerate(names):
        fold_config = config.copy_and_resolve_references()
        with fold_config.unlocked():
            fold_config.data.cv_fold = i
        fold_dir = workdir / f"fold_{i}"
        log(f"cross-validation: {name} ({i + 1} of {len(names)}) into {fold_dir}")
        if stopped := train_fn(fold_config, fold_dir).get("stopped_by"):
            return {"stopped_by": stopped, "fold": i}
        reports.append(evaluate_fn(fold_dir, str(fold_dir / "eval.json")))
    summary = summarize_folds(reports, names)
    if d.cv_refit:
        final = refit_config(config)
        final_dir = workdir / "final"
        log(f"cross-validation done; training on every training record into {final_dir}")
        if stopped := train_fn(final, final_dir).get("stopped_by"):
            return {"stopped_by": stopped, "fold": "final"}
        report = evaluate_fn(final_dir, str(final_dir / "eval.json"))
        keys = ("split", "n_images", "mre", "median", "p95", "sdr")
        summary["final"] = {k: report[k] for k in keys if k in report}
    (workdir / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
