"""`lmjax sweep`: train and evaluate one config at every value of a grid."""

from __future__ import annotations

import json
import pathlib

from absl import flags

from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import _evaluate_workdir, sdr_radii


def define_sweep(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "folder of the sweep, one run per setting", flag_values=fv)
    flags.DEFINE_multi_string(
        "values",
        [],
        "FIELD=V1,V2,... config values to sweep (repeat for a grid); lengths in model-input "
        "pixels (task.radius, task.side, task.sigma) may be given in mm: task.radius=2mm",
        flag_values=fv,
    )
    flags.DEFINE_string("split", None, "split each setting is evaluated on", flag_values=fv)
    flags.DEFINE_string(
        "extractor", None, "as `lmjax evaluate`: one extractor, or all of them", flag_values=fv
    )
    from lmjax.metrics import DEFAULT_THRESHOLDS

    flags.DEFINE_list(
        "sdr_mm", [f"{t:g}" for t in DEFAULT_THRESHOLDS], "SDR radii in mm", flag_values=fv
    )


def _pooled(reports: list[dict]) -> dict:
    """The folds' held-out reports as one: every held-out image once, each error kept."""
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
        **{k: s[k] for k in ("mre", "sd", "median", "iqr", "p95", "missed", "n")},
        "sdr": {f"{t:g}": s[metrics.sdr_key(t)] for t in thresholds},
        "per_image": {
            "images": [n for r in reports for n in r["per_image"]["images"]],
            "landmarks": first["per_image"]["landmarks"],
            "errors": errors,
        },
    }


def cmd_sweep(inv: Invocation) -> int:
    from lmjax import sweep
    from lmjax.train import folds, setup
    from lmjax.train.trainers import trainer_for

    if not inv.value("workdir"):
        raise UsageError("--workdir is required")
    try:
        grid = sweep.parse_grid(inv.value("values"))
    except sweep.SweepError as e:
        raise UsageError(str(e)) from e
    options = {
        "extractor": inv.value("extractor"),
        "sdr_mm": sdr_radii(inv) if inv.present("sdr_mm") else None,
    }

    def train_and_evaluate(config, run_dir: pathlib.Path) -> dict:
        trainer = trainer_for(config)
        if folds.cv_enabled(config) and config.data.cv_fold < 0:
            done = folds.run_folds(
                config,
                run_dir,
                setup.load_config_dataset(config),
                trainer.train,
                lambda d, out: _evaluate_workdir(str(d), None, out, **options),
            )
            if "stopped_by" in done:
                return done
            n = done["n_folds"]
            return _pooled(
                [json.loads((run_dir / f"fold_{i}" / "eval.json").read_text()) for i in range(n)]
            )
        if trainer.train(config, run_dir).get("stopped_by"):
            return {"stopped_by": "SIGTERM"}
        out = str(run_dir / "eval.json")
        return _evaluate_workdir(str(run_dir), inv.value("split"), out, **options)

    try:
        result = sweep.run_sweep(inv.config, inv.value("workdir"), grid, train_and_evaluate)
    except sweep.SweepError as e:
        raise UsageError(str(e)) from e
    if "stopped_by" in result:
        print(f"sweep stopped at {result['setting']}; run the same command to resume")
        return 0
    print(sweep.format_sweep(result))
    print(f"wrote {pathlib.Path(inv.value('workdir')) / 'sweep.json'}")
    return 0
