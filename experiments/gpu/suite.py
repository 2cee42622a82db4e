"""The accelerator suite: every throughput figure lmjax claims, in one command.

    experiments/gpu/run_all.sh [--tiny] [--out DIR] [--items a,b] [--budget NAME=S] ...

Rows (experiments/gpu/suite_rows.py says what each measures): unet, hrnet, vit_b_lora,
sam_decoder (train images/s, MFU from XLA's cost analysis of the compiled step,
peak memory, compile time, inference images/s at batch 1 and 32), input (the Grain
pipeline alone vs the train step it feeds, augmentation on the device) and
torch_unet (the PyTorch port's step on the same GPU, when torch is installed).

How it runs: a probe process names the device; then each row runs in a worker
process (`--worker`) with its own time budget, inside a total budget. A row that
overruns is killed and recorded as a timeout, a row that fails is recorded with
its error, and an out-of-memory failure is retried at half the batch; none of
these stops the suite. On an accelerator every row gets its own process, so its
peak memory (`memory_stats()["peak_bytes_in_use"]`, a per-process high-water
mark) is its own; on CPU, which keeps no memory statistics, one worker runs the
rows in turn, to pay for one start-up instead of five.

Without an accelerator (or with `--tiny`) the same rows run at 32x32 with tiny
widths in float32 and 2 steps: a check that the suite still works, not a figure.

Writes `suite.json` and `suite.md` to `--out` (default:
experiments/results/gpu/<device>-<date>/), and each worker's log beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import suite_report  # noqa: E402
import suite_rows  # noqa: E402

ITEMS = ("unet", "hrnet", "vit_b_lora", "sam_decoder", "input", "torch_unet")
# Seconds per row on an accelerator, start-up and compilation included; their sum
# stays inside TOTAL_S so that one slow row cannot take the others' time.
BUDGET_S = {
    "unet": 75,
    "hrnet": 120,  # the most distinct convolutions: the longest initialisation and autotuning
    "vit_b_lora": 70,
    "sam_decoder": 75,
    "input": 60,
    "torch_unet": 50,
}
TINY_BUDGET_S = dict.fromkeys(ITEMS, 120)
TOTAL_S = 450  # rows only; with the probe and the report the run stays under 8 minutes
STEPS = {False: (20, 3), True: (2, 1)}  # (timed, warm-up) steps, full / tiny
OOM = re.compile(r"RESOURCE_EXHAUSTED|out of memory|OutOfMemory", re.IGNORECASE)
EXIT_OOM = 3
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"


def _pairs(values: list[str], what: str, cast) -> dict[str, Any]:
    out = {}
    for v in values:
        name, sep, x = v.partition("=")
        if not sep or name not in ITEMS:
            raise SystemExit(f"--{what} takes NAME=VALUE, NAME one of {', '.join(ITEMS)}: {v!r}")
        out[name] = cast(x)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (default without a GPU)")
    p.add_argument("--out", default="", help="result folder; default under experiments/results/gpu")
    p.add_argument("--items", default=",".join(ITEMS), help="rows to run, comma-separated")
    p.add_argument("--budget", action="append", default=[], help="NAME=SECONDS for one row")
    p.add_argument("--batch", action="append", default=[], help="NAME=N instead of the row's batch")
    p.add_argument("--total_s", type=float, default=TOTAL_S, help="budget of all rows together")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 20, tiny 2)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps (default 3, tiny 1)")
    p.add_argument(
        "--isolate",
        choices=("auto", "yes", "no"),
        default="auto",
        help="one process per row (auto: where the device keeps memory statistics)",
    )
    p.add_argument(
        "--compilation_cache",
        default="",
        help="JAX persistent compilation cache for the workers (off by default: a cached "
        "program's compile time is its load time)",
    )
    # Internal: the processes the suite starts.
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.items = [n for n in args.items.split(",") if n]
    unknown = sorted(set(args.items) - set(ITEMS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; the rows are {', '.join(ITEMS)}")
    args.budget = _pairs(args.budget, "budget", float)
    args.batch = _pairs(args.batch, "batch", int)
    return args


# ---------------------------------------------------------------- probe and worker


def probe() -> dict[str, Any]:
    """The device the workers will see, and the peak MFU is measured against."""
    import jax

    from lmjax import hardware
    from lmjax.benchmark import versions

    kind = jax.devices()[0].device_kind
    name = hardware.gpu_name(kind)
    return {
        "backend": jax.default_backend(),
        "device_kind": kind,
        "device_count": jax.device_count(),
        "peak_name": name,
        "peak_bf16_tflops": None if name is None else hardware.PEAK_TFLOPS[name]["bf16"],
        "versions": versions(),
        "platform": platform.platform(),
    }


def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)  # atomic: the parent never reads half a file


def _jsonable(x):
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if isinstance(x, tuple | set):
        return list(x)
    return str(x)


def worker(args) -> int:
    """Measures `args.items` in turn; each row's result lands in `<work>/<name>.json`.
    Stops after an out-of-memory failure: the device may be left fragmented."""
    if args.compilation_cache:
        from lmjax.compilation import enable_persistent_cache

        # Every program: the tiny mode's many small ones are most of its time.
        enable_persistent_cache(args.compilation_cache, min_compile_time_s=0.0)
    work = pathlib.Path(args.work)
    steps, warmup = args.steps, args.warmup
    for name in args.items:
        t0 = time.perf_counter()
        try:
            row, raw = suite_rows.measure(
                name, tiny=args.tiny, batch=args.batch.get(name), steps=steps, warmup=warmup
            )
            result = {"status": "ok", **row, "raw": raw}
        except Exception as e:  # recorded in the table; the suite goes on
            import traceback

            text = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            result = {"status": "error", "error": text[-2000:], "oom": bool(OOM.search(text))}
        result["seconds"] = time.perf_counter() - t0
        _write_json(work / f"{name}.json", result)
        print(f"[worker] {name}: {result['status']} in {result['seconds']:.1f} s", flush=True)
        if result.get("oom"):
            return EXIT_OOM
    return 0


# ---------------------------------------------------------------- the parent


def _child(cmd: list[str], log: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as f:
        # A session of its own, so that a timeout kills its threads' children too.
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(log: pathlib.Path, n: int = 1500) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-n:].strip()


def _run_probe() -> dict[str, Any]:
    # Without preallocation: the probe must not hold the GPU's memory while it starts.
    env = os.environ | {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    cmd = [sys.executable, __file__, "--probe"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"the device probe did not answer in {e.timeout} s") from e
    line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"the device probe failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return json.loads(line)


class Suite:
    """Runs rows in worker processes under their budgets; `rows` holds each result."""

    def __init__(self, args, device: dict[str, Any], out: pathlib.Path):
        self.args, self.device, self.out = args, device, out
        self.work = out / "rows"
        self.work.mkdir(parents=True, exist_ok=True)
        self.budget = {**(TINY_BUDGET_S if args.tiny else BUDGET_S), **args.budget}
        self.batch = dict(args.batch)
        self.start = time.monotonic()
        self.deadline = self.start + args.total_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.first_start: dict[str, float] = {}
        self.attempts: dict[str, list[dict[str, Any]]] = {}
        self.workers = 0

    def _command(self, names: list[str]) -> list[str]:
        a = self.args
        cmd = [sys.executable, __file__, "--worker", "--work", str(self.work)]
        cmd += ["--items", ",".join(names), "--steps", str(a.steps), "--warmup", str(a.warmup)]
        cmd += [f"--batch={n}={b}" for n, b in self.batch.items() if n in names]
        cmd += ["--tiny"] if a.tiny else []
        cmd += [f"--compilation_cache={a.compilation_cache}"] if a.compilation_cache else []
        return cmd

    def _env(self, names: list[str]) -> dict[str, str]:
        env = dict(os.environ)
        if self.args.tiny and self.device["backend"] == "cpu":
            # Tiny mode checks that the rows run; its time is compiling, which LLVM's
            # optimisation level 0 makes about 3x faster (XLA's own passes still run).
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
        if names == ["torch_unet"]:
            # lmjax only builds the weights to copy: keep JAX off the GPU torch measures.
            env["JAX_PLATFORMS"] = "cpu"
        return env

    def _finish(self, name: str, result: dict[str, Any]) -> bool:
        """Records a row's result; False when it is to run again at half its batch."""
        if result.get("oom") and result.get("status") != "ok":
            batch = self._current_batch(name)
            self.attempts.setdefault(name, []).append({"batch": batch, "error": result["error"]})
            if batch >= 2:
                self.batch[name] = batch // 2
                print(f"[suite] {name}: out of memory at batch {batch}, again at {batch // 2}")
                return False
        result["attempts"] = self.attempts.get(name, [])
        self.rows[name] = result
        self._say(name, result)
        return True

    def _current_batch(self, name: str) -> int:
        if name in self.batch:
            return self.batch[name]
        key = name if name in suite_rows.BATCH else "unet"
        return (suite_rows.TINY_BATCH if self.args.tiny else suite_rows.BATCH)[key]

    def _say(self, name: str, r: dict[str, Any]) -> None:
        if r["status"] == "ok":
            mfu = "" if r.get("mfu") is None else f", MFU {r['mfu']:.1%}"
            what = f"{r['train_images_per_s']:.1f} train images/s{mfu}"
        else:
            what = r.get("error", "")[:200]
        print(f"[suite] {name}: {r['status']} ({r.get('seconds', 0):.0f} s) {what}", flush=True)

    def _collect(self, pending: list[str]) -> bool:
        """Takes in the rows the worker has written; True if any."""
        found = False
        for n in list(pending):
            f = self.work / f"{n}.json"
            if f.exists():
                result = json.loads(f.read_text())
                f.unlink()
                if self._finish(n, result):
                    pending.remove(n)
                found = True
        return found

    def run_group(self, names: list[str]) -> None:
        """Runs `names` in one worker, a new one after a timeout, crash or retry."""
        pending = [n for n in names if n not in self.rows]
        while pending:
            if time.monotonic() >= self.deadline:
                for n in pending:
                    error = f"the suite's total budget ({self.args.total_s:.0f} s) was spent"
                    self._finish(n, {"status": "skipped", "error": error})
                return
            self.workers += 1
            log = self.out / f"worker-{self.workers}.log"
            proc = _child(self._command(pending), log, self._env(pending))
            item_start, killed = time.monotonic(), False
            while proc.poll() is None and pending:
                if self._collect(pending):
                    item_start = time.monotonic()
                    continue
                current = pending[0]
                began = self.first_start.setdefault(current, item_start)
                limit = min(began + self.budget[current], self.deadline)
                if time.monotonic() > limit:
                    _kill(proc)
                    killed = True
                    whose = "its budget" if limit < self.deadline else "the suite's total budget"
                    self._finish(
                        current,
                        {
                            "status": "timeout",
                            "error": f"killed at {whose}, {limit - began:.0f} s (log {log.name})",
                            "seconds": time.monotonic() - began,
                        },
                    )
                    pending.remove(current)
                    break
                time.sleep(0.2)
            if not killed:
                proc.wait()
                self._collect(pending)  # written just before the worker ended
                if pending and proc.returncode != EXIT_OOM:
                    # Ended without the row it was measuring: a crash, or killed by the system.
                    current, text = pending[0], _tail(log)
                    began = self.first_start.get(current, item_start)
                    error = f"worker exited with {proc.returncode} without a result: {text[-800:]}"
                    result = {"status": "error", "error": error, "oom": bool(OOM.search(text))}
                    if self._finish(current, result | {"seconds": time.monotonic() - began}):
                        pending.remove(current)

    def run(self) -> None:
        names = list(self.args.items)
        if "torch_unet" in names and not suite_rows.torch_available():
            self.rows["torch_unet"] = {
                "status": "skipped",
                "error": "torch is not installed (pip install '.[peer]' to compare with the port)",
            }
            self._say("torch_unet", self.rows["torch_unet"])
        jax_rows = [n for n in names if n != "torch_unet"]
        if self.args.isolate == "yes" or (
            self.args.isolate == "auto" and self.device["backend"] != "cpu"
        ):
            groups = [[n] for n in jax_rows]
        else:
            groups = [jax_rows] if jax_rows else []
        if "torch_unet" in names and "torch_unet" not in self.rows:
            groups.append(["torch_unet"])  # always alone: its own JAX_PLATFORMS
        for group in groups:
            self.run_group(group)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe()), flush=True)
        return 0
    if args.worker:
        return worker(args)
    t0 = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    device = _run_probe()
    if device["backend"] == "cpu" and not args.tiny:
        print("[suite] no accelerator visible to JAX: running the tiny CPU check instead")
    args.tiny = args.tiny or device["backend"] == "cpu"
    steps, warmup = STEPS[args.tiny]
    args.steps = args.steps or steps
    args.warmup = warmup if args.warmup < 0 else args.warmup
    default = ROOT / "experiments/results/gpu" / f"{_slug(device['device_kind'])}-{date}"
    out = pathlib.Path(args.out or default)
    out.mkdir(parents=True, exist_ok=True)
    mode = "tiny" if args.tiny else "full"
    print(f"[suite] {device['device_kind']} ({device['backend']}), mode {mode}, results in {out}")
    suite = Suite(args, device, out)
    suite.run()
    rows = {n: suite.rows[n] for n in args.items if n in suite.rows}
    suite_report.add_goals_and_comparisons(rows)
    result = {
        "date": date,
        "command": shlex.join(["experiments/gpu/run_all.sh", *(argv or sys.argv[1:])]),
        "mode": mode,
        "device": device,
        "budget_s": {"total": args.total_s, **suite.budget},
        "steps": args.steps,
        "warmup": args.warmup,
        "compilation_cache": args.compilation_cache or None,
        "goals_mfu": suite_report.GOALS,
        "rows": rows,
        "wall_s": time.monotonic() - t0,
    }
    _write_json(out / "suite.json", result)
    (out / "suite.md").write_text(suite_report.markdown(result))
    shutil.rmtree(suite.work, ignore_errors=True)  # a killed worker may leave a partial file
    print(suite_report.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
