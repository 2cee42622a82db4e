"""The command that writes an evaluation as one self-contained HTML page: report."""

from __future__ import annotations

from absl import flags

from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import define_anonymize, define_evaluated_run


def define_report(fv: flags.FlagValues) -> None:
    define_evaluated_run(fv)
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
