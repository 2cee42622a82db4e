"""Host input-pipeline throughput on the ISBI 2015 images (images/s per worker).

Reads `$LMJAX_DATA/isbi2015/RawImage/TrainingData/*.jpg` (1935 x 2400 JPEG)
through `read_radiograph`, with the senior annotations, and streams them at
512 x 512 with every augmentation on (p = 1: flip excepted, as the set declares
no pairs), in one thread of one process, so the figure is per worker:

  no_cache    every sample decodes and resizes its source image
  cache_cold  first pass with an empty decode cache (decode + write)
  cache_warm  second pass over the same cache (no decode)

Writes experiments/results/bench_pipeline.{json,md} with the machine.

    python experiments/bench_pipeline.py --num_images 60
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmjax.data.augment import AugmentConfig  # noqa: E402
from lmjax.data.pipeline import make_pipeline  # noqa: E402
from lmjax.data.types import Dataset, LandmarkSet, Record  # noqa: E402

FULL = AugmentConfig(
    p_rotation=1.0, rotation=10.0, p_scale=1.0, scale=(0.9, 1.1),
    p_translation=1.0, translation=0.05, p_shear=1.0, shear=5.0,
    p_elastic=1.0, elastic_alpha=4.0, elastic_grid=5,
    p_brightness=1.0, brightness=0.1, p_contrast=1.0, contrast=(0.8, 1.2),
    p_gamma=1.0, gamma=(0.7, 1.5), p_noise=1.0, noise_std=(0.0, 0.02),
    p_blur=1.0, blur_sigma=(0.5, 1.0), p_dropout=1.0,
)  # fmt: skip


def isbi_records(data_dir: pathlib.Path, n: int) -> list[Record]:
    images = sorted((data_dir / "isbi2015/RawImage/TrainingData").glob("*.jpg"))[:n]
    if not images:
        raise SystemExit(f"no ISBI images under {data_dir}; set LMJAX_DATA or --data_dir")
    records = []
    for path in images:
        ann = data_dir / "isbi2015/AnnotationsByMD/400_senior" / f"{path.stem}.txt"
        lines = ann.read_text().split()[:19]
        pts = np.array([[float(v) for v in ln.split(",")] for ln in lines], np.float32)
        records.append(Record(image=str(path), landmarks=pts, visible=None, spacing=(0.1, 0.1)))
    return records


def run_pass(dataset: Dataset, *, cache_dir, seed: int, batch_size: int, threads: int) -> dict:
    it = make_pipeline(
        dataset, input_size=(512, 512), batch_size=batch_size, augment=FULL, seed=seed,
        num_epochs=1, process_index=0, process_count=1, num_threads=threads,
        prefetch=batch_size, cache_dir=cache_dir,
    )  # fmt: skip
    start = time.perf_counter()
    images = sum(b["image"].shape[0] for b in it)
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": images / seconds}


def machine() -> dict:
    import grain
    import scipy
    import skimage

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "grain": grain.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("LMJAX_DATA", str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--data_dir", default=default_data)
    parser.add_argument("--num_images", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--out_dir", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args()

    records = isbi_records(pathlib.Path(args.data_dir), args.num_images)
    dataset = Dataset(LandmarkSet.numbered("isbi2015", 19), records, name="isbi2015")
    kw = dict(batch_size=args.batch_size, threads=args.threads)
    results = {"no_cache": run_pass(dataset, cache_dir=None, seed=0, **kw)}
    with tempfile.TemporaryDirectory(prefix="lmjax_cache_") as cache_dir:
        results["cache_cold"] = run_pass(dataset, cache_dir=cache_dir, seed=1, **kw)
        results["cache_warm"] = run_pass(dataset, cache_dir=cache_dir, seed=2, **kw)
        cache_mb = sum(f.stat().st_size for f in pathlib.Path(cache_dir).iterdir()) / 2**20
    report = {
        "benchmark": "host input pipeline, ISBI 2015 train JPEGs -> 512x512, full augmentation",
        "setup": {"images": len(records), "input_size": [512, 512], "threads": args.threads,
                  "worker_processes": 0, "batch_size": args.batch_size,
                  "cache_dtype": "uint16", "cache_size_mb": round(cache_mb, 1)},
        "augment": {k: v for k, v in vars(FULL).items()},
        "results": results,
        "machine": machine(),
    }  # fmt: skip
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    rows = "\n".join(
        f"| {name} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} |"
        for name, r in results.items()
    )
    (out / "bench_pipeline.md").write_text(
        "# Host input pipeline throughput (per worker)\n\n"
        f"ISBI 2015 training JPEGs (1935 x 2400) -> 512 x 512, every augmentation at p = 1 "
        f"(affine + elastic in one resample, photometric, dropout); {args.threads} thread, "
        f"no worker processes, batch {args.batch_size}. Produced by "
        "`python experiments/bench_pipeline.py`.\n\n"
        "| setting | images | seconds | images/s |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Decode cache: {report['setup']['cache_size_mb']} MB for {len(records)} images "
        "(uint16 .npy at 640 px on the longer side).\n\n"
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs; Python "
        f"{m['python']}, grain {m['grain']}, numpy {m['numpy']}, scipy {m['scipy']}, "
        f"scikit-image {m['scikit-image']}.\n"
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
