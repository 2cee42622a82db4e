"""Evaluating a run while it trains: readers never write, and neither side breaks.

A subprocess trains the tiny phantom config saving a checkpoint at every step
while this process evaluates the run in a loop (`lmjax evaluate`'s code path).
Before readers opened checkpoints read-only, an evaluation could delete the save
the training had in flight (Orbax's temporary-folder clean-up). The tiny U-Net is
shrunk to 32 x 32 and two levels: the saves, not the model, are the point, and the
evaluations here run for as long as the trainer does.
"""

from __future__ import annotations

import os
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
        "--config.data.input_size=(32, 32)",
        "--config.model.num_levels=2",
        "--config.model.features=4",
    ]
    # LLVM's optimisation level 0: the trainer's own time is mostly compiling.
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
    trainer = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        # Start-up and compiling: minutes of wall time when other jobs share the cores.
        deadline = time.time() + 600
        while not ckpt_lib.has_checkpoint(tmp_path) and trainer.poll() is None:
            assert time.time() < deadline, "the trainer saved nothing in 600 s"
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
