"""The accelerator suite's report: MFU goals, the port comparison, the Markdown table.

`markdown(result)` renders `suite.json`'s content (experiments/gpu/suite.py writes
both): one table of the train-step rows with their goals, then the input pipeline
and the PyTorch port, then what failed or was retried.
"""

from __future__ import annotations

import math
from typing import Any

from suite_rows import SAM_PROMPTS

# MFU goals on an H100 (bf16 dense peak): published PyTorch figures converted to MFU
# are about 12 % (nnU-Net 2D on an A100) and 24 % (ViTPose-B, of the A100's TF32 peak).
GOALS = {"unet": 0.40, "hrnet": 0.25, "vit_b_lora": 0.55}


def add_goals_and_comparisons(rows: dict[str, dict[str, Any]]) -> None:
    """Adds each goal's verdict (None: no MFU to judge) and the port's comparison."""
    for name, r in rows.items():
        if name in GOALS:
            r["goal_mfu"] = GOALS[name]
            mfu = r.get("mfu") if r["status"] == "ok" else None
            r["goal_pass"] = None if mfu is None else bool(mfu >= GOALS[name])
    t, u = rows.get("torch_unet"), rows.get("unet")
    if t and u and t["status"] == "ok" and u["status"] == "ok":
        t["lmjax_train_images_per_s"] = u["train_images_per_s"]
        t["lmjax_over_torch"] = u["train_images_per_s"] / t["train_images_per_s"]
        peak, flops = u.get("peak_tflops"), u.get("flops_per_image")
        same = t["batch"] == u["batch"] and t["torch_device"] != "cpu"
        # The port runs the same network: XLA's FLOP count of lmjax's step stands for both.
        t["mfu_same_flops"] = (
            flops * t["train_images_per_s"] / (peak * 1e12) if peak and flops and same else None
        )


def _fmt(x, spec: str, none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _gib(b) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f}"


def markdown(result: dict[str, Any]) -> str:
    d, rows = result["device"], result["rows"]
    v = d["versions"]
    peak = (
        f"{d['peak_name']} bf16 dense peak, {d['peak_bf16_tflops']:g} TFLOP/s per device "
        "(`lmjax/hardware.py`); float32 rows use its TF32 column"
        if d["peak_name"]
        else f"none: no peak is known for {d['device_kind']!r}, so MFU is null (`-`)"
        + ("; on CPU MFU is not defined" if d["backend"] == "cpu" else "")
    )
    lines = [
        f"# lmjax accelerator suite: {d['device_kind']} ({d['backend']}), {result['date']}",
        "",
        f"    {result['command']}",
        "",
        f"Mode **{result['mode']}**"
        + (
            " (32x32 inputs, tiny widths, float32, 2 steps: checks that the suite runs; "
            "the numbers are not figures)"
            if result["mode"] == "tiny"
            else " (512x512 inputs, SAM 1024 px, bf16 compute, float32 parameters)"
        )
        + f"; {d['device_count']} device(s); {result['wall_s']:.0f} s in all.",
        "",
        "Versions: " + ", ".join(f"{k} {v[k]}" for k in v) + f". Platform: {d['platform']}.",
        "",
        "MFU = the compiled train step's FLOPs (XLA's cost analysis) x steps/s / peak; "
        f"peak: {peak}.",
        "",
        "## Train steps and inference",
        "",
        "| row | status | model | input | batch | dtype | train img/s | step ms | compile s "
        "| GFLOP/img | TFLOP/s | MFU | goal | pass | peak GiB | infer img/s b1 | b32 |",
        "|" + "---|" * 17,
    ]
    for name in ("unet", "hrnet", "vit_b_lora", "sam_decoder"):
        if name not in rows:
            continue
        r = rows[name]
        goal = f">= {GOALS[name]:.0%}" if name in GOALS else "-"
        verdict = {None: "n/a", True: "pass", False: "FAIL"}[r.get("goal_pass")]
        if r["status"] != "ok":
            lines.append(
                f"| {name} | **{r['status']}** | "
                + " | ".join(["-"] * 10)
                + f" | {goal} | not measured | - | - | - |"
            )
            continue
        size = "x".join(map(str, r["input_size"]))
        flops = None if r["flops_per_image"] is None else r["flops_per_image"] / 1e9
        lines.append(
            f"| {name} | ok | {r['model']} | {size} | {r['batch']} | {r['compute_dtype']} "
            f"| {_fmt(r['train_images_per_s'], '.1f')} | {_fmt(r['step_ms'], '.1f')} "
            f"| {_fmt(r['compile_s'], '.1f')} | {_fmt(flops, '.4g')} "
            f"| {_fmt(r['achieved_tflops'], '.3g')} | {_fmt(r['mfu'], '.1%')} | {goal} "
            f"| {verdict} | {_gib(r['peak_memory_bytes'])} "
            f"| {_fmt(r['infer_b1_images_per_s'], '.1f')} "
            f"| {_fmt(r['infer_b32_images_per_s'], '.1f')} |"
        )
    lines += [
        "",
        "Peak GiB is `memory_stats()['peak_bytes_in_use']` of the row's process after its "
        "train steps (n/a: the backend keeps none). Inference is the eval step on a batch "
        "kept on the device; b1 is one image per device. sam_decoder: its train step at "
        f"K = {SAM_PROMPTS} prompts per image on cached embeddings; b1 is one "
        "image's K prompts decoded, b32 does not apply (the decoder answers one image at a "
        "time); its peak memory includes the image encoder's batch.",
    ]
    if "sam_decoder" in rows and rows["sam_decoder"]["status"] == "ok":
        s = rows["sam_decoder"]
        lines.append(
            f"SAM image encoder: {s['encoder_images_per_s']:.2f} images/s at batch "
            f"{s['encoder_batch']}."
        )
    if "input" in rows:
        r = rows["input"]
        lines += ["", "## Input pipeline", ""]
        if r["status"] != "ok":
            lines.append(f"**{r['status']}**: {r.get('error', '')}")
        else:
            keeps = r["pipeline_images_per_s"] >= r["train_images_per_s"]
            lines += [
                "| input | batch | augmentation | host threads | pipeline alone img/s "
                "| train step img/s (batch on device) | fed step img/s | input wait | verdict |",
                "|" + "---|" * 9,
                f"| {r['dataset']}, {'x'.join(map(str, r['input_size']))} | {r['batch']} "
                f"| {r['augment']} | {r['host_threads']} "
                f"| {r['pipeline_images_per_s']:.1f} | {r['train_images_per_s']:.1f} "
                f"| {r['fed_images_per_s']:.1f} | {r['input_wait_fraction']:.1%} "
                f"| {'the pipeline keeps up' if keeps else 'input-bound'} |",
                "",
                "The unet row's config on the built-in phantom through the training run's "
                "Grain pipeline (decode cache, fit, batch; augmentation in the step): "
                "drained alone, then feeding the compiled step as the training loop does.",
            ]
    if "torch_unet" in rows:
        r = rows["torch_unet"]
        lines += ["", "## PyTorch port (experiments/peer/torch_unet.py)", ""]
        if r["status"] != "ok":
            lines.append(f"**{r['status']}**: {r.get('error', '')}")
        else:
            lines += [
                "| | device | dtype | batch | train img/s | step ms | MFU (XLA's FLOPs) "
                "| peak GiB |",
                "|" + "---|" * 8,
                f"| PyTorch {r['torch_version']} (eager) | {r['torch_device']} "
                f"| {r['compute_dtype']} | {r['batch']} | {r['train_images_per_s']:.1f} "
                f"| {r['step_ms']:.1f} | {_fmt(r.get('mfu_same_flops'), '.1%')} "
                f"| {_gib(r['peak_memory_bytes'])} |",
            ]
            if r.get("lmjax_over_torch") is not None and result["mode"] == "full":
                lines += ["", f"lmjax / PyTorch train images/s: **{r['lmjax_over_torch']:.2f}**."]
    failed = {n: r for n, r in rows.items() if r["status"] != "ok"}
    retried = {n: r for n, r in rows.items() if r.get("attempts")}
    if failed or retried:
        lines += ["", "## Failures and retries", ""]
        for n, r in failed.items():
            lines.append(f"- {n}: {r['status']}: {r.get('error', '').splitlines()[-1][:300]}")
        for n, r in retried.items():
            for a in r["attempts"]:
                lines.append(f"- {n}: out of memory at batch {a['batch']}, retried at half")
    return "\n".join(lines) + "\n"
