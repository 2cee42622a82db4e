"""`lmjax sweep`: train and evaluate one config at every value of a grid."""

from __future__ import annotations

import json
import pathlib

from absl import flags

from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import _evaluate_workdir, cross_validate, sdr_radii


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


def cmd_sweep(inv: Invocation) -> int:
    from lmjax import sweep
    from lmjax.train import folds
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
        if folds.cv_enabled(config) and config.data.cv_fold < 0:
            done = cross_validate(config, run_dir, **options)
            if "stopped_by" in done:
                return done
            n = done["n_folds"]
            return folds.pooled_report(
                [json.loads((run_dir / f"fold_{i}" / "eval.json").read_text()) for i in range(n)]
            )
        if trainer_for(config).train(config, run_dir).get("stopped_by"):
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
