"""`lmjax predict` throughput on a folder of real cephalograms, against its parts.

Builds a folder of N inputs in a temporary folder (hard links to, or copies of, the
ISBI 2015 cephalograms under $LMJAX_DATA, cycled under distinct names), then:

1. times the whole `lmjax predict --workdir=W --output_dir=OUT FOLDER` process and
   reads the per-image `<stem>.json` modification times to split start-up (until the
   first batch is written) from the steady rate (images after the first batch over
   the time between the first batch's last JSON and the last JSON);
2. times the same command on the first `--no_refine_images` inputs with a copy of W
   that has no `refine/` (symlinks to everything else), and with W itself, so the
   refinement stage's share of the steady rate is measured like for like;
3. decode alone: `image_io.read_radiograph` on `--decode_sample` of the images, one
   thread, and again through a pool of predict's thread count (with the SHA-256 of
   each file, as predict's reader does); writing the outputs alone
   (`predict_outputs.write_outputs`) for `--write_sample` of them;
4. inference alone: `lmjax.benchmark.benchmark` on W's config.json (the global
   model's eval step on random inputs at predict's batch); `lmjax benchmark
   --config=` takes a Python config file, not a workdir's JSON, hence the function.

`predict_files` overlaps three stages, one batch each: while a batch is predicted the
next one decodes in a thread pool and the previous one's outputs are written by one
writer thread. On two cores the stages still share the CPU, so the steady rate lies
between the stages in series, 1 / (1/decode + 1/inference + 1/writing), and the
slowest stage alone (the refinement, which the benchmark does not run, adds to the
inference).

Writes summary.json and README.md under --out.

    python experiments/predict_throughput.py --workdir=/work/runs/isbi_best --images=1000
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRA_JSON = ("provenance.json", "review.json")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def source_images() -> list[pathlib.Path]:
    data = pathlib.Path(os.environ.get("LMJAX_DATA", "/work/shared/data")) / "isbi2015"
    found = sorted((data / "RawImage").glob("*/*.jpg"))
    if not found:
        raise SystemExit(f"no ISBI 2015 images under {data}/RawImage")
    return found


def make_folder(folder: pathlib.Path, n: int, sources: list[pathlib.Path]) -> None:
    """Hard links (copies where the file system refuses): predict reads each resolved
    path once, so symlinks to the same cephalogram would count as one input."""
    folder.mkdir(parents=True)
    for i in range(n):
        src = sources[i % len(sources)]
        dest = folder / f"img{i:05d}_{src.stem}{src.suffix}"
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)


def env() -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    e["LMJAX_PROGRESS"] = "off"
    return e


def json_mtimes(out: pathlib.Path) -> list[float]:
    return sorted(
        p.stat().st_mtime
        for p in out.glob("*.json")
        if not p.name.endswith(".labelme.json") and p.name not in EXTRA_JSON
    )


def run_predict(
    workdir: pathlib.Path, folder: pathlib.Path, out: pathlib.Path, batch: int, extra=()
):
    """Wall time of the whole process and the rate after the first batch."""
    args = [sys.executable, "-m", "lmjax.cli", "predict", f"--workdir={workdir}",
            f"--output_dir={out}", *extra, str(folder)]  # fmt: skip
    start = time.time()
    proc = subprocess.run(args, env=env(), cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"predict failed ({proc.returncode})")
    times = json_mtimes(out)
    n = len(times)
    first = min(batch, n) - 1  # the first batch's last JSON
    steady = (n - 1 - first) / (times[-1] - times[first]) if n - 1 > first else None
    return {
        "command": " ".join(["lmjax", *args[3:]]),
        "images": n,
        "wall_s": round(wall, 1),
        "images_per_s_overall": round(n / wall, 3),
        "first_batch_done_s": round(times[first] - start, 1),
        "tables_s": round(start + wall - times[-1], 1),  # after the last image's JSON
        "images_per_s_steady": None if steady is None else round(steady, 3),
    }


def decode_rate(paths: list[pathlib.Path], threads: int) -> float:
    from lmjax import provenance
    from lmjax.data import image_io

    def one(p):  # what predict's `_read` does per image
        image_io.read_radiograph(p)
        provenance.file_sha256(p)

    image_io.read_radiograph(paths[0])  # imports and first-call costs out of the timing
    t = time.perf_counter()
    if threads == 1:
        for p in paths:
            one(p)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - t)


def write_rate(workdir: pathlib.Path, paths: list[pathlib.Path], out: pathlib.Path) -> float:
    """`write_outputs` alone (JSON, overlay PNG, LabelMe) for decoded images and
    landmarks spread over the image, with empty measurements."""
    import numpy as np

    from lmjax.data import image_io
    from lmjax.predict_outputs import write_outputs
    from lmjax.train.setup import load_landmark_set

    lset = load_landmark_set(workdir)
    k = lset.num_landmarks
    rng = np.random.default_rng(0)
    rads = [image_io.read_radiograph(p) for p in paths]
    out.mkdir(parents=True)
    t = time.perf_counter()
    for p, rad in zip(paths, rads, strict=True):
        h, w = rad.pixels.shape[:2]
        xy = rng.uniform(0.2, 0.8, (k, 2)) * [w, h]
        write_outputs(out, p.stem, p, rad, xy, np.ones(k), lset, {})
    return len(paths) / (time.perf_counter() - t)


def png_encode_fraction(workdir: pathlib.Path, paths: list[pathlib.Path], out: pathlib.Path):
    """Share of `write_rate`'s time spent in Pillow's PNG/zlib encoder (cProfile)."""
    import cProfile
    import pstats

    write_rate(workdir, paths[:1], out / "warm")  # imports outside the profile
    prof = cProfile.Profile()
    prof.runcall(write_rate, workdir, paths, out / "profiled")
    stats = pstats.Stats(prof).stats
    total = sum(v[3] for k, v in stats.items() if k[2] == "write_outputs")
    encode = sum(v[3] for k, v in stats.items() if "ImagingEncoder" in k[2])
    return encode / total if total else None


BENCH = """
import json, sys
from lmjax.benchmark import benchmark
from lmjax.configs import read_json
c = read_json(sys.argv[1])
r = benchmark(c, steps=int(sys.argv[2]), warmup=1, infer_batch=int(sys.argv[3]),
              num_landmarks=int(sys.argv[4]))
print(json.dumps(r["inference"]))
"""


def inference_rate(workdir: pathlib.Path, batch: int, steps: int, k: int) -> dict:
    args = [sys.executable, "-c", BENCH, str(workdir), str(steps), str(batch), str(k)]
    proc = subprocess.run(args, env=env(), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("benchmark failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def without_refine(workdir: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir()
    for p in workdir.iterdir():
        if p.name != "refine":
            (dest / p.name).symlink_to(p.resolve())
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/work/runs/isbi_best")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--no_refine_images", type=int, default=100, help="0: skip that part")
    p.add_argument("--decode_sample", type=int, default=50)
    p.add_argument("--write_sample", type=int, default=20)
    p.add_argument("--bench_steps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "experiments/results/predict_throughput_cpu"))
    p.add_argument("--readme_only", action="store_true", help="README.md from summary.json")
    p.add_argument(
        "--predict_flag", action="append", default=[], help="passed to every predict run"
    )
    opts = p.parse_args()
    results = pathlib.Path(opts.out)
    results.mkdir(parents=True, exist_ok=True)
    if opts.readme_only:
        summary = json.loads((results / "summary.json").read_text())
        (results / "README.md").write_text(markdown(summary))
        return 0
    workdir = pathlib.Path(opts.workdir)
    config = json.loads((workdir / "config.json").read_text())
    batch = config["train"]["batch_size"]  # predict's default batch (one device)
    k = len(json.loads((workdir / "landmarks.json").read_text())["names"])
    threads = min(batch, os.cpu_count() or 1)  # predict's decode pool
    sources = source_images()
    summary: dict = {
        "workdir": str(workdir),
        "refine_stage": (workdir / "refine").is_dir(),
        "batch": batch,
        "decode_threads_in_predict": threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "source_images": len(sources),
        "predict_flags": opts.predict_flag,
        "loadavg_before": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="predict_throughput_") as tmp:
        tmp = pathlib.Path(tmp)
        folder = tmp / "images"
        make_folder(folder, opts.images, sources)
        summary["predict"] = run_predict(workdir, folder, tmp / "out", batch, opts.predict_flag)
        print(json.dumps(summary["predict"]), flush=True)
        shutil.rmtree(tmp / "out")
        if opts.no_refine_images:
            small = tmp / "small"
            make_folder(small, opts.no_refine_images, sources)
            bare = without_refine(workdir, tmp / "bare_workdir")
            flags = opts.predict_flag
            summary["predict_small_refine"] = run_predict(workdir, small, tmp / "o1", batch, flags)
            summary["predict_small_no_refine"] = run_predict(bare, small, tmp / "o2", batch, flags)
            print(json.dumps(summary["predict_small_no_refine"]), flush=True)
        paths = sorted(folder.iterdir())[: opts.decode_sample]
        summary["decode_images_per_s_1_thread"] = round(decode_rate(paths, 1), 3)
        summary[f"decode_images_per_s_{threads}_threads"] = round(decode_rate(paths, threads), 3)
        summary["decode_sample"] = len(paths)
        summary["write_outputs_images_per_s"] = round(
            write_rate(workdir, paths[: opts.write_sample], tmp / "written"), 3
        )
        summary["write_sample"] = min(opts.write_sample, len(paths))
        frac = png_encode_fraction(workdir, paths[:5], tmp / "profiled")
        summary["write_outputs_png_encode_fraction"] = frac and round(frac, 3)
    inf = inference_rate(workdir, batch, opts.bench_steps, k)
    summary["inference_global"] = inf
    d, i = summary[f"decode_images_per_s_{threads}_threads"], inf["images_per_s"]
    summary["expected_serial_images_per_s"] = round(1 / (1 / d + 1 / i), 3)
    summary["expected_overlapped_images_per_s"] = round(min(d, i), 3)
    summary["loadavg_after"] = loadavg()
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "README.md").write_text(markdown(summary))
    print(json.dumps(summary, indent=2))
    return 0


def per_image_s(rate: float | None) -> str:
    return "" if not rate else f"{1 / rate:.3f}"


def breakdown(s: dict, refine_s: float | None) -> str:
    """Where the steady per-image time goes, from the parts measured alone."""
    threads = s["decode_threads_in_predict"]
    steady = s["predict"]["images_per_s_steady"]
    parts = {
        "decoding": 1 / s[f"decode_images_per_s_{threads}_threads"],
        "the global model": 1 / s["inference_global"]["images_per_s"],
        "writing the outputs": 1 / s["write_outputs_images_per_s"],
    }
    if refine_s is not None:
        parts["the refinement"] = max(refine_s, 0.0)
    total = 1 / steady
    listed = ", ".join(f"{name} {t:.3f} s ({t / total:.0%})" for name, t in parts.items())
    rest = total - sum(parts.values())
    png = s.get("write_outputs_png_encode_fraction")
    png_line = (
        f" Of the writing, {png:.0%} is Pillow's PNG (zlib) encoder saving the "
        "full-resolution overlay (cProfile of `write_outputs` on 5 images)."
        if png
        else ""
    )
    return (
        f"Where the steady {total:.3f} s per image goes, from the parts timed alone: "
        f"{listed}; the remaining {rest:+.3f} s ({rest / total:+.0%}) is what the parts "
        "alone do not show (resize and normalisation of the full-resolution images, "
        "measurements, hashing inside predict, and the load changing between "
        f"measurements).{png_line}"
    )


def markdown(s: dict) -> str:
    """The README: command, machine, load and the rates table."""
    threads = s["decode_threads_in_predict"]
    d1, d = s["decode_images_per_s_1_thread"], s[f"decode_images_per_s_{threads}_threads"]
    inf, w = s["inference_global"], s["write_outputs_images_per_s"]
    i = inf["images_per_s"]
    full, small_r = s["predict"], s.get("predict_small_refine")
    small_b = s.get("predict_small_no_refine")
    with_writing = 1 / (1 / d + 1 / i + 1 / w)
    refine_s = None
    if small_r and small_b and small_r["images_per_s_steady"] and small_b["images_per_s_steady"]:
        refine_s = 1 / small_r["images_per_s_steady"] - 1 / small_b["images_per_s_steady"]
    rows = [
        (f"`lmjax predict`, {full['images']} images, steady (after the first batch)",
         full["images_per_s_steady"]),
        (f"`lmjax predict`, {full['images']} images, overall (wall {full['wall_s']} s)",
         full["images_per_s_overall"]),
    ]  # fmt: skip
    if small_r and small_b:
        rows += [
            (f"`lmjax predict`, {small_r['images']} images, steady, with `refine/`",
             small_r["images_per_s_steady"]),
            (f"`lmjax predict`, {small_b['images']} images, steady, `refine/` hidden",
             small_b["images_per_s_steady"]),
        ]  # fmt: skip
    rows += [
        (f"decode only (`read_radiograph` + SHA-256), 1 thread, {s['decode_sample']} images", d1),
        (f"decode only, {threads} threads (predict's pool)", d),
        (f"inference only (`benchmark`, global model eval step, batch {inf['batch']})", i),
        (f"writing outputs only (`write_outputs`: JSON, overlay PNG, LabelMe), "
         f"{s['write_sample']} images", w),
        ("expected, decode and inference in series: 1/(1/decode + 1/inference)",
         s["expected_serial_images_per_s"]),
        ("expected, decode overlapped with inference: min(decode, inference)",
         s["expected_overlapped_images_per_s"]),
        ("expected, decode, inference and writing overlapped: min of the three",
         round(min(d, i, w), 3)),
        ("expected, decode + inference + writing in series", round(with_writing, 3)),
    ]  # fmt: skip
    table = "\n".join(
        f"| {name} | {rate:.2f} | {per_image_s(rate)} |" if rate else f"| {name} | n/a | |"
        for name, rate in rows
    )
    refine_line = (
        f"The refinement stage costs about {refine_s:.3f} s per image in the steady state "
        f"({small_r['images']}-image runs with and without `refine/`)."
        if refine_s is not None
        else ""
    )
    flags = "".join(f" --predict_flag={f}" for f in s.get("predict_flags", []))
    notes = "".join(f"\n- {n}" for n in s.get("notes", []))
    notes = f"\nNotes (added to summary.json by hand):\n{notes}\n" if notes else ""
    return f"""# `lmjax predict` throughput on CPU: {full["images"]} real cephalograms

Workdir `{s["workdir"]}` (refinement stage: {"yes" if s["refine_stage"] else "no"}),
predict batch {s["batch"]}; inputs are hard links to (or copies of) the
{s["source_images"]} ISBI 2015 cephalograms (1935 x 2400 JPEG), cycled under distinct
names in a temporary folder.

    python experiments/predict_throughput.py --workdir={s["workdir"]} \\
        --images={full["images"]}{flags}
    # which runs
    {full["command"]}

Machine: {s["machine"]}. Load average (1, 5, 15 min)
{s["loadavg_before"]} before and {s["loadavg_after"]} after.

Start-up (process start to the first batch's last `<stem>.json`):
{full["first_batch_done_s"]} s; tables after the last image: {full["tables_s"]} s.

| what | images/s | s/image |
|---|---|---|
{table}

How predict runs: `predict_files` overlaps three stages, one batch each: while a
batch is predicted (global model, then refinement) the next one decodes in a pool of
{threads} threads and the previous one's files are written by one writer thread. The
stages share the machine's cores, so they do not run at the slowest stage's rate
alone: the expected steady rate lies between the stages in series and the slowest
stage. The benchmark's inference is the global model's eval step on random inputs already on
the device; it leaves out the resize and normalisation, the refinement, the
measurements and the writing. {refine_line}

{breakdown(s, refine_s)}
{notes}"""


if __name__ == "__main__":
    sys.exit(main())
