"""Evaluating a run while it trains: readers never write, and neither side breaks.

A subprocess trains the tiny phantom config saving a checkpoint at every step
while this process evaluates the run in a loop (`lmjax evaluate`'s code path).
Before readers opened checkpoints read-only, an evaluation could delete the save
the training had in flight (Orbax's temporary-folder clean-up).
"""

from __future__ import annotations

import subprocess
import sys
import time

from lmjax import configs
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train.evaluation import evaluate_workdir

STEPS = 40


def test_evaluating_a_run_while_it_trains(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "lmjax.cli",
        "train",
        f"--workdir={tmp_path}",
        f"--config={configs.DEFAULT}:tiny",
        f"--config.train.steps={STEPS}",
        "--config.train.eval_every=1",  # a save at every step
        f"--config.train.keep={STEPS + 1}",  # so every save has to survive
        f"--config.train.log_every={STEPS}",
        "--config.data.augment=",
    ]
    trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not ckpt_lib.has_checkpoint(tmp_path) and trainer.poll() is None:
            assert time.time() < deadline, "the trainer saved nothing in 120 s"
            time.sleep(0.05)
        evaluations, failures = [], []
        while trainer.poll() is None:
            try:
                report = evaluate_workdir(str(tmp_path), log=lambda *_: None)
                evaluations.append(report["mre"])
            except Exception as e:  # every failure is the test's failure, collected
                failures.append(f"{type(e).__name__}: {e}")
        out, _ = trainer.communicate(timeout=120)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, out
    assert not failures, failures
    assert len(evaluations) >= 2, (evaluations, out)  # evaluations really overlapped training
    with ckpt_lib.Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.all_steps() == list(range(1, STEPS + 1)), out
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    assert not leftovers
