"""The command table, the one source of each command's synopsis, help and flags, and
the entry point."""

from __future__ import annotations

import difflib
import sys

from lmjax.cli import convert_command as convert
from lmjax.cli import data_commands as data
from lmjax.cli import export_command as export
from lmjax.cli import model_commands as model
from lmjax.cli import predict_command as predict
from lmjax.cli import refine_command as refine
from lmjax.cli import report_command as report
from lmjax.cli import sweep_command as sweep
from lmjax.cli import throughput_commands as throughput
from lmjax.cli.framework import EXIT_OK, EXIT_USAGE, Command, execute, format_usage

_TABLE = [
    Command(
        "train",
        "lmjax train [--config=PATH[:ARG]] [--config.FIELD=VALUE ...] [--workdir=DIR] "
        "[--data_dir=PATH] [--format=NAME] [--image_dir=DIR] [--spacing=ROW_MM,COL_MM] "
        "[--allow_config_change=FIELD,...]",
        "train (or resume) a model on a dataset folder or the phantom, then evaluate it",
        model.define_train,
        model.cmd_train,
        config=True,
        device=True,
    ),
    Command(
        "evaluate",
        "lmjax evaluate --workdir=DIR [--data_dir=PATH] [--split=NAME] "
        "[--ground_truth=senior|junior|mean] [--extractor=NAME|all] [--sdr_mm=MM,...] "
        "[--norefine] [--tta_scales=S,...] [--output=FILE.json] [--report=FILE.html]",
        "errors in mm of a trained model on a split, in the original image frame",
        model.define_evaluate,
        model.cmd_evaluate,
        device=True,
        cache_by_default=True,
    ),
    Command(
        "report",
        "lmjax report --workdir=DIR [--data_dir=PATH] [--split=NAME] "
        "[--ground_truth=senior|junior|mean] [--output=FILE.html] [--json=FILE.json]",
        "an evaluation as one self-contained HTML page: tables, plots, classes, image gallery",
        report.define_report,
        report.cmd_report,
        device=True,
        cache_by_default=True,
    ),
    Command(
        "calibrate",
        "lmjax calibrate --workdir=DIR [--output=FILE.json]",
        "conformal landmark radii on the run's calibration split, and its shape model",
        predict.define_calibrate,
        predict.cmd_calibrate,
        device=True,
        cache_by_default=True,
    ),
    Command(
        "refine",
        "lmjax refine --workdir=DIR [--config.refine.FIELD=VALUE ...] [--noevaluate]",
        "train the coarse-to-fine refinement stage of a finished run into WORKDIR/refine",
        refine.define_refine,
        refine.cmd_refine,
        config=True,
        device=True,
    ),
    Command(
        "sweep",
        "lmjax sweep --workdir=DIR --values=FIELD=V1,V2,... [--values=...] "
        "[--config=PATH[:ARG]] [--config.FIELD=VALUE ...] [--split=NAME] "
        "[--extractor=NAME|all] [--sdr_mm=MM,...]",
        "train and evaluate a config at every value of a grid (e.g. mask radii, in px or mm)",
        sweep.define_sweep,
        sweep.cmd_sweep,
        config=True,
        device=True,
    ),
    Command(
        "predict",
        "lmjax predict (--workdir=DIR | --model=FILE) --output_dir=DIR [--flip_tta] "
        "[--tta_scales=S,...] "
        "[--review] [--skip_existing] [--nooverlays] [--anonymize_names [--anonymize_salt=S] "
        "[--name_map=FILE.csv]] INPUT [INPUT ...]",
        "landmarks (JSON, overlay PNG, LabelMe file) for DICOM or image files and folders",
        predict.define_predict,
        predict.cmd_predict,
        positional=True,
        device=True,
        cache_by_default=True,
    ),
    Command(
        "export",
        "lmjax export --workdir=DIR --output=FILE.lmjax [--format=stablehlo|onnx] "
        "[--flip_tta] [--tta_scales=S,...] [--norefine] [--platforms=cpu,cuda]",
        "a trained run as one file (program, preprocessing, landmarks, provenance) "
        "for predict --model",
        export.define_export,
        export.cmd_export,
        device=True,
    ),
    Command(
        "benchmark",
        "lmjax benchmark [--config=PATH[:ARG]] [--config.FIELD=VALUE ...] [--steps=N] "
        "[--data=fake|real] [--infer_batch=N] [--output=FILE.json]",
        "train-step and inference throughput, MFU, memory, input-pipeline wait",
        throughput.define_benchmark,
        throughput.cmd_benchmark,
        config=True,
        device=True,
    ),
    Command(
        "compile-check",
        "lmjax compile-check [--config=PATH[:ARG]] [--config.FIELD=VALUE ...] [--devices=N] "
        "[--device_memory_gb=GB] [--output=FILE.json]",
        "compile the train step without running it: memory per device, FLOPs, whether it fits",
        throughput.define_compile_check,
        throughput.cmd_compile_check,
        config=True,
        device=True,
    ),
    Command(
        "inspect",
        "lmjax inspect --data_dir=PATH [--format=NAME] [--output=FILE.json]",
        "read a dataset as training would and summarise it (exit 1: a file is unusable)",
        data.define_inspect,
        data.cmd_inspect,
    ),
    Command(
        "preview",
        "lmjax preview [--data_dir=PATH] [--augment=PRESET] [--output_dir=DIR]",
        "run the input pipeline with augmentation and write an image grid",
        data.define_preview,
        data.cmd_preview,
    ),
    Command(
        "measure",
        "lmjax measure --data_dir=PATH [--format=...] [--output=FILE.json|FILE.csv]",
        "clinical measurements and classes from annotation files",
        data.define_measure,
        data.cmd_measure,
    ),
    Command(
        "compare",
        "lmjax compare A.json B.json [...] [--alternative=two-sided|less|greater] "
        "[--correction=holm|bonferroni|none] [--misses=penalize|cap|drop] [--error_cap=MM] "
        "[--marks=stars|paper002] [--format=text|markdown] [--resamples=N] [--output=FILE.json]",
        "evaluation reports side by side, Wilcoxon signed-rank tests on paired errors",
        data.define_compare,
        data.cmd_compare,
        positional=True,
    ),
    Command(
        "convert",
        "lmjax convert SRC DST [--layout=auto|original|hf] [--preprocessing=sam|medsam] "
        "[--decoder_heads=N]",
        "a SAM checkpoint (segment_anything, MedSAM or HF) to lmjax safetensors + a JSON sidecar",
        convert.define_convert,
        convert.cmd_convert,
        positional=True,
    ),
]
COMMANDS: dict[str, Command] = {c.name: c for c in _TABLE}


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lmjax")
    except metadata.PackageNotFoundError:
        import lmjax

        return lmjax.__version__


def _unknown(what: str, name: str, known) -> int:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    print(
        f"lmjax: error: unknown {what} {name!r}{hint}\n\n{format_usage(COMMANDS)}", file=sys.stderr
    )
    return EXIT_USAGE


def main(args: list[str]) -> int:
    """Runs `lmjax ARGS...` (without the program name); returns the exit status."""
    if not args:
        print(format_usage(COMMANDS), file=sys.stderr)
        return EXIT_USAGE
    first = args[0]
    if first in ("-h", "--help", "help"):
        if first == "help" and len(args) > 1:
            if args[1] not in COMMANDS:
                return _unknown("command", args[1], COMMANDS)
            return execute(COMMANDS[args[1]], ["--help"])
        print(format_usage(COMMANDS))
        return EXIT_OK
    if first in ("--version", "-V"):
        print(f"lmjax {version()}")
        return EXIT_OK
    if first.startswith("-"):
        print(
            f"lmjax: error: {first}: flags go after the command\n\n{format_usage(COMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if first not in COMMANDS:
        return _unknown("command", first, COMMANDS)
    from lmjax import progress

    # Long loops report (a bar on a terminal, plain lines in logs); library calls do not.
    with progress.shown():
        return execute(COMMANDS[first], args[1:])


def run(argv: list[str] | None = None) -> None:
    """The `lmjax` program: `argv` as `sys.argv` (program name first); exits."""
    argv = list(sys.argv if argv is None else argv)
    sys.exit(main(argv[1:]))
