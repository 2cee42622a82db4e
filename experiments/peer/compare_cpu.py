"""lmjax against a PyTorch port of the same U-Net, on CPU, in one process.

Both sides train the config's model (same weights at the start, same batch, fp32,
same loss with targets rendered inside the step, clipped Adam with the same
schedule). The lmjax side is `lmjax benchmark`'s: `setup.build`, the batch from
`benchmark.fake_batch` placed by `parallel.shard_batch`, and the train step
lowered and compiled ahead of time. After warm-up, training steps are timed in
alternating blocks (lmjax, torch, lmjax, torch, ...) so that background load
falls on both; then inference (the eval step: forward and soft-argmax) at batch 1
and at `--infer_batch`, also alternating.

Writes `<out>/<tag>.json` and `<out>/<tag>.md`.

    pip install torch==2.13.0   # or: pip install -e '.[peer]'
    python experiments/peer/compare_cpu.py --tag baseline
    python experiments/peer/compare_cpu.py --tag ynn_conv \\
        --xla_flags=--xla_cpu_experimental_ynn_fusion_type=individual_convolution

`--xla_flags` is added to XLA_FLAGS before JAX starts (XLA reads it once per process).

`--variants off,auto` builds one lmjax step per `train.cpu_conv_kernels` value and
alternates all of them with torch (before/after under the same load); the last one
is "lmjax" in the ratios. `--no_torch` times only those lmjax variants, for model
families the port lacks (HRNet, VGG U-Net).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "experiments/configs/isbi2015_unet_heatmap.py:cpu"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="PATH[:ARG] of a heatmap U-Net config")
    p.add_argument("--tag", default="baseline", help="name of the result files")
    p.add_argument("--out", default=str(ROOT / "experiments/results/peer_cpu"))
    p.add_argument("--blocks", type=int, default=4, help="training blocks per framework")
    p.add_argument("--block_steps", type=int, default=3, help="timed steps per block")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per framework")
    p.add_argument("--infer_blocks", type=int, default=3)
    p.add_argument("--infer_calls", type=int, default=3, help="timed calls per inference block")
    p.add_argument("--infer_batch", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=0, help="override train.batch_size")
    p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before JAX starts")
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads; 0: keep")
    p.add_argument("--matmul_precision", default="", help="jax_default_matmul_precision")
    p.add_argument(
        "--single_thread",
        action="store_true",
        help="torch 1 thread, XLA without multi-threaded Eigen: CPU time per core",
    )
    p.add_argument(
        "--variants",
        default="",
        help="comma-separated train.cpu_conv_kernels values, one lmjax step each; "
        "empty: the config's",
    )
    p.add_argument("--no_torch", action="store_true", help="lmjax variants only, any model")
    p.add_argument("--note", default="", help="free text stored with the result")
    return p.parse_args(argv)


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("peer_config", ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def machine() -> dict:
    sys.path.insert(0, str(ROOT))
    from lmjax import hardware

    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "bf16_hardware": hardware.cpu_bf16(),
    }


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def median(xs):
    import numpy as np

    return float(np.median(np.asarray(xs)))


def alternate(sides: dict, blocks: int, calls: int) -> dict[str, list[list[tuple[float, float]]]]:
    """Times `calls` calls of each side's function per block, sides taking turns.

    `sides`: name -> zero-argument function that runs one call to completion.
    Returns name -> per-block lists of (wall seconds, process CPU seconds). CPU time
    sums this process's threads, so it counts the work (and any spinning) of a call
    whatever share of the cores other jobs leave it.
    """
    times = {name: [] for name in sides}
    for _ in range(blocks):
        for name, fn in sides.items():
            block = []
            for _ in range(calls):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                block.append((time.perf_counter() - t0, time.process_time() - c0))
            times[name].append(block)
    return times


def summary(blocks: list[list[tuple[float, float]]], images: int) -> dict:
    from lmjax.benchmark import spread

    flat = [t for b in blocks for t, _ in b]
    cpu = [c for b in blocks for _, c in b]
    r = spread(flat, "step_s")
    return r | {
        "images_per_s": images / r["step_s_median"],
        "cpu_s_median": median(cpu),
        "images_per_cpu_s": images / median(cpu),
        "block_medians_s": [median([t for t, _ in b]) for b in blocks],
        "calls": len(flat),
    }


def build_variants(args, config, k: int, host) -> dict[str, dict]:
    """One compiled lmjax train step per `--variants` value (`train.cpu_conv_kernels`),
    as `lmjax benchmark` builds it, each with its own state (same seed, same weights).
    Named `lmjax[<value>]`, the last one `lmjax`."""
    import copy

    from lmjax import benchmark as lb
    from lmjax.train import setup

    modes = [m for m in args.variants.split(",") if m]
    modes = modes or [config.train.get("cpu_conv_kernels", "auto")]
    built = {}
    for i, mode in enumerate(modes):
        c = copy.deepcopy(config)
        with c.unlocked():
            c.train.cpu_conv_kernels = mode
        t0 = time.perf_counter()
        mesh, state, train_step, eval_step, _ = setup.build(c, k)
        batch = lb.to_device(host, mesh)
        step = train_step.lower(state, batch).compile()
        name = "lmjax" if i == len(modes) - 1 else f"lmjax[{mode}]"
        compile_s = time.perf_counter() - t0
        log(f"{name} (cpu_conv_kernels={mode}) built and compiled in {compile_s:.0f} s")
        built[name] = {
            "mode": mode,
            "mesh": mesh,
            "state": state,
            "eval": eval_step,
            "batch": batch,
            "step": step,
            "compile_s": compile_s,
            "holder": {"state": state},
        }
    return built


def runner(b: dict):
    """One train step of a `build_variants` entry, run to completion; its metrics."""
    import jax

    def run():
        b["holder"]["state"], metrics = b["step"](b["holder"]["state"], b["batch"])
        return jax.block_until_ready(metrics)

    return run


def lmjax_only(args, config, k: int, load_start) -> dict:
    """`--no_torch`: the lmjax variants' train steps in alternating blocks."""
    from lmjax import benchmark as lb

    images, hw = config.train.batch_size, tuple(config.data.input_size)
    host = lb.fake_batch(images, hw, k)
    built = build_variants(args, config, k, host)
    sides = {n: runner(b) for n, b in built.items()}
    first = {
        n: {k_: float(v) for k_, v in fn().items() if k_ in ("loss", "grad_norm")}
        for n, fn in sides.items()
    }
    for _ in range(args.warmup - 1):
        for fn in sides.values():
            fn()
    log("timed training blocks")
    train = {
        n: summary(v, images) for n, v in alternate(sides, args.blocks, args.block_steps).items()
    }
    base = next(iter(train))
    result = {
        "tag": args.tag,
        "note": args.note,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "config": args.config,
        "model": config.model.to_dict(),
        "batch": images,
        "input_size": list(hw),
        "machine": machine() | {"loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "versions": lb.versions(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "variants": {n: b["mode"] for n, b in built.items()},
        "compile_s": {n: b["compile_s"] for n, b in built.items()},
        "schedule": {
            "warmup_steps": args.warmup,
            "blocks": args.blocks,
            "block_steps": args.block_steps,
            "order": ", ".join(built) + ", repeated",
        },
        "first_step": first,
        "train": train,
        # base variant's step time / this one's, per round of blocks (> 1: faster).
        "speedup_per_block": {
            n: [
                a / b
                for a, b in zip(train[base]["block_medians_s"], t["block_medians_s"], strict=True)
            ]
            for n, t in train.items()
        },
    }
    md = [
        f"# lmjax train step variants: {args.tag}",
        "",
        f"    {result['command']}",
        "",
        f"Config `{args.config}` (model {config.model.name}), input {hw[0]}x{hw[1]}, "
        f"batch {images}, float32.",
        "",
        "| variant (train.cpu_conv_kernels) | step ms median (p10-p90) | images/s | "
        f"speed-up vs {base}, per block |",
        "|---|---|---|---|",
    ]
    for n, t in train.items():
        sp = result["speedup_per_block"][n]
        md.append(
            f"| {n} ({built[n]['mode']}) | {t['step_s_median'] * 1e3:.0f} "
            f"({t['step_s_p10'] * 1e3:.0f}-{t['step_s_p90'] * 1e3:.0f}) | "
            f"{t['images_per_s']:.2f} | {median(sp):.2f} ({min(sp):.2f}-{max(sp):.2f}) |"
        )
    m = result["machine"]
    md += [
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} cores, shared with other jobs "
        f"(load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end).",
        "",
    ]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{args.tag}.md").write_text("\n".join(md))
    print("\n".join(md))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_start = list(os.getloadavg())
    if args.single_thread:
        args.torch_threads = 1
        args.xla_flags = f"{args.xla_flags} --xla_cpu_multi_thread_eigen=false".strip()
    if args.xla_flags:  # before JAX is imported: XLA reads its flags once
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(pathlib.Path(__file__).parent))

    import jax
    import numpy as np
    import torch
    import torch_unet as tu
    from flax import nnx

    from lmjax import benchmark as lb
    from lmjax import models, parallel
    from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
    from lmjax.train import setup

    if args.matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    config = load_config(args.config)
    with config.unlocked():
        if args.batch_size:
            config.train.batch_size = args.batch_size
    unet = config.model.name == "unet" and config.task.mode == "heatmap"
    if not (unet or args.no_torch):
        raise SystemExit("the torch port covers the heatmap U-Net only (--no_torch: lmjax only)")
    if config.task.compute_dtype != "float32":
        raise SystemExit("compare in float32: the CPU has no fast bf16 path in either framework")
    if config.data.format == "isbi2015":
        k = ISBI2015_LANDMARKS.num_landmarks  # without reading the dataset
    else:
        k = setup.load_splits(config)[0].landmark_set.num_landmarks
    images, hw = config.train.batch_size, tuple(config.data.input_size)
    if args.no_torch:
        return lmjax_only(args, config, k, load_start)

    # ---------------------------------------------------------------- lmjax, as `lmjax benchmark`
    host = lb.fake_batch(images // jax.process_count(), hw, k)
    built = build_variants(args, config, k, host)
    names = list(built)
    first_built, last_built = built[names[0]], built[names[-1]]
    mesh, state, eval_step = first_built["mesh"], first_built["state"], first_built["eval"]
    jax_compile_s = last_built["compile_s"]
    jax_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    flops = lb.compiled_flops(last_built["step"])  # XLA's count for the whole step

    # ---------------------------------------------------------------- torch, same start
    kwargs = {
        k_: v
        for k_, v in config.model.to_dict().items()
        if k_ not in ("name", "trainable") and not k_.startswith("pretrained")
    }
    model = models.build_model(
        "unet", num_outputs=k, input_size=hw, in_channels=1, rngs=nnx.Rngs(0), **kwargs
    )
    nnx.update(model, jax.tree.map(np.asarray, state.params))  # the state's own weights
    port = tu.from_lmjax(model)
    tu.copy_from_lmjax(model, port)
    torch_params = tu.num_parameters(port)
    if torch_params != jax_params:
        raise SystemExit(f"parameter counts differ: lmjax {jax_params}, torch {torch_params}")
    t = config.task
    objective = tu.HeatmapObjective(
        sigma=float(t.sigma),
        losses=dict(t.losses),
        temperature=float(t.extractor_temperature),
        deep_supervision=bool(t.deep_supervision),
    )
    o = config.optim
    if o.name != "adam" or o.get("weight_decay", 0.0):
        raise SystemExit("the torch side implements plain Adam (optim.name='adam')")
    opt, sched = tu.make_optimizer(
        port.parameters(),
        learning_rate=o.learning_rate,
        warmup_steps=o.warmup_steps,
        total_steps=config.train.steps,
        schedule=o.schedule,
    )
    tbatch = {
        "image": torch.from_numpy(np.ascontiguousarray(host["image"].transpose(0, 3, 1, 2))),
        "landmarks": torch.from_numpy(host["landmarks"]),
        "visible": torch.from_numpy(host["visible"]),
        "valid": torch.from_numpy(host["valid"]),
    }

    holder = first_built["holder"]
    jax_trains = {n: runner(b) for n, b in built.items()}

    def torch_train():
        return tu.train_step(port, objective, opt, sched, tbatch, clip_norm=o.clip_norm)

    # ---------------------------------------------------------------- warm-up, then ABAB
    log("warm-up")
    sides = {**jax_trains, "torch": torch_train}
    first = {n: fn() for n, fn in sides.items()}
    first = {
        n: {k_: float(v) for k_, v in m.items() if k_ in ("loss", "grad_norm")}
        for n, m in first.items()
    }
    for _ in range(args.warmup - 1):
        for fn in sides.values():
            fn()
    log("timed training blocks")
    train_times = alternate(sides, args.blocks, args.block_steps)
    last = {n: float(fn()["loss"]) for n, fn in sides.items()}

    # ---------------------------------------------------------------- inference
    port.eval()
    port.deep_supervision = False  # XLA drops the unused heads from the eval step too
    infer = {}
    for b in (1, args.infer_batch):
        x = np.random.default_rng(0).standard_normal((b, *hw, 1)).astype(np.float32)
        xj = parallel.shard_batch({"image": x}, mesh)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def jax_infer(xj=xj):
            return jax.block_until_ready(eval_step(holder["state"], xj))

        def torch_infer(xt=xt):
            with torch.inference_mode():
                maps = port(xt)["heatmaps"]
                return tu.soft_argmax(maps, float(t.extractor_temperature))

        log(f"inference at batch {b}")
        jax_infer(), torch_infer()  # compile / warm
        tim = alternate(
            {"lmjax": jax_infer, "torch": torch_infer}, args.infer_blocks, args.infer_calls
        )
        infer[b] = {n: summary(v, b) for n, v in tim.items()}

    train = {n: summary(v, images) for n, v in train_times.items()}

    def pair_ratios(name):
        return [
            tb / jb
            for jb, tb in zip(
                train[name]["block_medians_s"], train["torch"]["block_medians_s"], strict=True
            )
        ]

    result = {
        "tag": args.tag,
        "note": args.note,
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "config": args.config,
        "model": {
            "input_size": list(hw),
            "features": config.model.features,
            "num_levels": config.model.num_levels,
            "upsample": config.model.upsample,
            "deep_supervision": config.model.deep_supervision,
            "num_landmarks": k,
        },
        "batch": images,
        "dtype": "float32",
        "loss": dict(config.task.losses),
        "parameters": {"lmjax": jax_params, "torch": torch_params},
        "machine": machine() | {"loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "versions": lb.versions() | {"torch": torch.__version__},
        "threads": {
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "jax_devices": [str(d) for d in jax.devices()],
            # XLA:CPU sizes its intra-op (Eigen) pool to the usable cores; JAX exposes
            # no setting for it beyond XLA_FLAGS.
            "xla_intra_op_threads": len(os.sched_getaffinity(0)),
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        },
        "schedule": {
            "warmup_steps": args.warmup,
            "blocks": args.blocks,
            "block_steps": args.block_steps,
            "order": f"{', '.join(names)}, torch blocks, repeated",
        },
        "variants": {n: b["mode"] for n, b in built.items()},
        "jax_compile_s": jax_compile_s,
        "train_step_gflop_per_image": None if flops is None else flops / images / 1e9,
        "first_step": first,
        "loss_after": last,
        "train": train,
        # torch step time / lmjax step time per pair of adjacent blocks (= lmjax/torch images/s).
        "ratio_lmjax_over_torch_images_per_s": train["lmjax"]["images_per_s"]
        / train["torch"]["images_per_s"],
        "ratio_per_block_pair": pair_ratios("lmjax"),
        "variant_ratios": {
            n: {
                "median": train[n]["images_per_s"] / train["torch"]["images_per_s"],
                "per_block_pair": pair_ratios(n),
            }
            for n in names
        },
        "inference": {str(b): v for b, v in infer.items()},
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{args.tag}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def variant_lines(r: dict) -> list[str]:
    """Per `train.cpu_conv_kernels` variant: step time and its ratio to torch."""
    ratios = r.get("variant_ratios", {})
    if len(ratios) < 2:
        return []
    lines = [
        "| lmjax variant (train.cpu_conv_kernels) | train step ms, median (p10-p90) | "
        "lmjax/torch, median (per block pair) |",
        "|---|---|---|",
    ]
    for n, v in ratios.items():
        t = r["train"][n]
        pb = v["per_block_pair"]
        lines.append(
            f"| {n} ({r['variants'][n]}) | {t['step_s_median'] * 1e3:.0f} "
            f"({t['step_s_p10'] * 1e3:.0f}-{t['step_s_p90'] * 1e3:.0f}) | "
            f"{v['median']:.2f} ({min(pb):.2f}-{max(pb):.2f}) |"
        )
    return [*lines, ""]


def markdown(r: dict) -> str:
    m, tr, inf = r["machine"], r["train"], r["inference"]
    lat, big = inf["1"], inf[[b for b in inf if b != "1"][0]]
    nb = [b for b in inf if b != "1"][0]
    v = r["versions"]

    def ms(s):
        return f"{s * 1e3:.0f}"

    rows = [
        "| | lmjax (JAX/XLA) | PyTorch port |",
        "|---|---|---|",
        f"| parameters | {r['parameters']['lmjax']:,} | {r['parameters']['torch']:,} |",
        "| train step, median ms (p10-p90) | "
        + " | ".join(
            f"{ms(tr[n]['step_s_median'])} ({ms(tr[n]['step_s_p10'])}-{ms(tr[n]['step_s_p90'])})"
            for n in ("lmjax", "torch")
        )
        + " |",
        "| train step, median process CPU s | "
        + " | ".join(f"{tr[n]['cpu_s_median']:.1f}" for n in ("lmjax", "torch"))
        + " |",
        f"| train images/s (batch {r['batch']}) | "
        + " | ".join(f"{tr[n]['images_per_s']:.2f}" for n in ("lmjax", "torch"))
        + " |",
        "| inference latency, batch 1, median ms | "
        + " | ".join(ms(lat[n]["step_s_median"]) for n in ("lmjax", "torch"))
        + " |",
        f"| inference images/s, batch {nb} | "
        + " | ".join(f"{big[n]['images_per_s']:.2f}" for n in ("lmjax", "torch"))
        + " |",
    ]
    pr = r["ratio_per_block_pair"]
    th = r["threads"]
    return (
        "\n".join(
            [
                f"# lmjax vs PyTorch on CPU: {r['tag']}",
                "",
                f"    {r['command']}",
                "",
                f"Config `{r['config']}`: input {r['model']['input_size'][0]}x"
                f"{r['model']['input_size'][1]}, {r['model']['features']} features, "
                f"{r['model']['num_levels']} levels, upsample {r['model']['upsample']}, "
                f"deep supervision {r['model']['deep_supervision']}, "
                f"K = {r['model']['num_landmarks']}, "
                f"batch {r['batch']}, float32, losses {r['loss']}, Adam.",
                "",
                *rows,
                "",
                "lmjax/torch training throughput: "
                f"**{r['ratio_lmjax_over_torch_images_per_s']:.2f}** "
                f"(per block pair {min(pr):.2f}-{max(pr):.2f}). "
                f"{r['train']['lmjax']['calls']} timed steps each, "
                f"{r['schedule']['blocks']} alternating blocks of {r['schedule']['block_steps']}.",
                "",
                *variant_lines(r),
                f"Machine: {m['cpu_model']}, {m['usable_cpus']} cores, shared with other jobs "
                f"(load average {m['loadavg_start'][0]:.1f} at start, "
                f"{m['loadavg_end'][0]:.1f} at end). "
                f"Threads: torch {th['torch_num_threads']} intra-op / "
                f"{th['torch_num_interop_threads']} inter-op; XLA intra-op pool "
                f"{th['xla_intra_op_threads']}; XLA_FLAGS `{th['XLA_FLAGS'] or '(none)'}`.",
                "",
                "Versions: " + ", ".join(f"{k} {v[k]}" for k in v) + ".",
                "",
                (f"Note: {r['note']}" if r["note"] else ""),
            ]
        ).rstrip()
        + "\n"
    )


if __name__ == "__main__":
    main()
