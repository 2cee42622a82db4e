"""The `lmjax` command: `lmjax COMMAND [--flag=value ...]`.

Flags are absl flags shared by all commands; each command reads the ones it
needs. Mistakes in the input end with one line naming the problem, not a
traceback.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import warnings

import jax
from absl import app, flags
from ml_collections import config_flags

from lmjax import parallel
from lmjax.data.types import LandmarkDataError

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder or file; default: the phantom.")
_FORMAT = flags.DEFINE_enum(
    "format",
    None,
    ["phantom", "isbi2015", "labelme", "csv", "coco", "dicom", "images"],
    "Annotation format; detected from the folder when not given.",
)
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "Image folder for LabelMe, CSV and COCO.")
_GROUND_TRUTH = flags.DEFINE_enum(
    "ground_truth", "senior", ["senior", "junior", "mean"], "ISBI 2015 ground truth."
)
_SPACING = flags.DEFINE_list("spacing", None, "row_mm,col_mm for every image (overrides files).")
_STRICT = flags.DEFINE_bool("strict", False, "Duplicated LabelMe labels are errors.")
_READ_IMAGES = flags.DEFINE_bool("read_images", True, "inspect: decode every image.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the result as JSON to this file.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "predict/preview: output folder (preview default: lmjax_preview)."
)
_FLIP_TTA = flags.DEFINE_bool("flip_tta", False, "predict: average with the mirrored image.")
_AUGMENT = flags.DEFINE_string("augment", "default", "preview: augmentation preset.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 256, "preview: model input side in pixels.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "preview: how many augmented samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(pathlib.Path(__file__).parent / "configs" / "phantom.py"),
    "train: a config file (`get_config(arg)`), as PATH[:ARG]; default: the phantom U-Net.",
    lock_config=True,
)
_STEPS = flags.DEFINE_integer("steps", 20, "benchmark: timed steps after warm-up.")
_DATA = flags.DEFINE_enum(
    "data", "fake", ["fake", "real"], "benchmark: also time the training input pipeline (real)."
)
_INFER_BATCH = flags.DEFINE_integer("infer_batch", 32, "benchmark: inference throughput batch.")
_WORKDIR = flags.DEFINE_string("workdir", None, "train/evaluate: the run's folder.")
_SPLIT = flags.DEFINE_string("split", None, "evaluate: split to evaluate (default: test).")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    os.environ.get("LMJAX_COMPILATION_CACHE", ""),
    "train/evaluate/predict/benchmark/compile-check: JAX's persistent compilation cache "
    "folder, so a later run loads compiled steps instead of compiling; default "
    "$LMJAX_COMPILATION_CACHE, empty: off.",
)
_DEVICES = flags.DEFINE_integer(
    "devices",
    None,
    "compile-check: devices of the mesh; on the CPU backend that many (fake) CPU "
    "devices, elsewhere it must equal the device count. Default: all devices.",
)
_DEVICE_MEMORY_GB = flags.DEFINE_float(
    "device_memory_gb",
    None,
    "compile-check: memory of one device in GiB for the fits verdict; default: what "
    "the runtime reports (nothing on CPU).",
)

USAGE = """usage: lmjax COMMAND [--flag=value ...]

commands:
  train     train (or resume) a model; with no flags, the phantom U-Net in a temp folder
            lmjax train [--config=PATH[:ARG]] [--workdir=DIR] [--config.FIELD=VALUE ...]
  evaluate  errors in mm of a trained model on a split, in the original image frame
            lmjax evaluate --workdir=DIR [--data_dir=DIR] [--split=NAME]
                           [--ground_truth=senior|junior|mean] [--output=FILE.json]
  predict   landmarks (JSON, overlay PNG, LabelMe file) for DICOM or image files
            lmjax predict --workdir=DIR --output_dir=DIR INPUT [INPUT ...]
  benchmark train-step and inference throughput, MFU, memory, input-pipeline wait
            lmjax benchmark [--config=PATH[:ARG]] [--steps=N] [--data=fake|real]
                            [--infer_batch=N] [--output=FILE.json]
  compile-check  compile the train step for the mesh and global batch without running
            it: compile time, XLA's per-device memory, FLOPs, whether it fits (exit 1: no)
            lmjax compile-check [--config=PATH[:ARG]] [--config.FIELD=VALUE ...]
                                [--devices=N] [--device_memory_gb=G] [--output=FILE.json]
  inspect   read a dataset folder as training would and summarise it
            lmjax inspect --data_dir=DIR [--format=...] [--output=FILE.json]
  preview   run the input pipeline with augmentation and write an image grid
            lmjax preview [--data_dir=DIR] [--augment=PRESET] [--output_dir=DIR]
  measure   clinical measurements and classes from annotation files
            lmjax measure --data_dir=DIR [--format=...] [--output=FILE.json|FILE.csv]
  compare   evaluation reports side by side, Wilcoxon signed-rank tests on paired errors
            lmjax compare A.json B.json [...] [--output=FILE.json]

train, evaluate, predict, benchmark and compile-check take
--compilation_cache_dir=DIR (default $LMJAX_COMPILATION_CACHE): compiled programs are
kept there and reused by later runs.

`lmjax COMMAND --helpfull` lists every flag."""


def _load():
    from lmjax.data.datasets import load_dataset

    spacing = None
    if _SPACING.value:
        if len(_SPACING.value) != 2:
            raise LandmarkDataError(f"--spacing needs row_mm,col_mm, got {_SPACING.value}")
        spacing = tuple(float(v) for v in _SPACING.value)
    return load_dataset(
        _DATA_DIR.value,
        format=_FORMAT.value,
        ground_truth=_GROUND_TRUTH.value,
        image_dir=_IMAGE_DIR.value,
        spacing=spacing,
        strict=_STRICT.value,
        seed=_SEED.value,
    )


def _write_json(obj, path: str | None):
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(obj, indent=2))
        print(f"wrote {path}")


def cmd_inspect():
    from lmjax.data.inspect import format_summary, summarize

    summary = summarize(_load(), read_images=_READ_IMAGES.value)
    print(format_summary(summary))
    _write_json(summary, _OUTPUT.value)
    return 1 if summary["errors"] else 0


def cmd_preview():
    from lmjax.data.preview import write_preview

    paths = write_preview(
        _load(),
        output_dir=_OUTPUT_DIR.value or "lmjax_preview",
        augment=_AUGMENT.value,
        input_size=_INPUT_SIZE.value,
        num_images=_NUM_IMAGES.value,
        seed=_SEED.value,
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_measure():
    import csv

    from lmjax.measurements.report import measure_dataset, to_csv_rows

    ds = _load()
    spacing = ds.spacings()
    results = measure_dataset(
        ds.landmarks(), spacing, ds.landmark_set, [r.name for r in ds.records]
    )
    names = sorted({n for r in results for n in r["measurements"]})
    if not names:
        raise LandmarkDataError(
            f"no measurement is defined for landmark set {ds.landmark_set.name!r} "
            f"({', '.join(ds.landmark_set.names[:5])}...)"
        )
    for r in results:
        cells = []
        for name, m in r["measurements"].items():
            value = "-" if m["value"] is None else f"{m['value']:.2f}"
            cells.append(f"{name}={value}{'' if m['class'] is None else ' ' + str(m['class'])}")
        print(f"{r['image']}: {', '.join(cells)}")
    out = _OUTPUT.value
    if out and out.lower().endswith(".csv"):
        rows = to_csv_rows(results)
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {out}")
    else:
        _write_json({"dataset": ds.name, "images": results}, out)
    return 0


def _evaluate_workdir(workdir: str, split: str | None, output: str | None) -> dict:
    from lmjax.evaluate import format_report, measurement_report
    from lmjax.train import loop

    config, mesh, state, eval_step = loop.restore_trained(workdir)
    with config.unlocked():
        if _DATA_DIR.present:
            config.data.data_dir = _DATA_DIR.value
        if _GROUND_TRUTH.present:
            config.data.ground_truth = _GROUND_TRUTH.value
    _, val, test = loop.load_splits(config)
    name = split or (config.data.test_split if test is not None else config.data.val_split)
    if name == config.data.val_split:
        dataset = val
    elif test is not None and name == config.data.test_split:
        dataset = test
    else:
        dataset = loop.load_config_dataset(config).split(name)
    trained = loop.load_landmark_set(workdir, config)
    if dataset.landmark_set.num_landmarks != trained.num_landmarks:
        raise LandmarkDataError(
            f"the data has {dataset.landmark_set.num_landmarks} landmarks, the model "
            f"{trained.num_landmarks}"
        )
    report, coords, _ = loop.evaluate_state(config, eval_step, mesh, state, dataset)
    measurements = measurement_report(coords, dataset)
    if measurements is not None:
        report["measurements"] = measurements
    segmentation = loop.segmentation_report(config, eval_step, mesh, state, dataset)
    if segmentation is not None:
        report["segmentation"] = segmentation
    report = {
        "split": name,
        "ground_truth": config.data.ground_truth,
        "model": config.model.name,
        "checkpoint_step": int(state.step),
        **report,
    }
    print(f"{dataset.name} {name}  ({config.model.name}, step {int(state.step)})")
    print(format_report(report))
    for mname, m in report.get("measurements", {}).get("classifications", {}).items():
        if m.get("n"):
            print(f"{mname}: class accuracy {m['accuracy']:.3f}  macro F1 {m['macro']['f1']:.3f}")
    _write_json(report, output)
    return report


def cmd_train():
    import tempfile

    from lmjax.train import folds, loop

    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="lmjax_")
    config = _CONFIG.value
    print(f"training {config.model.name} into {workdir}")
    if folds.cv_enabled(config) and config.data.get("cv_fold", -1) < 0:
        summary = folds.run_folds(
            config,
            workdir,
            loop.train,
            lambda fold_dir, out: _evaluate_workdir(str(fold_dir), None, out),
        )
        if "stopped_by" not in summary:
            print(
                f"cross-validation over {summary['n_folds']} folds: MRE "
                f"{summary['mre_mean']:.3f} +- {summary['mre_sd']:.3f} {summary['unit']} "
                f"(pooled {summary['pooled_mre']:.3f}); {workdir}/cv_summary.json"
            )
        return 0
    if loop.train(config, workdir).get("stopped_by"):
        return 0
    report = _evaluate_workdir(workdir, None, str(pathlib.Path(workdir) / "eval.json"))
    print(f"MRE {report['mre']:.3f} {report['unit']} on {report['split']}; outputs in {workdir}")
    return 0


def cmd_predict(inputs: list[str]):
    from lmjax.predict import run_predict

    if not _WORKDIR.value or not _OUTPUT_DIR.value:
        raise LandmarkDataError("--workdir and --output_dir are required")
    if not inputs:
        raise LandmarkDataError("name at least one image file or folder to predict")
    results = run_predict(_WORKDIR.value, inputs, _OUTPUT_DIR.value, flip_tta=_FLIP_TTA.value)
    written = sum("error" not in r for r in results)
    print(f"wrote {written} of {len(results)} predictions to {_OUTPUT_DIR.value}")
    return 0


def cmd_benchmark():
    from lmjax.benchmark import benchmark, format_benchmark

    result = benchmark(
        _CONFIG.value, steps=_STEPS.value, data=_DATA.value, infer_batch=_INFER_BATCH.value
    )
    print(format_benchmark(result))
    _write_json(result, _OUTPUT.value)
    return 0


def cmd_compile_check():
    from lmjax.compilation import compile_check, format_compile_check

    devices = _DEVICES.value
    if devices is not None:
        if devices < 1:
            raise ValueError(f"--devices must be at least 1, got {devices}")
        # Only the CPU backend makes devices, and only before it starts, which
        # jax.device_count() below does.
        jax.config.update("jax_num_cpu_devices", devices)
        if jax.device_count() != devices:
            raise ValueError(
                f"--devices={devices}, but the {jax.default_backend()} backend has "
                f"{jax.device_count()} devices; JAX_PLATFORMS=cpu checks {devices} "
                "fake CPU devices"
            )
    result = compile_check(_CONFIG.value, device_memory_gb=_DEVICE_MEMORY_GB.value)
    print(format_compile_check(result))
    _write_json(result, _OUTPUT.value)
    return 0 if result["fits"] is not False else 1


def cmd_compare(reports: list[str]):
    from lmjax.compare import compare_reports, format_comparison

    result = compare_reports(reports)
    print(format_comparison(result))
    _write_json(result, _OUTPUT.value)
    return 0


def cmd_evaluate():
    if not _WORKDIR.value:
        raise LandmarkDataError("--workdir is required")
    _evaluate_workdir(_WORKDIR.value, _SPLIT.value, _OUTPUT.value)
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "benchmark": cmd_benchmark,
    "compile-check": cmd_compile_check,
    "inspect": cmd_inspect,
    "preview": cmd_preview,
    "measure": cmd_measure,
    "compare": cmd_compare,
}
POSITIONAL = ("predict", "compare")  # commands that take file arguments
COMPILING = ("train", "evaluate", "predict", "benchmark", "compile-check")


def _main(command: str, argv: list[str]) -> int:
    if len(argv) > 1 and command not in POSITIONAL:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        with warnings.catch_warnings():
            # Data problems are listed by the command itself, once.
            warnings.simplefilter("ignore", UserWarning)
            parallel.initialize()  # before any JAX backend use; no-op for one process
            if command in COMPILING and _COMPILATION_CACHE_DIR.value:
                from lmjax.compilation import enable_persistent_cache

                # Before the first compile: JAX opens the cache once per process.
                enable_persistent_cache(_COMPILATION_CACHE_DIR.value)
            if command in POSITIONAL:
                return COMMANDS[command](argv[1:])
            return COMMANDS[command]()
    except (LandmarkDataError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"lmjax {command}: error: {e}", file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"lmjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    app.run(lambda a: _main(command, a), argv=[f"lmjax {command}", *argv[2:]])


if __name__ == "__main__":
    run()
