"""Table of the zoo's test1 results: one row per run folder beside this file.

python experiments/results/isbi2015_zoo_cpu/summarize.py
"""

import json
import pathlib

HERE = pathlib.Path(__file__).parent


def _val_mre(folder: pathlib.Path) -> str:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return ""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return ", ".join(f"{r['step']}: {r['val']['mre']:.1f}" for r in rows if "val" in r)


def main() -> None:
    columns = "run, model, step, MRE mm, SD, median, SDR 2 / 2.5 / 3 / 4 mm (%), missed, IoU, "
    columns += "val MRE"
    print("| " + " | ".join(columns.split(", ")) + " |")
    print("|---" * len(columns.split(", ")) + "|")
    for folder in sorted(p for p in HERE.iterdir() if (p / "test1_senior.json").exists()):
        r = json.loads((folder / "test1_senior.json").read_text())
        sdr = " / ".join(f"{r['sdr'][k]:.1f}" for k in ("2", "2.5", "3", "4"))
        total = r["n"] + r["missed"]
        iou = f"{r['segmentation']['iou']:.3f}" if "segmentation" in r else "-"
        print(
            f"| `{folder.name}` | {r['model']} | {r['checkpoint_step']} | {r['mre']:.2f} | "
            f"{r['sd']:.2f} | {r['median']:.2f} | {sdr} | {r['missed']} of {total} | {iou} | "
            f"{_val_mre(folder)} |"
        )


if __name__ == "__main__":
    main()
