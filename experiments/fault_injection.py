"""Crash-exact resume: kill -9 a phantom training at seeded random moments, resume it
each time, and check that it ends where an uninterrupted run ends, bit for bit.

Trains the tiny phantom config (augmentation on) in a child process, once without
interruption (the reference) and once killed with SIGKILL `--kills` times, each
time restarted on the same workdir until it finishes. The kill moments are drawn
from `--seed`, of four kinds:

    start   a drawn delay (0.5-8 s) after the start: imports, restore, compilation
    step    once the run has fed the batch of a drawn step (read from its batch log)
    save    once the run has passed a drawn step, at the first moment a save is in
            flight (an `*.orbax-checkpoint-tmp*` folder in the checkpoints folder)
    time    a drawn delay (0-3 s) after the run fed its first batch: anywhere in a
            step, a validation or a save

Both runs write their data order (`LMJAX_LOG_BATCHES=1`: per step the record indices
and a SHA-256 of the batch). At the end every array of the final train state
(parameters, model state, optimizer state, step, RNG key) and the data order of
every step must equal the reference's exactly. Prints a table and writes JSON.

    python experiments/fault_injection.py --kills=10 --seed=0 \\
        --output=experiments/results/fault_injection/result.json

The child runs `lmjax.train.loop.train` (what `lmjax train` runs, without the
evaluation after it) with a shared persistent compilation cache, so that each
restart costs start-up, not compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("start", "step", "save", "time")


def overrides(steps: int, save_every: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The config's changes; `extra` (`FIELD=VALUE`, e.g. a smaller model) come last."""
    return [
        f"train.steps={steps}",
        f"train.eval_every={save_every}",
        f"train.log_every={save_every}",
        "train.tensorboard=False",
        "data.phantom_size=24",
        *extra,
    ]


def child(workdir: str, cache: str, steps: int, save_every: int, extra=()) -> None:
    """The training process that gets killed (run with `--child`)."""
    from lmjax import compilation, configs
    from lmjax.train import loop

    compilation.enable_persistent_cache(cache, min_compile_time_s=0)
    config = configs.load(
        str(REPO / "lmjax/configs/phantom.py") + ":tiny", overrides(steps, save_every, extra)
    )
    loop.train(config, workdir, log=lambda m: print(m, flush=True))


def _launch(
    workdir: pathlib.Path, cache: pathlib.Path, steps: int, save_every: int, n: int, extra=()
):
    cmd = [sys.executable, __file__, "--child", str(workdir), f"--cache={cache}"]
    cmd += [f"--steps={steps}", f"--save_every={save_every}", *(f"--set={x}" for x in extra)]
    env = {**os.environ, "LMJAX_LOG_BATCHES": "1", "PYTHONPATH": str(REPO)}
    out = open(workdir.parent / f"{workdir.name}.run{n}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out


def _log_size(workdir: pathlib.Path) -> int:
    path = workdir / "batches.jsonl"
    return path.stat().st_size if path.exists() else 0


def _last_step(workdir: pathlib.Path, offset: int = 0) -> int:
    """The newest step in the batch log after byte `offset` (0: none yet): what this
    run has fed, not what the runs before it had."""
    path = workdir / "batches.jsonl"
    if not path.exists():
        return 0
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    for line in reversed(text.splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def _tmp_folders(workdir: pathlib.Path) -> list[str]:
    try:
        return sorted(
            e.name for e in os.scandir(workdir / "checkpoints") if ".orbax-checkpoint-tmp" in e.name
        )
    except FileNotFoundError:
        return []


def _saving(workdir: pathlib.Path) -> bool:
    return bool(_tmp_folders(workdir))


def _steps_on_disk(workdir: pathlib.Path) -> list[int]:
    where = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in where.iterdir() if p.name.isdigit()) if where.exists() else []
    )


def _run_to_end(proc, timeout: float) -> None:
    if proc.wait(timeout=timeout) != 0:
        raise RuntimeError(f"training child exited with {proc.returncode}")


def plan(kills: int, steps: int, seed: int) -> list[dict]:
    """`kills` kill moments: a kind and a step (or a delay) each, steps spread over
    the run so that every kill finds the run before its end."""
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.choice(np.arange(1, steps), size=kills, replace=kills >= steps - 1))
    out = []
    for target in targets:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        delay = float(rng.uniform(0.5, 8.0) if kind == "start" else rng.uniform(0.0, 3.0))
        out.append({"kind": kind, "after_step": int(target), "delay_s": delay})
    return out


def _kill_when_due(proc, workdir: pathlib.Path, moment: dict, started: float, timeout: float):
    """Polls until `moment` is due, then SIGKILLs; what it found at the kill, or None
    when the run ended first."""
    deadline = started + timeout
    offset = _log_size(workdir)
    first_batch = None
    while proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"no kill moment {moment} within {timeout} s")
        step = _last_step(workdir, offset)
        if step and first_batch is None:
            first_batch = time.time()
        due = {
            "start": time.time() - started >= moment["delay_s"],
            "step": step >= moment["after_step"],
            "save": step >= moment["after_step"] and _saving(workdir),
            "time": first_batch is not None and time.time() - first_batch >= moment["delay_s"],
        }[moment["kind"]]
        if due:
            in_save = _saving(workdir)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return {
                "killed_at_step": _last_step(workdir, offset),
                "save_in_flight": in_save,
                "tmp_folders_left": _tmp_folders(workdir),
            }
        time.sleep(0.002)
    return None


def _resumed_from(log_file: pathlib.Path) -> int | None:
    """The step the run restored, or None: it started afresh or died before restoring."""
    for line in log_file.read_text().splitlines():
        if line.startswith("resumed from step "):
            return int(line.split()[3])
    return None


def _final_state(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    import jax

    from lmjax.train import restore

    _, _, state, _ = restore.restore_trained(workdir, which="latest")
    leaves = {}
    for path, leaf in jax.tree.leaves_with_path(state):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        leaves[jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
    return leaves


def compare(reference: pathlib.Path, faulty: pathlib.Path, steps: int) -> dict:
    """Bit-for-bit comparison of the final states and the per-step data order."""
    from lmjax.train import batch_log

    a, b = _final_state(reference), _final_state(faulty)
    differing = sorted(
        k
        for k in a.keys() | b.keys()
        if k not in a
        or k not in b
        or a[k].dtype != b[k].dtype
        or a[k].shape != b[k].shape
        or a[k].tobytes() != b[k].tobytes()
    )
    order_a, order_b = (
        batch_log.read(reference / "batches.jsonl"),
        batch_log.read(faulty / "batches.jsonl"),
    )
    wanted = set(range(1, steps + 1))
    order_differs = sorted(
        s for s in wanted if s not in order_a or s not in order_b or order_a[s] != order_b[s]
    )
    return {
        "arrays": len(a),
        "values": int(sum(x.size for x in a.values())),
        "arrays_differing": differing,
        "steps_in_reference_log": len(order_a),
        "steps_with_different_batches": order_differs,
        "identical": not differing and not order_differs and set(order_a) == wanted,
    }


def run(
    kills: int = 10,
    seed: int = 0,
    steps: int = 40,
    save_every: int = 4,
    root: str | pathlib.Path | None = None,
    timeout: float = 600.0,
    log=print,
    extra: tuple[str, ...] = (),
) -> dict:
    """Reference run, killed run, comparison; the result (see the module docstring).
    `extra` are more config overrides (`FIELD=VALUE`) for every training process."""
    root = pathlib.Path(root or tempfile.mkdtemp(prefix="fault_injection_"))
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "jax_cache"
    reference, faulty = root / "reference", root / "faulty"
    t0 = time.time()
    proc, out = _launch(reference, cache, steps, save_every, 0, extra)
    _run_to_end(proc, timeout)
    out.close()
    reference_s = time.time() - t0
    log(f"reference run: {steps} steps in {reference_s:.1f} s")

    records, n = [], 0
    for moment in plan(kills, steps, seed):
        n += 1
        started = time.time()
        proc, out = _launch(faulty, cache, steps, save_every, n, extra)
        found = _kill_when_due(proc, faulty, moment, started, timeout)
        out.close()
        if found is None:  # finished before the moment came; no further kills possible
            raise RuntimeError(f"run {n} finished before kill moment {moment}")
        record = {
            "kill": n,
            **moment,
            **found,
            "resumed_from": _resumed_from(root / f"faulty.run{n}.log"),
            "steps_on_disk_after": _steps_on_disk(faulty),
            "seconds": round(time.time() - started, 2),
        }
        records.append(record)
        log(_row(record))
    started = time.time()
    proc, out = _launch(faulty, cache, steps, save_every, n + 1, extra)
    _run_to_end(proc, timeout)
    out.close()
    final_resume = _resumed_from(root / f"faulty.run{n + 1}.log")
    log(f"final run resumed from step {final_resume} and finished in {time.time() - started:.1f} s")
    result = {
        "command": f"python experiments/fault_injection.py --kills={kills} --seed={seed} "
        f"--steps={steps} --save_every={save_every}" + "".join(f" --set={x}" for x in extra),
        "config": "lmjax/configs/phantom.py:tiny with "
        + " ".join(overrides(steps, save_every, extra)),
        "kills": records,
        "final_run_resumed_from": final_resume,
        "kills_with_save_in_flight": sum(r["save_in_flight"] for r in records),
        "tmp_folders_at_end": _tmp_folders(faulty),
        "comparison": compare(reference, faulty, steps),
        "reference_seconds": round(reference_s, 1),
        "total_seconds": round(time.time() - t0, 1),
        "workdir": str(root),
    }
    log(table(result))
    return result


def _row(r: dict) -> str:
    moment = {
        "start": f"start + {r['delay_s']:.2f} s",
        "time": f"1st batch + {r['delay_s']:.2f} s",
    }.get(r["kind"], f"{r['kind']} after step {r['after_step']}")
    resumed = "-" if r["resumed_from"] is None else r["resumed_from"]
    return (
        f"{r['kill']:>4}  {moment:<22}  {r['killed_at_step']:>6}  "
        f"{'yes' if r['save_in_flight'] else 'no':>5}  {resumed:>7}  "
        f"{','.join(map(str, r['steps_on_disk_after'])):<14}  {r['seconds']:>6.1f}"
    )


def table(result: dict) -> str:
    head = (
        f"{'kill':>4}  {'moment':<22}  {'killed':>6}  {'save':>5}  {'resumed':>7}  "
        f"{'steps on disk':<14}  {'run':>6}\n"
        f"{'':>4}  {'':<22}  {'@step':>6}  {'open':>5}  {'from':>7}  {'after kill':<14}  {'s':>6}"
    )
    rows = [_row(r) for r in result["kills"]]
    c = result["comparison"]
    verdict = "IDENTICAL" if c["identical"] else "DIFFERENT"
    tail = (
        f"final state: {c['arrays']} arrays, {c['values']} values, "
        f"{len(c['arrays_differing'])} differing; data order: "
        f"{c['steps_in_reference_log']} steps, {len(c['steps_with_different_batches'])} differing "
        f"-> {verdict} to the uninterrupted run"
    )
    return "\n".join([head, *rows, tail])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save_every", type=int, default=4)
    parser.add_argument("--root", default=None, help="working folder (default: a new temp one)")
    parser.add_argument("--output", default=None, help="result JSON")
    parser.add_argument(
        "--set", action="append", default=[], help="FIELD=VALUE config override (repeatable)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.cache, args.steps, args.save_every, args.set)
        return 0
    result = run(args.kills, args.seed, args.steps, args.save_every, args.root, extra=args.set)
    if args.output:
        path = pathlib.Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["comparison"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
