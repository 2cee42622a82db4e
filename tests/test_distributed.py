"""Two processes train like one: `lmjax train` as a 2-process CPU job over gloo.

The reference is one process that reads the same global batches: its input
pipeline concatenates the slices of process 0 and process 1, as
`parallel.shard_batch` does across processes. The per-step losses and gradient
norms, the validation after training, and the validation of the reference's
checkpoint restored on two processes must agree. The model is the tiny phantom
U-Net shrunk further (32 x 32, two levels, 4 features) and XLA compiles at LLVM's
optimisation level 0: the three processes spend most of their time compiling. The
reference writes every program to the test run's persistent compilation cache,
where the two processes (and later runs) read what they share with it.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from lmjax import parallel

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4
TIMEOUT = 1800  # seconds per phase; minutes of wall time when other jobs share the cores

WORKER = """
import sys

import numpy as np

role, workdir, steps, port, process_id, reference = sys.argv[1:] + [None] * (7 - len(sys.argv))
overrides = {
    "data.augment": "",
    "data.input_size": (32, 32),
    "model.num_levels": 2,
    "model.features": 4,
    "train.steps": int(steps),
    "train.log_every": 1,
    "train.eval_every": int(steps),
    "train.tensorboard": False,
    # SGD: Adam's first steps are sign(gradient), which turns rounding noise in
    # gradients that are nearly 0 into full steps that differ between 1 and 2 devices.
    "optim.name": "sgd",
    "optim.learning_rate": 0.05,
    "optim.warmup_steps": 0,
    # A soft-argmax at the tiny config's temperature (0.02) is nearly a hard argmax:
    # on the untrained model's flat heatmaps, rounding noise picks between near-ties.
    "task.extractor_temperature": 1.0,
}
if role == "reference":  # one process reading what processes 0 and 1 of 2 read
    from lmjax.configs.phantom import get_config
    from lmjax.train import loop, setup

    one_process = setup.make_pipeline

    class TwoSlices:
        def __init__(self, dataset, *, batch_size, **kwargs):
            self.its = [
                one_process(dataset, batch_size=batch_size // 2, process_index=i,
                            process_count=2, **kwargs)
                for i in range(2)
            ]

        def __next__(self):
            parts = [next(it) for it in self.its]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        def get_state(self):
            return {str(i): it.get_state() for i, it in enumerate(self.its)}

        def set_state(self, state):
            for i, it in enumerate(self.its):
                it.set_state(state[str(i)])

    setup.make_pipeline = TwoSlices
    config = get_config("tiny")
    with config.unlocked():
        config.update_from_flattened_dict(overrides)
    loop.train(config, workdir)
else:  # process i of 2, as a user starts it
    sys.argv = [
        "lmjax", "train", "--config=lmjax/configs/phantom.py:tiny", f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
        f"--process_id={process_id}", "--cpu_collectives=gloo",
    ]  # before importing the CLI: the config flag reads its overrides from sys.argv
    from lmjax import cli

    try:
        cli.run()  # trains, then evaluates its own checkpoint on the test split
    except SystemExit as exit:
        assert exit.code in (0, None), f"lmjax train exited with {exit.code}"
    import jax

    assert jax.process_count() == 2
    # The one-process checkpoint, restored and validated on two processes.
    cli._evaluate_workdir(reference, "val", f"{workdir}/val_of_reference.json")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, *args], cwd=REPO, env=env, stdout=out, stderr=out
        )


def _finish(procs: list[subprocess.Popen], logs: list[pathlib.Path], timeout: float) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:  # a process left waiting for a dead peer would hang for minutes
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, f"{log}:\n{log.read_text()[-4000:]}"


def _records(workdir: pathlib.Path, kind: str) -> list[dict]:
    """`metrics.jsonl` records: "train" ones are flat, "val" ones nest under "val"."""
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    if kind == "train":
        return [x for x in lines if "loss" in x]
    return [x["val"] for x in lines if "val" in x]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    # The conftest's cache, which `lmjax train` reads through LMJAX_COMPILATION_CACHE.
    cache = os.environ.get("LMJAX_COMPILATION_CACHE", "").strip()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache if cache not in ("", "0") else str(tmp / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        # Without the caller's flags: one CPU device per process.
        XLA_FLAGS="--xla_backend_optimization_level=0",
    )
    ref, two = tmp / "one_process", tmp / "two_processes"
    log = tmp / "reference.log"
    _finish([_start(["reference", str(ref), str(STEPS)], env, log)], [log], timeout=TIMEOUT)
    port = str(_free_port())
    logs = [tmp / f"process_{i}.log" for i in range(2)]
    procs = [
        _start(["process", str(two), str(STEPS), port, str(i), str(ref)], env, logs[i])
        for i in range(2)
    ]
    _finish(procs, logs, timeout=TIMEOUT)
    return ref, two


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    ref, two = runs
    one, other = _records(ref, "train"), _records(two, "train")
    assert [x["step"] for x in one] == [x["step"] for x in other] == list(range(1, STEPS + 1))
    losses = [x["loss"] for x in one]
    assert len(set(losses)) == STEPS  # the batches differ from step to step
    np.testing.assert_allclose([x["loss"] for x in other], losses, rtol=1e-5)
    # gradients averaged over all rows of both processes, not each process's own
    np.testing.assert_allclose(
        [x["grad_norm"] for x in other], [x["grad_norm"] for x in one], rtol=1e-5
    )


KEYS = ("mre", "sd", "median", "p95")


@pytest.mark.slow
def test_two_processes_validate_like_one(runs):
    ref, two = runs
    (one,), (other,) = _records(ref, "val"), _records(two, "val")
    assert one["unit"] == other["unit"] == "mm"
    for key in KEYS:  # after training each on its own: rounding differences only
        assert other[key] == pytest.approx(one[key], rel=1e-5), key
    # The same parameters (the reference's checkpoint) on two processes: every
    # process predicts its share of the images, and all get the whole report.
    restored = json.loads((two / "val_of_reference.json").read_text())
    assert restored["checkpoint_step"] == STEPS
    assert restored["n_images"] > 2 and restored["missed"] == 0  # no row left empty
    for key in KEYS:
        assert restored[key] == pytest.approx(one[key], rel=1e-5), key
    # and its own checkpoint, restored after training, on the test split
    test = json.loads((two / "eval.json").read_text())
    assert test["split"] == "test" and test["checkpoint_step"] == STEPS


@pytest.mark.slow
def test_checkpoint_is_written_once(runs):
    ref, two = runs
    step = two / "checkpoints" / str(STEPS)

    def files(item):
        return sorted(p.name for p in (step / item).iterdir() if p.name != "commit_success.txt")

    # The replicated state is written once: Orbax splits it between the processes.
    def stored(workdir):
        state = workdir / "checkpoints" / str(STEPS) / "state"
        return sum(f.stat().st_size for f in state.rglob("*") if f.is_file())

    assert stored(two) < 1.5 * stored(ref)
    assert files("data") == ["process_0-of-2.json", "process_1-of-2.json"]
    assert files("config") == ["metadata"]
    assert len((two / "metrics.jsonl").read_text().splitlines()) == STEPS + 1


# ------------------------------------------------------------- flags, no processes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_processes": 2}, "--num_processes given without --coordinator_address and"),
        (
            {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
            "--process_id=2 must be from 0 to 1",
        ),
        (
            {"coordinator_address": "h:1", "num_processes": 0, "process_id": 0},
            "--num_processes must be at least 1",
        ),
        (
            {"coordinator_address": "node001", "num_processes": 2, "process_id": 0},
            "must be HOST:PORT",
        ),
    ],
)
def test_inconsistent_flags_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        parallel.initialize(**kwargs, environ={})
    assert "\n" not in str(err.value)


@pytest.fixture
def calls(monkeypatch):
    """`jax.distributed.initialize` replaced by a recorder; the module state reset."""
    recorded = []
    monkeypatch.setattr(parallel, "_started", False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: recorded.append((a, k)))
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: None)
    return recorded


SLURM = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "4"}


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),  # one process: nothing to join
        ({**SLURM, "SLURM_NTASKS": "1"}, None),
        (SLURM, {"local_device_ids": []}),  # one task per node: all of its GPUs
        ({**SLURM, "SLURM_STEP_NUM_NODES": "2"}, {"local_device_ids": None}),  # JAX's own
    ],
)
def test_slurm_detection(calls, environ, expected):
    assert parallel.initialize(environ=environ) is (expected is not None)
    assert calls == ([] if expected is None else [((), expected)])
    if expected is not None:  # idempotent
        assert parallel.initialize(environ=environ) and len(calls) == 1


def test_explicit_flags_skip_cluster_detection(calls):
    args = {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    assert parallel.initialize(**args, environ=SLURM)
    assert calls == [(("10.0.0.1:1234", 2, 1), {"cluster_detection_method": "deactivate"})]


def test_cli_reports_bad_flags_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "lmjax.cli", "train", "--num_processes=2", "--process_id=0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert "lmjax train: error: --num_processes, --process_id given without" in out.stderr
    assert "Traceback" not in out.stderr
