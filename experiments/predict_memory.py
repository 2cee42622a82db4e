"""`lmjax predict` over thousands of images in flat memory, streaming, resumable.

Generates N small phantom radiographs (256x256 8-bit PNG) in a temporary folder,
trains a tiny phantom run (2 steps: the weights do not matter here), then:

1. runs `lmjax predict` on all of them, sampling the process's resident memory
   (psutil, else /proc/PID/status VmRSS) and the number of finished outputs
   (`<stem>.json`, written last) every `--interval` seconds;
2. runs it again into a fresh folder, kills it (SIGKILL) when about half of the
   images are done, and resumes with `--skip_existing`: the resumed job must keep
   every finished image, predict only the others, and end with N rows.

Writes under --out: memory.csv (seconds, RSS MiB, images done), memory.png, and
summary.json / README.md (command, machine, RSS at 10/50/90/100 % of the images,
growth after warm-up, the resume counts).

    python experiments/predict_memory.py --images=5000
    python experiments/predict_memory.py --images=5000 --code=/path/to/other/checkout \
        --out=/tmp/before   # the same measurement of another version of lmjax
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rss_bytes(pid: int) -> int | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    except Exception:  # the process is gone
        return None
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def done_count(out: pathlib.Path) -> int:
    """Finished images: their `<stem>.json` (renamed into place last)."""
    try:
        with os.scandir(out) as it:
            return sum(
                1
                for e in it
                if e.name.endswith(".json")
                and not e.name.endswith(".labelme.json")
                and not e.name.startswith(".")
                and e.name not in ("provenance.json", "review.json")
            )
    except FileNotFoundError:
        return 0


def make_images(folder: pathlib.Path, n: int, size: int) -> None:
    from lmjax.data.phantom import render_phantom

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    bases = [render_phantom(7, i, image_size=(size, size))[0] for i in range(32)]
    for i in range(n):
        noise = rng.normal(0, 20, (size, size))
        pixels = np.clip((bases[i % len(bases)] + noise) / 4095 * 255, 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i:05d}.png")


def lmjax_command(code: pathlib.Path | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env["LMJAX_PROGRESS"] = "off"
    if code is not None:  # another checkout of lmjax, ahead of the installed one
        env["PYTHONPATH"] = f"{code}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return [sys.executable, "-m", "lmjax.cli"], env


def run_sampled(args, env, out, interval, kill_at=None):
    """Runs `args`, sampling `(seconds, rss, done)`; kills it with SIGKILL once
    `kill_at` images are done. Returns (samples, exit code, stdout, stderr)."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    t0, samples = time.monotonic(), []
    while proc.poll() is None:
        rss = rss_bytes(proc.pid)
        done = done_count(out)
        if rss is not None:
            samples.append((time.monotonic() - t0, rss, done))
        if kill_at is not None and done >= kill_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(interval)
    proc.wait()
    log.seek(0)
    return samples, proc.returncode, log.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--interval", type=float, default=0.5, help="sampling period, s")
    p.add_argument("--out", default=str(ROOT / "experiments/results/predict_memory"))
    p.add_argument("--code", default=None, help="a checkout of lmjax to measure instead")
    p.add_argument("--no_resume", action="store_true", help="skip the kill-and-resume run")
    opts = p.parse_args()
    results = pathlib.Path(opts.out)
    results.mkdir(parents=True, exist_ok=True)
    cmd, env = lmjax_command(pathlib.Path(opts.code) if opts.code else None)
    with tempfile.TemporaryDirectory(prefix="predict_memory_") as tmp:
        tmp = pathlib.Path(tmp)
        t = time.monotonic()
        make_images(tmp / "images", opts.images, opts.size)
        print(f"{opts.images} images in {time.monotonic() - t:.0f} s", flush=True)
        workdir = tmp / "run"
        subprocess.run(
            [*cmd, "train", "--config=lmjax/configs/phantom.py:tiny", f"--workdir={workdir}",
             "--config.train.steps=2", "--config.train.eval_every=2",
             "--config.train.log_every=1"],
            env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        out = tmp / "out"
        predict = [*cmd, "predict", f"--workdir={workdir}", f"--output_dir={out}"]
        predict_args = [*predict, str(tmp / "images")]
        t = time.monotonic()
        samples, code, log = run_sampled(predict_args, env, out, opts.interval)
        wall = time.monotonic() - t
        if code != 0:
            print(log[-3000:])
            return 1
        rows = sum(1 for _ in open(out / "predictions.csv")) - 1
        summary = {
            "command": " ".join(["lmjax", *predict_args[len(cmd) :]]),
            "images": opts.images,
            "image_size": [opts.size, opts.size],
            "wall_s": round(wall, 1),
            "table_rows": rows,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "code": opts.code or "this checkout",
            **rss_summary(samples, opts.images),
        }
        if not opts.no_resume:
            summary["resume"] = resume_check(predict, tmp, env, opts)
        with open(results / "memory.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seconds", "rss_mib", "images_done"])
            w.writerows((f"{s:.2f}", f"{r / 2**20:.1f}", d) for s, r, d in samples)
        plot(samples, results / "memory.png", opts.images)
        (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (results / "README.md").write_text(markdown(summary))
        print(json.dumps(summary, indent=2))
        shutil.rmtree(out, ignore_errors=True)
    return 0


def rss_summary(samples, n: int) -> dict:
    """RSS (MiB) when 10, 50, 90 and 100 % of the images were done, the peak while
    predicting and after (the tables), and the growth from 10 % to 100 %."""
    rss = np.array([r for _, r, _ in samples], float) / 2**20
    done = np.array([d for _, _, d in samples])
    at = {}
    for pct in (10, 50, 90, 100):
        idx = np.flatnonzero(done >= pct / 100 * n)
        at[f"rss_mib_at_{pct}pct"] = round(float(rss[idx[0]]), 1) if idx.size else None
    looping = done < n
    out = {
        **at,
        "peak_rss_mib_predicting": round(float(rss[looping].max()), 1),
        "peak_rss_mib": round(float(rss.max()), 1),
        "streamed": bool(((done > 0) & (done < n)).sum() >= 3),  # outputs appeared as it went
    }
    if at["rss_mib_at_10pct"] is not None and at["rss_mib_at_100pct"] is not None:
        out["growth_mib_10_to_100pct"] = round(at["rss_mib_at_100pct"] - at["rss_mib_at_10pct"], 1)
    return out


def resume_check(predict, tmp: pathlib.Path, env, opts) -> dict:
    """Kill a second job half way, resume it with --skip_existing, count."""
    out = tmp / "resumed"
    args = [*predict[:-1], f"--output_dir={out}", str(tmp / "images")]
    _, code, _ = run_sampled(args, env, out, 0.2, kill_at=opts.images // 2)
    at_kill = done_count(out)
    partial = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    t = time.monotonic()
    proc = subprocess.run(
        [*args[:-1], "--skip_existing", args[-1]], env=env, capture_output=True, text=True
    )
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    rows = sum(1 for _ in open(out / "predictions.csv")) - 1 if proc.returncode == 0 else None
    return {
        "killed_exit_code": code,
        "done_at_kill": at_kill,
        "temporary_files_left_by_the_kill": len(partial),
        "resumed_exit_code": proc.returncode,
        "resumed_output": line,
        "resumed_wall_s": round(time.monotonic() - t, 1),
        "table_rows_after_resume": rows,
    }


def plot(samples, path: pathlib.Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.array([x for x, _, _ in samples])
    rss = np.array([r for _, r, _ in samples]) / 2**20
    done = np.array([d for _, _, d in samples])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(s, rss, color="tab:blue", label="resident memory (MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)", color="tab:blue")
    ax.set_ylim(0, rss.max() * 1.15)
    ax2 = ax.twinx()
    ax2.plot(s, done, color="tab:orange", label="images written")
    ax2.set_ylabel("images written", color="tab:orange")
    ax2.set_ylim(0, n * 1.05)
    ax.set_title(f"lmjax predict over {n} images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(s: dict) -> str:
    lines = [
        f"# lmjax predict over {s['images']} images: memory",
        "",
        f"Command (inputs: {s['images']} phantom PNGs of {s['image_size'][0]}x"
        f"{s['image_size'][1]}, a tiny phantom run trained 2 steps):",
        "",
        f"    {s['command']}",
        "",
        "Measured by `python experiments/predict_memory.py` "
        f"(code: {s['code']}) on {s['machine']}; RSS sampled every 0.5 s "
        "(memory.csv, memory.png).",
        "",
        "| images done | RSS (MiB) |",
        "|---|---|",
    ]
    for pct in (10, 50, 90, 100):
        lines.append(f"| {pct} % | {s[f'rss_mib_at_{pct}pct']} |")
    lines += [
        "",
        f"- growth from 10 % to 100 % of the images: {s.get('growth_mib_10_to_100pct')} MiB",
        f"- peak while predicting: {s['peak_rss_mib_predicting']} MiB; overall peak "
        f"(with the final tables): {s['peak_rss_mib']} MiB",
        f"- wall time {s['wall_s']} s; predictions.csv rows: {s['table_rows']}; outputs "
        f"streamed (appeared while it ran): {s['streamed']}",
    ]
    r = s.get("resume")
    if r:
        lines += [
            f"- killed (SIGKILL, exit {r['killed_exit_code']}) with {r['done_at_kill']} images "
            f"done ({r['temporary_files_left_by_the_kill']} temporary files left); resumed with "
            f"--skip_existing (exit {r['resumed_exit_code']}, {r['resumed_wall_s']} s): "
            f'"{r["resumed_output"]}"; predictions.csv rows after: '
            f"{r['table_rows_after_resume']}",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
