"""Throughput and compiled memory of SAM decoder configs (`task.mode = "sam_decoder"`):
what `lmjax benchmark` and `lmjax compile-check` run for them.

`benchmark_sam` times, on random weights (N(0, 0.02), drawn on the host; `model.pretrained`
is not read) and random inputs kept on one device, each program compiled once:

  encoder        `Sam.embed` of `sam.embed_batch` images `[B, S, S, 3]`, cast to bf16
                 as the embedding cache stores it: images/s and FLOPs per image.
  decoder        `Sam.decode` of one image's bf16 embedding `[1, g, g, D]` with K box
                 prompts (inference, K = 32 and 90): prompts/s.
  decoder_train  the training run's step (`sam_steps.make_train_step`, the config's
                 optimizer and losses) on `train.batch_size` images of a fake set of
                 90 items (72 landmarks, 12 outlines, 6 patches: the pelvis paper's
                 72 + 18), K = 32 and 90 prompts per image: prompts/s and images/s.

Each section has its compile time, median and 10th/90th percentile call time, and
FLOPs from XLA's cost analysis where given (MFU: `lmjax.benchmark.efficiency`). Not
timed: the embedding cache's reads, host batching, the predict step's landmark reading.

`compile_check_sam` compiles the encoder program and the train steps without
allocating the model (`jax.eval_shape`, `jax.ShapeDtypeStruct` inputs) and reports
XLA's memory analysis of each and whether all fit in one device's memory.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax import benchmark as bench
from lmjax import compilation as comp
from lmjax.configs import resolve
from lmjax.ops.item_masks import kind_ids
from lmjax.train import sam_steps
from lmjax.train.sam_data import build_sam, decoder_optimizer, decoder_state

PROMPTS = (32, 90)  # the config's default K, and every item of the fake set
ITEMS = {"landmark": 72, "outline": 12, "patch": 6}
MAX_VERTICES = 8
# Fake item sizes in model pixels: disc radius, stroke width, landmark box jitter, shift.
SIZES = {"radius": 3.0, "width": 2.0, "jitter": 2.0, "shift": 1.0}
KINDS = tuple(kind for kind, n in ITEMS.items() for _ in range(n))  # of each fake item
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def fake_items(n: int, side: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """`PromptSet.batch`'s geometry for `n` images of `side` px, all 90 items visible:
    landmarks are single vertices, outlines 2-5 vertex polylines, patches 4-8 vertex
    polygons (sorted angles around a centre: never self-crossing), all inside the
    image; vertices are NaN padded to `MAX_VERTICES`."""
    rng = np.random.default_rng(seed)
    v = np.full((n, len(KINDS), MAX_VERTICES, 2), np.nan, np.float32)
    lo, hi = 0.1 * side, 0.9 * side
    for i in range(n):
        for j, kind in enumerate(KINDS):
            if kind == "landmark":
                pts = rng.uniform(lo, hi, (1, 2))
            elif kind == "outline":
                steps = rng.normal(0, side / 12, (int(rng.integers(1, 5)), 2))
                pts = np.clip(np.cumsum(np.vstack([rng.uniform(lo, hi, 2), steps]), 0), lo, hi)
            else:
                angle = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 9))))
                centre = rng.uniform(0.25 * side, 0.75 * side, 2)
                r = rng.uniform(side / 20, side / 8)
                pts = centre + r * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
            v[i, j, : len(pts)] = pts
    return {
        "vertices": v,
        "vertex_valid": np.isfinite(v).all(axis=-1),
        "visible": np.ones((n, len(KINDS)), bool),
        **{name: np.full(n, value, np.float32) for name, value in SIZES.items()},
    }


def fake_embeddings(n: int, grid: Sequence[int], dim: int, *, seed: int = 0) -> np.ndarray:
    """Random bf16 embeddings `[n, g, g, D]`, as the cache holds them."""
    x = np.random.default_rng(seed).standard_normal((n, *grid, dim), np.float32)
    return x.astype(jnp.bfloat16)


def _build(config, prompts, *, abstract: bool) -> dict[str, Any]:
    """What both commands compile, for `config` without its pretrained weights (shapes
    and times do not depend on them): `model_graph`/`model_state` (the `Sam`, split),
    `graphdef`/`state` (`decoder_state`), jitted `embed` (as the embedding cache
    runs it), `decode`, a `train` step per K of `prompts`, and `info` for the results.
    With `abstract` the states are `jax.ShapeDtypeStruct`s: nothing is allocated."""
    prompts = tuple(PROMPTS if prompts is None else prompts)
    if any(not 1 <= k <= len(KINDS) for k in prompts):
        raise ValueError(f"prompts must be in 1..{len(KINDS)}, got {prompts}")
    raw = resolve(config).to_dict()
    raw["model"]["pretrained"] = ""
    config = resolve(raw)
    if config.model.name != "sam":
        raise ValueError(f"SAM benchmarks need model.name 'sam', got {config.model.name!r}")
    tx = decoder_optimizer(config)  # as the training run's
    out: dict[str, Any] = {"config": config, "prompts": prompts}

    def count(module) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))

    def make():
        model, _ = build_sam(config, log=lambda _: None)
        out["graphdef"], state = decoder_state(config, model, tx)
        out["model_graph"], model_state = nnx.split(model)
        grid, dim = tuple(model.image_encoder.grid), int(model.prompt_encoder.embed_dim)
        out["info"] = {
            "model": config.model.name,
            "size": config.model.get("size"),
            "parameters": {n: count(getattr(model, n)) for n in PARTS} | {"total": count(model)},
            "input_size": list(config.data.input_size),
            "embedding_shape": [*grid, dim],
            "compute_dtype": jnp.dtype(model.image_encoder.dtype).name,
        }
        return model_state, state

    out["model_state"], out["state"] = jax.eval_shape(make)
    if not abstract:  # weights drawn on the host: eager initializers compile once per shape
        rng = np.random.default_rng(config.train.seed)
        draw = lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype)  # noqa: E731
        out["model_state"] = jax.device_put(jax.tree.map(draw, out["model_state"]))
        model = nnx.merge(out["model_graph"], out["model_state"])
        out["state"] = decoder_state(config, model, tx)[1]
    out["info"] |= {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}
    out["info"] |= {"device_count": jax.device_count(), "versions": bench.versions()}
    graph, graphdef = out["model_graph"], out["graphdef"]

    def embed(state, images):
        return nnx.merge(graph, state).embed(images).astype(jnp.bfloat16)

    def decode(params, rest, embeddings, boxes):
        return nnx.merge(graphdef, params, rest).decode(embeddings, boxes)

    kw = {"kinds": kind_ids(KINDS), "fraction": config.sam.jitter_fraction}
    kw["losses"] = dict(config.task.losses)
    kw["loss_kwargs"] = {n: dict(v) for n, v in config.task.loss_kwargs.items()}
    out["train"] = {k: sam_steps.make_train_step(graphdef, tx, k=k, **kw) for k in prompts}
    return out | {"embed": jax.jit(embed), "decode": jax.jit(decode)}


def _measure(fn, args, *, r: dict, units: int, unit: str, steps: int, warmup: int):
    """Compiles and times `fn(*args)`: `(section, args[0])`, the section's compile time,
    call-time spread, `{unit}s_per_s`, FLOPs per call and per unit, TFLOP/s and MFU,
    and the first argument as carried through the calls (a donated train state)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    held = list(args)

    def call():
        out = compiled(*held)
        if isinstance(out, tuple):  # (state, metrics) of a train step
            held[0], out = out
        return out

    times = bench._time_calls(call, steps, warmup)
    median = float(np.median(times))
    flops = bench.compiled_flops(compiled)
    per_call = {"flops_per_image": flops, "images_per_s": 1 / median}
    eff = bench.efficiency({**r, **per_call, "images_per_s_per_device": 1 / median})
    return {
        "compile_s": compile_s,
        **bench.spread(times, "step_s"),
        f"{unit}s_per_s": units / median,
        "flops_per_call": flops,
        f"flops_per_{unit}": None if flops is None else flops / units,
        **{key: eff[key] for key in ("achieved_tflops", "mfu", "mfu_note")},
    }, held[0]


def benchmark_sam(
    config,
    *,
    steps: int = 20,
    warmup: int = 2,
    data: str = "fake",
    infer_batch: int = 32,
    prompts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Times the encoder, the decoder's inference and its train step (module docstring).

    Args:
      config: a `task.mode = "sam_decoder"` config.
      steps: timed calls of each program after `warmup` untimed ones.
      data: "fake" only: SAM benchmarks run on random images, embeddings and items.
      infer_batch: not used (the CLI passes it); the decoder runs one image at a time.
      prompts: the K values of the decoder and train-step sections (default `PROMPTS`).

    Returns:
      A JSON-ready dict: the shared fields of `lmjax.benchmark.benchmark`'s result,
      `encoder` (`images_per_s`, `flops_per_image`), and `decoder` and
      `decoder_train`, one entry per K (`prompts_per_s`, the train step's also
      `images_per_s`); times in seconds.
    """
    del infer_batch
    if data != "fake":
        raise ValueError(f"data={data!r}: SAM benchmarks use fake inputs; pass --data=fake")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    b = _build(config, prompts, abstract=False)
    config, prompts = b["config"], b["prompts"]
    side, (*grid, dim) = int(config.data.input_size[0]), b["info"]["embedding_shape"]
    kw = {"steps": steps, "warmup": warmup}
    kw["r"] = {k: b["info"][k] for k in ("device_kind", "backend", "compute_dtype")}

    n = config.sam.embed_batch
    images = np.random.default_rng(0).uniform(0, 1, (n, side, side, 3)).astype(np.float32)
    args = (b["model_state"], jax.device_put(images))
    encoder = {"batch": n, **_measure(b["embed"], args, units=n, unit="image", **kw)[0]}

    state, decoder, train = b["state"], [], []
    one = jax.device_put(fake_embeddings(1, grid, dim))
    for k in prompts:
        x0y0 = np.random.default_rng(k).uniform(0, 0.8 * side, (1, k, 2))
        boxes = np.concatenate([x0y0, x0y0 + side / 10], axis=-1).astype(np.float32)
        args = (state.params, state.model_state, one, jax.device_put(boxes))
        s, _ = _measure(b["decode"], args, units=k, unit="prompt", **kw)
        decoder.append({"prompts": k, "images": 1, **s})

    n = config.train.batch_size
    batch = jax.device_put({**fake_items(n, side), "embeddings": fake_embeddings(n, grid, dim)})
    for k in prompts:
        s, state = _measure(b["train"][k], (state, batch), units=n * k, unit="prompt", **kw)
        train.append({"prompts": k, "images": n, **s, "images_per_s": s["prompts_per_s"] / k})

    return {
        **b["info"],
        "data": data,
        "weights": "random",
        "items": dict(ITEMS),
        "platform": platform.platform(),
        "steps": steps,
        "warmup": warmup,
        "encoder": encoder,
        "decoder": decoder,
        "decoder_train": train,
        "peak_memory_bytes": bench._peak_memory_bytes(),
    }


def _times(s: dict[str, Any]) -> str:
    m, p10, p90 = (f"{s[f'step_s_{key}'] * 1e3:.2f} ms" for key in ("median", "p10", "p90"))
    return f"{m} median (p10 {p10}, p90 {p90}), compile {s['compile_s']:.1f} s"


def _flops(value: float | None, unit: str) -> str:
    return "" if value is None else f", {value / 1e9:.4g} GFLOP/{unit}"


def _header(r: dict[str, Any], what: str) -> list[str]:
    p, v, (g, _, d) = r["parameters"], r["versions"], r["embedding_shape"]
    return [
        f"model        {r['model']} {r['size'] or ''} ({p['total'] / 1e6:.2f} M parameters: "
        f"encoder {p['image_encoder'] / 1e6:.2f} M, prompt encoder "
        f"{p['prompt_encoder'] / 1e6:.3f} M, decoder {p['mask_decoder'] / 1e6:.2f} M)",
        f"shapes       input {r['input_size'][0]}x{r['input_size'][1]}, embeddings "
        f"{g}x{g}x{d} bf16, {r['compute_dtype']}; {what}",
        f"devices      {r['device_count']} x {r['device_kind']} ({r['backend']})",
        "versions     " + ", ".join(f"{name} {v[name]}" for name in v),
    ]


def format_sam_benchmark(r: dict[str, Any]) -> str:
    """`benchmark_sam`'s result as a table of labelled lines."""
    e, items = r["encoder"], ", ".join(f"{n} {k}" for k, n in r["items"].items())
    lines = _header(r, f"{r['steps']} timed calls after {r['warmup']} warm-up per program")
    lines.append(
        f"encoder      {e['images_per_s']:.2f} images/s at batch {e['batch']}; "
        f"{_times(e)}{_flops(e['flops_per_image'], 'image')}"
    )
    for s in r["decoder"]:
        lines.append(
            f"decoder K={s['prompts']:<3d}{s['prompts_per_s']:.1f} prompts/s (one image); "
            f"{_times(s)}{_flops(s['flops_per_prompt'], 'prompt')}"
        )
    for s in r["decoder_train"]:
        lines.append(
            f"train   K={s['prompts']:<3d}{s['prompts_per_s']:.1f} prompts/s, "
            f"{s['images_per_s']:.2f} images/s at batch {s['images']} ({items}); "
            f"{_times(s)}{_flops(s['flops_per_prompt'], 'prompt')}"
        )
    named = [("encoder", e)] + [(f"decoder K={s['prompts']}", s) for s in r["decoder"]]
    named += [(f"train K={s['prompts']}", s) for s in r["decoder_train"]]
    mfu = ", ".join(f"{name} {s['mfu']:.1%}" for name, s in named if s["mfu"] is not None)
    lines.append(f"efficiency   {mfu + '; ' if mfu else ''}{e['mfu_note']}")
    peak = r["peak_memory_bytes"]
    peak = (
        f"- (the {r['backend']} backend keeps none)" if peak is None else f"{peak / 2**30:.2f} GiB"
    )
    lines.append(f"peak memory  {peak}")
    return "\n".join(lines)


def compile_check_sam(
    config, *, device_memory_gb: float | None = None, prompts: Sequence[int] | None = None
) -> dict[str, Any]:
    """Compiles the encoder forward (`sam.embed_batch` images) and the decoder train
    step (`train.batch_size` images, each K of `prompts`, default `PROMPTS`) with
    abstract arguments; allocates no parameter and runs nothing.

    Returns:
      JSON-ready, shaped as `lmjax.compilation.compile_check`'s: `programs` (each
      one's `lower_s`, `compile_s`, `memory` as `memory_report` gives it, `flops`
      and `fits`), `memory` (the largest program's), `lower_s` and `compile_s`
      (summed), `device_memory_bytes`, and `fits`: whether every program fits in
      `device_memory_gb` GiB (default: what the runtime reports; None: unknown).
    """
    b = _build(config, prompts, abstract=True)
    config, prompts = b["config"], b["prompts"]
    side, (*grid, dim) = int(config.data.input_size[0]), b["info"]["embedding_shape"]
    n, eb = config.train.batch_size, config.sam.embed_batch
    images = jax.ShapeDtypeStruct((eb, side, side, 3), jnp.float32)
    jobs = [("encoder forward", eb, None, b["embed"], (b["model_state"], images))]
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fake_items(n, side))
    batch["embeddings"] = jax.ShapeDtypeStruct((n, *grid, dim), jnp.bfloat16)
    jobs += [("decoder train step", n, k, b["train"][k], (b["state"], batch)) for k in prompts]
    gb = device_memory_gb
    limit = comp.device_memory_bytes() if gb is None else int(gb * 2**30)
    programs = []
    with comp.count_cache_events() as cache:
        for name, images, k, fn, args in jobs:
            t0 = time.perf_counter()
            lowered = fn.lower(*args)
            t1 = time.perf_counter()
            compiled = lowered.compile()
            t2 = time.perf_counter()
            memory = comp.memory_report(compiled)
            programs.append(
                {"name": name, "images": images, "prompts": k, "lower_s": t1 - t0,
                 "compile_s": t2 - t1, "memory": memory, "flops": bench.compiled_flops(compiled),
                 "fits": comp.fits_in(memory, limit)}
            )  # fmt: skip
    verdicts = [p["fits"] for p in programs]
    known = [p["memory"] for p in programs if p["memory"] is not None]
    return {
        **b["info"],
        "global_batch": n,
        "embed_batch": eb,
        "lower_s": sum(p["lower_s"] for p in programs),
        "compile_s": sum(p["compile_s"] for p in programs),
        "programs": programs,
        "memory": max(known, key=lambda m: m["total_bytes"]) if known else None,
        "device_memory_bytes": limit,
        "fits": False if False in verdicts else None if None in verdicts else True,
        "compilation_cache": {"dir": jax.config.jax_compilation_cache_dir or None, **cache},
    }


def format_sam_compile_check(r: dict[str, Any]) -> str:
    """`compile_check_sam`'s result as labelled lines, two per compiled program."""
    lines = _header(r, f"train batch {r['global_batch']}, embed batch {r['embed_batch']}")
    lines.append(
        f"compile      lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s in all "
        f"({len(r['programs'])} programs; nothing allocated or run)"
    )
    for p in r["programs"]:
        k = "" if p["prompts"] is None else f", K={p['prompts']} prompts per image"
        lines.append(
            f"  {p['name']}, {p['images']} images{k}: lower {p['lower_s']:.1f} s, "
            f"compile {p['compile_s']:.1f} s{_flops(p['flops'], 'call')}"
        )
        m, fits = p["memory"], {None: "", True: "; fits", False: "; does NOT fit"}[p["fits"]]
        size = {k.removesuffix("_bytes"): comp._size(v) for k, v in (m or {}).items()}
        lines.append(
            "    memory - (the backend gives no memory analysis)"
            if m is None
            else f"    memory {size['total']}: arguments {size['argument']}, outputs "
            f"{size['output']} ({size['alias']} reuse donated arguments), temporaries "
            f"{size['temp']}{fits}"
        )
    if r["fits"] is None:
        lines.append("fits         unknown: pass --device_memory_gb (no limit reported)")
    else:
        verdict = "yes" if r["fits"] else "NO"
        lines.append(
            f"fits         {verdict}, in {comp._size(r['device_memory_bytes'])} per device"
        )
    c = r["compilation_cache"]
    if c["dir"]:
        lines.append(f"cache        {c['dir']}: {c['hits']} hits, {c['misses']} misses")
    return "\n".join(lines)
