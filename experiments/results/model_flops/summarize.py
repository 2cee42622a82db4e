"""Table of raw/*.json (`lmjax compile-check` reports) as markdown, on stdout."""

import json
import pathlib

RAW = pathlib.Path(__file__).parent / "raw"


def main() -> None:
    columns = ["run", "model", "parameters (M)", "input", "batch", "compute"]
    columns += ["train-step GFLOP / image", "CPU-compiled memory GiB", "compile s"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for path in sorted(RAW.glob("*.json")):
        r = json.loads(path.read_text())
        flops = r["flops_per_image"]
        print(
            f"| `{path.stem}` | {r['model']} | {r['parameters'] / 1e6:.2f} "
            f"| {r['input_size'][0]}x{r['input_size'][1]} | {r['global_batch']} "
            f"| {r['compute_dtype']} | {'-' if flops is None else f'{flops / 1e9:.1f}'} "
            f"| {r['memory']['total_bytes'] / 2**30:.1f} | {r['compile_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
