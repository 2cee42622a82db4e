"""The `lmjax` command: `lmjax COMMAND [--flag=value ...]`.

Flags are absl flags shared by all commands; each command reads the ones it
needs. Mistakes in the input end with one line naming the problem, not a
traceback.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

from absl import app, flags

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
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "lmjax_preview", "preview: output folder.")
_AUGMENT = flags.DEFINE_string("augment", "default", "preview: augmentation preset.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 256, "preview: model input side in pixels.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "preview: how many augmented samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")

USAGE = """usage: lmjax COMMAND [--flag=value ...]

commands:
  inspect   read a dataset folder as training would and summarise it
            lmjax inspect --data_dir=DIR [--format=...] [--output=FILE.json]
  preview   run the input pipeline with augmentation and write an image grid
            lmjax preview [--data_dir=DIR] [--augment=PRESET] [--output_dir=DIR]
  measure   clinical measurements and classes from annotation files
            lmjax measure --data_dir=DIR [--format=...] [--output=FILE.json|FILE.csv]

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
        output_dir=_OUTPUT_DIR.value,
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

    import numpy as np

    from lmjax.measurements.report import measure_dataset, to_csv_rows

    ds = _load()
    spacing = np.array(
        [r.spacing if r.spacing else (np.nan, np.nan) for r in ds.records], np.float64
    ).reshape(-1, 2)
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


COMMANDS = {"inspect": cmd_inspect, "preview": cmd_preview, "measure": cmd_measure}


def _main(command: str, argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        with warnings.catch_warnings():
            # Data problems are listed by the command itself, once.
            warnings.simplefilter("ignore", UserWarning)
            return COMMANDS[command]()
    except (LandmarkDataError, ValueError, FileNotFoundError) as e:
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
