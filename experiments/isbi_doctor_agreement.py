"""How far apart are the two ISBI 2015 doctors on the eight clinical measurements?

Computes ANB, SNB, SNA, ODI, APDI, FHI, FMA and MW (`lmjax.measurements`, with the
challenge's classes) from the senior and from the junior doctor's landmarks on
train + test1 (300 images), and scores the junior against the senior: median
absolute difference and IQR per measurement, and class agreement (accuracy, macro
F1, chance agreement from the class frequencies, Cohen's kappa) per classification.
This is the reference point for a detector: agreeing with the senior doctor better
than the junior does is not to be expected.

Reads `$LMJAX_DATA/isbi2015`, else `../shared/data/isbi2015` beside the checkout.
Writes experiments/results/isbi_doctor_agreement.{json,md}.

    python experiments/isbi_doctor_agreement.py
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
from collections import Counter

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmjax.data.isbi2015 import load_isbi2015  # noqa: E402
from lmjax.measurements import compare, definitions_for, measure_dataset  # noqa: E402

SPLITS = ("train", "test1")


def data_dir() -> pathlib.Path:
    env = os.environ.get("LMJAX_DATA")
    return pathlib.Path(env) if env else ROOT.parent / "shared" / "data"


def measure(doctor: str, root: pathlib.Path) -> tuple[list[dict], list[str]]:
    ds = load_isbi2015(root / "isbi2015", ground_truth=doctor, splits=SPLITS)
    if ds.errors:
        raise SystemExit(f"{doctor}: " + "; ".join(ds.errors))
    spacing = [r.spacing for r in ds.records]
    names = [r.name for r in ds.records]
    return measure_dataset(ds.landmarks(), spacing, ds.landmark_set, names), [
        r.split for r in ds.records
    ]


def summary(junior: list[dict], senior: list[dict]) -> dict:
    """Per measurement: numbers and classes of junior against senior, compacted."""
    c = compare(junior, senior)
    out = {}
    for name, num in c["measurements"].items():
        cls = c["classifications"][name]
        out[name] = {
            "unit": num["unit"],
            "n": num["n"],
            "median_abs_diff": num["median"],
            "iqr_abs_diff": num["iqr"],
            "mean_abs_diff": num["mae"],
            "accuracy": cls["accuracy"],
            "macro_f1": cls["macro"]["f1"],
            "chance": cls["chance"],
            "kappa": cls["kappa"],
            "per_class_f1": {k: v["f1"] for k, v in cls["per_class"].items()},
            "confusion": {"labels": cls["labels"], "rows_senior_cols_junior": cls["confusion"]},
        }
    return out


def markdown(result: dict) -> str:
    lines = [
        "# ISBI 2015: agreement of the two doctors on the eight clinical measurements",
        "",
        "Junior doctor's landmarks scored against the senior doctor's, train + test1 "
        f"({result['images']} images, 0.1 mm/px). Definitions and classes: "
        f"{result['reference']}; see `lmjax/measurements/cephalometric.py`. Produced by "
        f"`{result['command']}`.",
        "",
        "| measurement | unit | median abs diff | IQR | accuracy | macro F1 | chance | kappa |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["all"].items():
        lines.append(
            f"| {name} | {m['unit']} | {m['median_abs_diff']:.3g} | {m['iqr_abs_diff']:.3g} "
            f"| {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['chance']:.3f} | {m['kappa']:.3f} |"
        )
    lines += ["", "By split (accuracy / macro F1):", "", "| measurement | train | test1 |"]
    lines.append("|---|---|---|")
    for name in result["all"]:
        cells = [
            f"{result[s][name]['accuracy']:.3f} / {result[s][name]['macro_f1']:.3f}" for s in SPLITS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Class counts (senior / junior):", ""]
    for name, counts in result["class_counts"].items():
        s, j = counts["senior"], counts["junior"]
        cells = ", ".join(f"{k} {s.get(k, 0)}/{j.get(k, 0)}" for k in sorted(set(s) | set(j)))
        lines.append(f"- {name}: {cells}")
    lines += [
        "",
        "Chance: the accuracy expected from the two doctors' class frequencies alone; "
        "kappa = (accuracy - chance) / (1 - chance).",
        "",
        f"Machine: {result['machine']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args()
    root = data_dir()
    senior, splits = measure("senior", root)
    junior, _ = measure("junior", root)
    result: dict = {
        "images": len(senior),
        "splits": list(SPLITS),
        "reference_doctor": "senior",
        "reference": definitions_for("isbi2015")[0].reference,
        "command": "python experiments/isbi_doctor_agreement.py",
        "all": summary(junior, senior),
    }
    for s in SPLITS:
        keep = [i for i, sp in enumerate(splits) if sp == s]
        result[s] = summary([junior[i] for i in keep], [senior[i] for i in keep])
    result["class_counts"] = {
        name: {
            doc: dict(sorted(Counter(r["measurements"][name]["class"] for r in res).items()))
            for doc, res in (("senior", senior), ("junior", junior))
        }
        for name in result["all"]
    }
    result["machine"] = (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "isbi_doctor_agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "isbi_doctor_agreement.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
