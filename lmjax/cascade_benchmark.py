"""`lmjax benchmark` of a detector -> SAM cascade config: whole-cascade images/s.

Random weights (SAM's from `model.pretrained` when set), the detector's score
threshold at 0 so that every class is found and every item prompted: the worst
case of a real image. The timed path is `lmjax predict`'s (`CascadePredictor`):
the detector's eval step, SAM's encoder on each image (through a temporary
embedding cache, as predict does), the decoder on every item, landmarks from the
masks and outline/patch masks upsampled to the original image and traced to
polygons. Images are the config's validation split (the phantom by default).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from lmjax import benchmark as bench
from lmjax import configs


def _detector_config(config):
    import pathlib

    from lmjax.train.restore import read_config

    spec = config.cascade.detector
    det = read_config(spec) if pathlib.Path(spec).is_dir() else configs.load(spec)
    with det.unlocked():
        det.model.score_threshold = 0.0
    return det


def benchmark_cascade(
    config, *, steps: int = 20, warmup: int = 2, data: str = "fake", infer_batch: int = 32
) -> dict[str, Any]:
    """Times `steps` images through the whole cascade after one untimed pass over
    `warmup` images (compiles); returns a JSON-ready dict."""
    from lmjax.data.types import Dataset
    from lmjax.train import setup
    from lmjax.train.cascade_predict import CascadePredictor
    from lmjax.train.sam_data import build_sam, decoder_optimizer, decoder_state

    del infer_batch, data  # the images are always the validation split's
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    config = configs.resolve(config)
    det_config = _detector_config(config)
    _, val, _ = setup.load_splits(config)
    lset = val.landmark_set
    records = [val.records[i % len(val.records)] for i in range(steps + max(warmup, 1))]
    mesh, det_state, _, eval_step, _ = setup.build(
        det_config, lset.num_landmarks, lset, pretrained=False, log=lambda _: None
    )
    sam, _ = build_sam(config, log=lambda _: None)
    graphdef, state = decoder_state(config, sam, decoder_optimizer(config))
    predictor = CascadePredictor(
        config, sam, (graphdef, state), lset, (det_config, mesh, det_state, eval_step)
    )
    predictor(Dataset(lset, records[: max(warmup, 1)]))
    predictor.timings = dict.fromkeys(predictor.timings, 0.0)
    t0 = time.perf_counter()
    _, conf, regions = predictor(Dataset(lset, records[max(warmup, 1) :]))
    wall = time.perf_counter() - t0
    dev = jax.devices()[0]
    return {
        "model": f"cascade: {det_config.model.name} -> sam",
        "detector_input": list(det_config.data.input_size),
        "sam_input": list(config.data.input_size),
        "images": steps,
        "items": lset.num_landmarks,
        "prompts_per_image": float(np.mean((conf > 0).sum(-1))),
        "regions_per_image": float(np.mean([len(r) for r in regions])),
        "images_per_s": steps / wall,
        "seconds_per_image": wall / steps,
        "stages_s_per_image": {k: v / steps for k, v in predictor.timings.items()},
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "backend": jax.default_backend(),
        "versions": bench.versions(),
    }


def format_cascade_benchmark(r: dict[str, Any]) -> str:
    stages = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["stages_s_per_image"].items())
    v = r["versions"]
    return "\n".join(
        [
            f"model        {r['model']} ({r['items']} items)",
            f"shapes       detector input {r['detector_input'][0]}x{r['detector_input'][1]}, "
            f"SAM input {r['sam_input'][0]}x{r['sam_input'][1]}; {r['images']} images, "
            f"{r['prompts_per_image']:.1f} prompts and {r['regions_per_image']:.1f} traced "
            "regions each",
            f"devices      {r['device_count']} x {r['device_kind']} ({r['backend']})",
            "versions     " + ", ".join(f"{name} {v[name]}" for name in v),
            f"cascade      {r['images_per_s']:.2f} images/s, {r['seconds_per_image'] * 1e3:.1f} "
            f"ms per image, one image at a time: {stages}",
        ]
    )


__all__ = ["benchmark_cascade", "format_cascade_benchmark"]
