"""The command that writes an evaluation as one self-contained HTML page: report."""

from __future__ import annotations

from absl import flags

from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import define_anonymize


def define_report(fv: flags.FlagValues) -> None:
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
    flags.DEFINE_string("output", "report.html", "the HTML file to write", flag_values=fv)
    flags.DEFINE_string(
        "json", None, "also write the evaluation report as JSON to this file", flag_values=fv
    )
    define_anonymize(fv, "the image names of the page and of --json")


def cmd_report(inv: Invocation) -> int:
    from lmjax.cli.model_commands import _anonymizer, _evaluate_workdir
    from lmjax.report import write_report

    workdir = inv.value("workdir")
    if not workdir:
        raise UsageError("--workdir is required")
    if not inv.value("output"):
        raise UsageError("--output needs a file name")
    common = {"data_dir": inv.value("data_dir"), "ground_truth": inv.value("ground_truth")}
    report = _evaluate_workdir(
        workdir, inv.value("split"), inv.value("json"), anonymizer=_anonymizer(inv), **common
    )
    path = write_report(
        workdir, report, inv.value("output"), anonymize=inv.value("anonymize_names"), **common
    )
    if path.is_file():  # process 0's
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
