"""Table of the ablation runs in raw/: median step time per variant over rounds.

python experiments/results/cpu_ablations/summarize.py
"""

import json
import pathlib

import numpy as np

RAW = pathlib.Path(__file__).parent / "raw"
ORDER = ("base", "bf16", "norm_none", "norm_batch", "transpose")
WHAT = {
    "base": "fp32, instance norm, resize (bilinear + 1x1 conv) upsampling",
    "bf16": "bf16 compute (fp32 params)",
    "norm_none": "no normalisation (conv with bias)",
    "norm_batch": "batch norm instead of instance norm",
    "transpose": "transposed-conv (2x2, stride 2) upsampling",
}


def main() -> None:
    runs = {v: sorted(RAW.glob(f"{v}_r*.json")) for v in ORDER}
    base = [json.loads(p.read_text())["step_s_median"] for p in runs["base"]]
    print(
        "| variant | what | step s per round: median (p10-p90) | best p10 s | images/s | vs base | "
        "GFLOP/image | M params | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for v in ORDER:
        rs = [json.loads(p.read_text()) for p in runs[v]]
        if not rs:
            continue
        steps = [r["step_s_median"] for r in rs]
        spread = [
            f"{r['step_s_median']:.2f} ({r['step_s_p10']:.2f}-{r['step_s_p90']:.2f})" for r in rs
        ]
        ratio = [s / b for s, b in zip(steps, base, strict=False)]
        print(
            f"| {v} | {WHAT[v]} | {'; '.join(spread)} | {min(r['step_s_p10'] for r in rs):.2f} | "
            f"{np.median([r['images_per_s'] for r in rs]):.2f} | "
            f"{', '.join(f'{x:.2f}x' for x in ratio)} | "
            f"{rs[0]['flops_per_image'] / 1e9:.2f} | {rs[0]['parameters'] / 1e6:.3f} | "
            f"{', '.join(str(round(r['compile_s'])) for r in rs)} |"
        )


if __name__ == "__main__":
    main()
