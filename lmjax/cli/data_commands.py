"""The commands that read annotations or reports, not models: inspect, preview,
measure, compare; and the dataset flags they share with `train`."""

from __future__ import annotations

import json
import pathlib

from absl import flags

from lmjax.cli.framework import Invocation, UsageError, list_formats

DATA_FLAGS = ("data_dir", "format", "image_dir", "spacing", "ground_truth", "strict")


def define_data_flags(fv: flags.FlagValues, data_dir_help: str) -> None:
    flags.DEFINE_string("data_dir", None, data_dir_help, flag_values=fv)
    flags.DEFINE_enum(
        "format",
        None,
        list_formats(),
        "annotation format; detected from the folder when not given",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "image_dir",
        None,
        "image folder for LabelMe, CSV and COCO; default: beside them",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "spacing",
        None,
        "pixel spacing in mm for every image, over what the files state",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "ground_truth",
        "senior",
        ["senior", "junior", "mean"],
        "ISBI 2015 annotations to use",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "strict", False, "duplicated LabelMe labels are errors, not warnings", flag_values=fv
    )


def spacing(inv: Invocation) -> tuple[float, float] | None:
    """`--spacing` as `(row_mm, col_mm)`, None when not given."""
    values = inv.value("spacing")
    if not values:
        return None
    try:
        if len(values) != 2:
            raise ValueError
        return float(values[0]), float(values[1])
    except ValueError:
        raise UsageError(f"--spacing needs row_mm,col_mm, got {','.join(values)}") from None


def load_data(inv: Invocation):
    """The dataset the data flags name (the phantom without --data_dir)."""
    from lmjax.data.datasets import load_dataset

    return load_dataset(
        inv.value("data_dir"),
        format=inv.value("format"),
        ground_truth=inv.value("ground_truth"),
        image_dir=inv.value("image_dir"),
        spacing=spacing(inv),
        strict=inv.value("strict"),
        seed=inv.value("seed"),
    )


def write_json(obj, path: str | None) -> None:
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(obj, indent=2))
        print(f"wrote {path}")


def _define_read(fv: flags.FlagValues, seed_help: str = "random seed of the phantom") -> None:
    define_data_flags(fv, "dataset folder or annotation file; default: the built-in phantom")
    flags.DEFINE_integer("seed", 0, seed_help, flag_values=fv)


# ---------------------------------------------------------------- inspect


def define_inspect(fv: flags.FlagValues) -> None:
    _define_read(fv)
    flags.DEFINE_bool(
        "read_images", True, "decode every image (--noread_images: headers only)", flag_values=fv
    )
    flags.DEFINE_string(
        "output", None, "also write the summary as JSON to this file", flag_values=fv
    )


def cmd_inspect(inv: Invocation) -> int:
    from lmjax.data.inspect import format_summary, summarize

    summary = summarize(load_data(inv), read_images=inv.value("read_images"))
    print(format_summary(summary))
    write_json(summary, inv.value("output"))
    return 1 if summary["errors"] else 0


# ---------------------------------------------------------------- preview


def define_preview(fv: flags.FlagValues) -> None:
    _define_read(fv, "random seed of the phantom and the augmentation")
    flags.DEFINE_string(
        "augment",
        "default",
        "augmentation preset: default (lmjax's), lower_limb, pelvis, fluoroscopy, medsapiens "
        "(lmjax.data.augment_presets)",
        flag_values=fv,
    )
    flags.DEFINE_integer("input_size", 256, "model input side in pixels", flag_values=fv)
    flags.DEFINE_integer("num_images", 8, "how many augmented samples", flag_values=fv)
    flags.DEFINE_string(
        "output_dir", "lmjax_preview", "where preview.png and preview.json go", flag_values=fv
    )


def cmd_preview(inv: Invocation) -> int:
    from lmjax.data.preview import write_preview

    paths = write_preview(
        load_data(inv),
        output_dir=inv.value("output_dir"),
        augment=inv.value("augment"),
        input_size=inv.value("input_size"),
        num_images=inv.value("num_images"),
        seed=inv.value("seed"),
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


# ---------------------------------------------------------------- measure


def define_measure(fv: flags.FlagValues) -> None:
    _define_read(fv)
    flags.DEFINE_string(
        "output",
        None,
        "also write the results to this file: .csv as a table, else JSON",
        flag_values=fv,
    )


def cmd_measure(inv: Invocation) -> int:
    import csv

    from lmjax.data.types import LandmarkDataError
    from lmjax.measurements.report import measure_dataset, to_csv_rows

    ds = load_data(inv)
    results = measure_dataset(
        ds.landmarks(), ds.spacings(), ds.landmark_set, [r.name for r in ds.records]
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
    out = inv.value("output")
    if out and out.lower().endswith(".csv"):
        rows = to_csv_rows(results)
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {out}")
    else:
        write_json({"dataset": ds.name, "images": results}, out)
    return 0


# ---------------------------------------------------------------- compare


def define_compare(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "output", None, "also write the comparison as JSON to this file", flag_values=fv
    )
    flags.DEFINE_enum(
        "alternative",
        "two-sided",
        ["two-sided", "less", "greater"],
        "less: the model's errors are smaller than the reference's (the first report); "
        "greater: larger",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "correction",
        "holm",
        ["holm", "bonferroni", "none"],
        "multiple-comparison correction, within each family of tests (overall, per "
        "landmark, measurements), each spanning every compared model",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "misses",
        "penalize",
        ["penalize", "cap", "drop"],
        "a pair where one model missed: penalize (a loss for the model that missed), "
        "cap (the miss counts as --error_cap), drop (left out, counted)",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "error_cap",
        None,
        "with --misses=cap: the error a miss counts as, in mm (px)",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "marks",
        "stars",
        ["stars", "paper002"],
        "stars: * ** *** at corrected p < 0.05, 0.01, 0.001; paper002: bold at p < 0.05 "
        "and * + ^ ... per model at p < 0.05/m, as the lower-limb paper",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "format", "text", ["text", "markdown"], "how the tables print", flag_values=fv
    )
    flags.DEFINE_integer(
        "resamples", 10_000, "bootstrap resamples for each effect size's 95% CI", flag_values=fv
    )


def cmd_compare(inv: Invocation) -> int:
    from lmjax.compare import compare_reports, format_comparison

    if inv.value("resamples") < 1:
        raise UsageError("--resamples must be at least 1")
    result = compare_reports(
        inv.args,
        alternative=inv.value("alternative"),
        correction=inv.value("correction"),
        misses=inv.value("misses"),
        error_cap=inv.value("error_cap"),
        marks=inv.value("marks"),
        resamples=inv.value("resamples"),
    )
    print(format_comparison(result, inv.value("format")))
    write_json(result, inv.value("output"))
    return 0
