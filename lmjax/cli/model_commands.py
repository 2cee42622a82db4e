"""The commands that train and score a model: train, evaluate (benchmark and
compile-check are in throughput_commands)."""

from __future__ import annotations

import pathlib

from absl import flags

from lmjax.cli.data_commands import DATA_FLAGS, define_data_flags, spacing, write_json
from lmjax.cli.framework import Invocation, UsageError

# Fields of a config's own dataset that do not carry over to a --data_dir folder.
_DATASET_SPECIFIC = {"format": "", "image_dir": "", "spacing": ()}


def _evaluate_workdir(
    workdir: str,
    split: str | None,
    output: str | None,
    *,
    data_dir: str | None = None,
    ground_truth: str | None = None,
    anonymizer=None,
    **options,
) -> dict:
    """`options` (`extractor`, `sdr_mm`) go to the trainer's evaluate; those left at
    None are not passed, and one that its evaluate does not take is a usage error.
    `anonymizer` (`lmjax.anonymize.Anonymizer`): image names hashed in the report."""
    import inspect

    from lmjax.train.restore import read_config
    from lmjax.train.trainers import trainer_for_workdir

    evaluate = trainer_for_workdir(workdir).evaluate
    options = {key: value for key, value in options.items() if value is not None}
    takes = inspect.signature(evaluate).parameters
    for key in options:
        if key not in takes:
            mode = read_config(workdir).task.mode
            raise UsageError(f"--{key} does not apply to task.mode {mode!r} runs")
    report = evaluate(workdir, split=split, data_dir=data_dir, ground_truth=ground_truth, **options)
    report["provenance"] = _provenance(workdir, report)
    if anonymizer is not None:
        from lmjax.anonymize import anonymize_report

        report = anonymize_report(report, anonymizer)
    write_json(report, output)
    return report


def _provenance(workdir: str, report: dict) -> dict:
    """The run behind a report (`lmjax.provenance.run`): the evaluated checkpoint and,
    when the report's errors are the refined ones, the refinement stage."""
    from lmjax import provenance

    stages = tuple(report.get("stages", {}))  # ("global", "refine") after refinement
    return provenance.run(workdir, report.get("checkpoint_step"), stages=stages)


def define_output(fv: flags.FlagValues, what: str) -> None:
    flags.DEFINE_string("output", None, f"also write {what} as JSON to this file", flag_values=fv)


# ---------------------------------------------------------------- train


def define_train(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir",
        None,
        "the run's folder (checkpoints, logs, eval.json); an existing run resumes; "
        "default: a new temporary folder",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "allow_config_change", [], "config fields (or sections) a resume may change", flag_values=fv
    )
    define_data_flags(
        fv,
        "train on this dataset folder or annotation file (config.data.data_dir); its "
        "landmarks and spacing come from the data, and the config's format, image_dir "
        "and spacing are not used unless given too; default: the config's dataset",
    )


def with_data_flags(config, inv: Invocation):
    """`config` with the data flags given on the command line in `config.data`."""
    from lmjax import configs

    given = {name: inv.value(name) for name in DATA_FLAGS if inv.present(name)}
    if not given:
        return config
    if "spacing" in given:
        given["spacing"] = spacing(inv)
    raw = config.to_dict()
    if "data_dir" in given:
        overridden = {o.partition("=")[0].removeprefix("config.") for o in inv.overrides}
        for name, empty in _DATASET_SPECIFIC.items():
            if f"data.{name}" not in overridden:
                raw["data"][name] = empty
    raw["data"].update(given)
    return configs.resolve(raw, source="--data_dir")


def cross_validate(config, workdir, **options) -> dict:
    """Every fold trained and evaluated (`lmjax.train.folds.run_folds`), `options` as
    `_evaluate_workdir`'s; the summary, or `{"stopped_by": ...}`."""
    from lmjax.train import folds, setup
    from lmjax.train.trainers import trainer_for

    return folds.run_folds(
        config,
        workdir,
        setup.load_config_dataset(config),
        trainer_for(config).train,
        lambda fold_dir, out: _evaluate_workdir(str(fold_dir), None, out, **options),
    )


def cmd_train(inv: Invocation) -> int:
    import tempfile

    from lmjax.train import config_change, folds
    from lmjax.train.trainers import trainer_for

    config = with_data_flags(inv.config, inv)
    trainer = trainer_for(config)
    allowed = inv.value("allow_config_change")
    config_change.check_applies(allowed, config, trainer.train, folds.cv_enabled(config))
    workdir = inv.value("workdir") or tempfile.mkdtemp(prefix="lmjax_")
    data = config.data.data_dir or "the phantom"
    print(f"training {config.model.name} on {data} into {workdir}")
    if config.train.tensorboard:  # each run (and fold) writes <its workdir>/tensorboard
        print(
            f"TensorBoard logs go under {workdir}; to watch them: "
            f"tensorboard --logdir {workdir}  (pip install tensorboard), then http://localhost:6006"
        )
    if folds.cv_enabled(config) and config.data.cv_fold < 0:
        summary = cross_validate(config, workdir)
        if "stopped_by" not in summary:
            print(
                f"cross-validation over {summary['n_folds']} folds: MRE "
                f"{summary['mre_mean']:.3f} +- {summary['mre_sd']:.3f} {summary['unit']} "
                f"(pooled {summary['pooled_mre']:.3f}); {workdir}/cv_summary.json"
            )
            if "final" in summary:
                f = summary["final"]
                print(f"final model on {f.get('split')}: MRE {f['mre']:.3f} {summary['unit']}")
        return 0
    if trainer.train(config, workdir, **({"allow_config_change": allowed} if allowed else {})).get(
        "stopped_by"
    ):
        return 0
    if config.refine.enabled:  # the local stage trains on the finished global model
        from lmjax.train.refine import train_refine

        train_refine(workdir)
    from lmjax.train.calibration import after_training

    after_training(workdir)  # shape model; conformal radii with data.calib_fraction > 0
    # The workdir's config.json names the data trained on; evaluation reads it there.
    report = _evaluate_workdir(workdir, None, str(pathlib.Path(workdir) / "eval.json"))
    print(f"MRE {report['mre']:.3f} {report['unit']} on {report['split']}; outputs in {workdir}")
    return 0


# ---------------------------------------------------------------- evaluate


def define_evaluated_run(fv: flags.FlagValues) -> None:
    """The flags naming a trained run and the split and annotations it is scored on."""
    flags.DEFINE_string("workdir", None, "the trained run's folder (required)", flag_values=fv)
    flags.DEFINE_string(
        "data_dir",
        None,
        "evaluate on this dataset folder instead of the one trained on",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "split",
        None,
        "split to evaluate; default: test if the data has it, else val",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "ground_truth",
        None,
        ["senior", "junior", "mean"],
        "ISBI 2015 annotations to compare with; default: those trained on",
        flag_values=fv,
    )


def define_evaluate(fv: flags.FlagValues) -> None:
    define_evaluated_run(fv)
    flags.DEFINE_string(
        "extractor",
        None,
        "read the model's maps with this extractor instead of the configured one (the "
        "lower-limb paper's Methods 1-5: centroid, largest_component, midpoint, "
        "threshold_opening, max_cluster; or probability_centroid, hard_argmax, ...), or "
        "all: every one of them on the same maps, compared as the paper's Table 3",
        flag_values=fv,
    )
    from lmjax.metrics import DEFAULT_THRESHOLDS

    flags.DEFINE_list(
        "sdr_mm",
        [f"{t:g}" for t in DEFAULT_THRESHOLDS],
        "radii of the success detection rates, in mm (pixels when a spacing is unknown)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "refine",
        None,
        "apply the run's refinement stage (WORKDIR/refine) when it has one; "
        "--norefine: the global model alone (default: refine)",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "tta_scales",
        None,
        "multi-scale TTA: also read the input zoomed by these factors (e.g. 0.9,1.1) and "
        "average; replaces the config's train.tta_scales",
        flag_values=fv,
    )
    define_output(fv, "the report (every error per image and landmark)")
    flags.DEFINE_string("report", None, "also write it as lmjax report's HTML page", flag_values=fv)
    define_anonymize(fv, "the report's image names")


def sdr_radii(inv: Invocation) -> tuple[float, ...]:
    """`--sdr_mm` as positive finite floats."""
    import math

    values = inv.value("sdr_mm") or []
    radii = []
    for value in values:
        try:
            radius = float(value)
        except ValueError:
            radius = math.nan
        if not (math.isfinite(radius) and radius > 0):
            raise UsageError(f"--sdr_mm needs positive distances in mm, got {value!r}")
        radii.append(radius)
    if not radii:
        raise UsageError("--sdr_mm needs at least one distance in mm")
    return tuple(radii)


def tta_scales(inv: Invocation) -> tuple[float, ...] | None:
    """`--tta_scales` checked, or None when not given."""
    if not inv.present("tta_scales"):
        return None
    from lmjax.tta import check_scales

    try:
        return check_scales(inv.value("tta_scales") or [])
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def cmd_evaluate(inv: Invocation) -> int:
    if not inv.value("workdir"):
        raise UsageError("--workdir is required")
    radii = sdr_radii(inv)
    extractor = inv.value("extractor")
    if extractor is not None:
        from lmjax.extractor_table import known_extractors

        if extractor not in known_extractors():
            raise UsageError(
                f"--extractor={extractor}: unknown; known: {', '.join(known_extractors())}"
            )
    report = _evaluate_workdir(
        inv.value("workdir"),
        inv.value("split"),
        inv.value("output"),
        data_dir=inv.value("data_dir"),
        ground_truth=inv.value("ground_truth"),
        extractor=extractor,
        # Only a changed list is passed: trainers that fix their radii still run.
        sdr_mm=radii if inv.present("sdr_mm") else None,
        refine=inv.value("refine"),
        tta_scales=tta_scales(inv),
        anonymizer=_anonymizer(inv),
    )
    if inv.value("report"):
        from lmjax.report import write_report

        data = {"data_dir": inv.value("data_dir"), "ground_truth": inv.value("ground_truth")}
        print(f"wrote {write_report(inv.value('workdir'), report, inv.value('report'), **data)}")
    return 0


def _anonymizer(inv: Invocation):
    """`--anonymize_names` with its salt, or None."""
    if not inv.value("anonymize_names"):
        if inv.value("anonymize_salt"):
            raise UsageError("--anonymize_salt goes with --anonymize_names")
        return None
    from lmjax.anonymize import Anonymizer

    return Anonymizer(inv.value("anonymize_salt"))


def define_anonymize(fv: flags.FlagValues, what: str) -> None:
    flags.DEFINE_bool(
        "anonymize_names",
        False,
        "replace input file names by a salted hash of each, since file and folder names "
        f"often identify patients (lmjax.anonymize): {what}",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "anonymize_salt",
        None,
        "the salt of --anonymize_names (default: random for each job and never written; "
        "the same salt gives the same names)",
        flag_values=fv,
    )
