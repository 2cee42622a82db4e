"""What each row of the accelerator suite measures, run inside a worker process.

Every JAX row is `lmjax benchmark`'s own measurement (`lmjax.benchmark.benchmark`,
`lmjax.sam_benchmark.benchmark_sam`) on a config of experiments/configs with the
suite's size: the full size on an accelerator, and on CPU (`tiny`) the same config
shrunk to 32x32 images, tiny widths and a two-stage HRNet in float32, so the CPU
test runs the code the accelerator runs.

  unet         isbi2015_unet_heatmap.py:gpu at 512x512 (32 features, 7 levels), bf16
  hrnet        isbi2015_hrnet.py:kl (HRNet-W32) at 512x512, bf16
  vit_b_lora   isbi2015_vit_lora.py:b (ViT-B/16, LoRA on qkv/proj, head) at 512x512, bf16
  sam_decoder  pelvis_sam_decoder.py:medsam (SAM ViT-B, 1024 px) with bf16 compute:
               the decoder's train step at K = 32 prompts per image on cached bf16
               embeddings
  input        the unet row's config on the built-in phantom with augmentation on the
               device: the Grain pipeline alone vs the train step it feeds
  torch_unet   the PyTorch port of the unet row's U-Net (experiments/peer), same
               weights, batch and loss, on the same GPU (bf16 autocast)

The ISBI configs are benchmarked on fake batches of K = 19 landmarks, so no dataset
is read; the input row renders the phantom, so it needs no data either.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "experiments" / "configs"
PEER = ROOT / "experiments" / "peer"
ISBI_LANDMARKS = 19
SAM_PROMPTS = 32

# Per-model batch meant to fit one 80 GB H100 in bf16 (halved by the suite on an
# out-of-memory error), and the tiny CPU batch. `lmjax compile-check` (XLA:CPU's
# memory analysis, a rough guide to the GPU's; experiments/results/gpu/batch_memory_cpu)
# gives at 512x512 and batch 32: U-Net 36.6 GiB, HRNet-W32 55.8 GiB, ViT-B LoRA
# 105.5 GiB, hence 16; SAM's decoder step at K = 32 needs 19.5 GiB for 4 images
# (experiments/results/sam_cpu), hence the config's 4.
BATCH = {"unet": 32, "hrnet": 32, "vit_b_lora": 16, "sam_decoder": 4, "input": 32}
TINY_BATCH = dict.fromkeys(BATCH, 4)
TINY_SIZE = (32, 32)  # the smallest every row accepts (HRNet: a multiple of 8)
PHANTOM_IMAGES = {False: 64, True: 8}  # the input row's phantom, full / tiny

_CONFIG = {
    "unet": ("isbi2015_unet_heatmap.py:gpu", ["data.input_size=(512, 512)"]),
    "hrnet": ("isbi2015_hrnet.py:kl", ["data.input_size=(512, 512)"]),
    "vit_b_lora": ("isbi2015_vit_lora.py:b", ["data.input_size=(512, 512)"]),
    # The config computes in float32 (bf16 embeddings); the suite's rows are all bf16.
    "sam_decoder": ("pelvis_sam_decoder.py:medsam", ["model.dtype=bfloat16"]),
}
# One block or level of each kind fewer where the row's code path stays the same:
# compiling is most of the tiny run.
_TINY = {
    "unet": ["model.features=4", "model.num_levels=2"],
    # Two stages (two branches and one exchange) instead of four: the same modules.
    "hrnet": [
        "model.width=8",
        "model.stem_features=16",
        "model.num_modules=(1,)",
        "model.num_blocks=(1, 1)",
    ],
    "vit_b_lora": ["model.size=tiny", "model.depth=1"],
    # The widths of the config's `tiny` SAM, at 32 px: a 4 x 4 token grid, one window.
    "sam_decoder": [
        "model.size=tiny",
        "model.depth=1",
        "model.global_attn_indexes=(0,)",
        "model.patch_size=8",
        "model.window_size=4",
        "model.prompt_dim=32",
        "model.decoder_mlp_dim=128",
        "model.iou_head_hidden_dim=64",
    ],
}


def config_for(name: str, *, tiny: bool, batch: int | None = None):
    """The row's config (`input` and `torch_unet` use the unet row's) at the suite's size."""
    from lmjax import configs

    model = "unet" if name in ("input", "torch_unet") else name
    spec, overrides = _CONFIG[model]
    if tiny:
        overrides = [
            f"data.input_size={TINY_SIZE}",
            "task.compute_dtype=float32",
            *_TINY[model],
        ]
    batch = batch or (TINY_BATCH if tiny else BATCH)[name if name in BATCH else "unet"]
    overrides = [*overrides, f"train.batch_size={batch}"]
    if name == "input":
        overrides += [
            "data.format=phantom",
            "data.data_dir=",
            f"data.phantom_size={PHANTOM_IMAGES[tiny]}",
            "data.augment_on_device=True",
        ]
    path, _, arg = spec.partition(":")
    return configs.load(f"{CONFIGS / path}:{arg}", overrides=overrides)


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _heatmap_row(r: dict[str, Any]) -> dict[str, Any]:
    inf = r["inference"]
    return {
        "model": r["model"],
        "parameters": r["parameters"],
        "input_size": r["input_size"],
        "batch": r["global_batch"],
        "compute_dtype": r["compute_dtype"],
        "train_images_per_s": r["images_per_s"],
        "step_ms": r["step_s_median"] * 1e3,
        "compile_s": r["compile_s"],
        "flops_per_image": r["flops_per_image"],
        "achieved_tflops": r["achieved_tflops"],
        "peak_tflops": r["peak_tflops"],
        "mfu": r["mfu"],
        "mfu_note": r["mfu_note"],
        "peak_memory_bytes": r["peak_memory_bytes"],
        # One image per device: batch 1 on one GPU.
        "infer_b1_images_per_s": inf["latency_batch"] / inf["latency_s"],
        "infer_b32_images_per_s": inf["images_per_s"],
        "infer_batch": inf["batch"],
    }


def _measure_heatmap(name: str, *, tiny: bool, batch: int | None, steps: int, warmup: int):
    from lmjax.benchmark import benchmark

    c = config_for(name, tiny=tiny, batch=batch)
    data = "real" if name == "input" else "fake"
    k = None if name == "input" else ISBI_LANDMARKS
    r = benchmark(c, steps=steps, warmup=warmup, data=data, infer_batch=32, num_landmarks=k)
    row = _heatmap_row(r)
    if name == "input":
        i = r["input"]
        row |= {
            "augment": "on device (" + str(c.data.augment) + " preset)",
            "dataset": f"phantom, {c.data.phantom_size} images",
            "pipeline_images_per_s": i["pipeline_images_per_s"],
            "fed_images_per_s": i["images_per_s"],
            "input_wait_fraction": i["input_wait_fraction"],
            "host_threads": c.data.num_threads,
        }
    return row, r


def _measure_sam(*, tiny: bool, batch: int | None, steps: int, warmup: int):
    from lmjax.sam_benchmark import benchmark_sam

    c = config_for("sam_decoder", tiny=tiny, batch=batch)
    r = benchmark_sam(c, steps=steps, warmup=warmup, prompts=(SAM_PROMPTS,))
    (t,), (d,) = r["decoder_train"], r["decoder"]
    row = {
        "model": f"sam {r['size']} decoder, K={SAM_PROMPTS}",
        "parameters": r["parameters"]["mask_decoder"],
        "input_size": r["input_size"],
        "batch": t["images"],
        "compute_dtype": r["compute_dtype"],
        "train_images_per_s": t["images_per_s"],
        "train_prompts_per_s": t["prompts_per_s"],
        "step_ms": t["step_s_median"] * 1e3,
        "compile_s": t["compile_s"],
        "flops_per_image": None
        if t["flops_per_call"] is None
        else t["flops_per_call"] * r["device_count"] / t["images"],
        "achieved_tflops": t["achieved_tflops"],
        "mfu": t["mfu"],
        "mfu_note": t["mfu_note"],
        # The process's peak: the encoder at `sam.embed_batch` ran before the decoder.
        "peak_memory_bytes": r["peak_memory_bytes"],
        # The decoder answers one image's K prompts per call (predict's path).
        "infer_b1_images_per_s": 1 / d["step_s_median"],
        "infer_b32_images_per_s": None,
        "encoder_images_per_s": r["encoder"]["images_per_s"],
        "encoder_batch": r["encoder"]["batch"],
    }
    return row, r


def _torch_step(*, tiny: bool, batch: int | None, steps: int, warmup: int):
    """The port's train step on CUDA when there is one (bf16 autocast where the config
    computes in bf16), else on CPU in float32; weights copied from the lmjax model."""
    import numpy as np
    import torch
    from flax import nnx

    from lmjax import models
    from lmjax.benchmark import fake_batch

    sys.path.insert(0, str(PEER))
    import torch_unet as tu

    c = config_for("torch_unet", tiny=tiny, batch=batch)
    hw, images = tuple(c.data.input_size), c.train.batch_size
    kwargs = {k: v for k, v in c.model.to_dict().items() if k not in ("name", "trainable")}
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained")}
    model = models.build_model(
        "unet", num_outputs=ISBI_LANDMARKS, input_size=hw, in_channels=1, rngs=nnx.Rngs(0),
        **kwargs,
    )  # fmt: skip
    port = tu.from_lmjax(model)
    tu.copy_from_lmjax(model, port)
    cuda = torch.cuda.is_available()
    if not cuda:  # one thread per usable core: more only contend on a shared machine
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = torch.device("cuda" if cuda else "cpu")
    port = port.to(device)
    t, o = c.task, c.optim
    objective = tu.HeatmapObjective(
        sigma=float(t.sigma),
        losses=dict(t.losses),
        temperature=float(t.extractor_temperature),
        deep_supervision=bool(t.deep_supervision),
    )
    opt, sched = tu.make_optimizer(
        port.parameters(),
        learning_rate=o.learning_rate,
        warmup_steps=o.warmup_steps,
        total_steps=c.train.steps,
        schedule=o.schedule,
    )
    host = fake_batch(images, hw, ISBI_LANDMARKS)
    tb = {
        "image": torch.from_numpy(np.ascontiguousarray(host["image"].transpose(0, 3, 1, 2))),
        **{k: torch.from_numpy(host[k]) for k in ("landmarks", "visible", "valid")},
    }
    tb = {k: v.to(device) for k, v in tb.items()}
    bf16 = cuda and t.compute_dtype == "bfloat16"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = tu.train_step(port, objective, opt, sched, tb, clip_norm=o.clip_norm)
        if cuda:
            torch.cuda.synchronize()
        return out

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {
        "model": "unet (PyTorch port, eager)",
        "parameters": tu.num_parameters(port),
        "input_size": list(hw),
        "batch": images,
        "compute_dtype": "bfloat16 autocast" if bf16 else "float32",
        "torch_device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_version": torch.__version__,
        "train_images_per_s": images / median,
        "step_ms": median * 1e3,
        "loss": _finite(out["loss"].float().item()),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }, None


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def measure(name: str, *, tiny: bool, batch: int | None, steps: int, warmup: int):
    """`(row, raw)`: the row's figures (JSON-ready) and the benchmark's whole result."""
    kw = {"tiny": tiny, "batch": batch, "steps": steps, "warmup": warmup}
    if name in ("unet", "hrnet", "vit_b_lora", "input"):
        return _measure_heatmap(name, **kw)
    if name == "sam_decoder":
        return _measure_sam(**kw)
    if name == "torch_unet":
        return _torch_step(**kw)
    raise ValueError(f"unknown suite item {name!r}")
