"""Resuming safely: a changed config is refused unless allowed, a damaged newest
checkpoint is skipped, a save that finds the disk full stops the run and keeps the
last good checkpoint, Ctrl-C saves and a second one exits at once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from lmjax import configs
from lmjax.configs.phantom import get_config
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import config_change, loop, restore
from tests.test_cli import run_cli

# The tiny phantom U-Net shrunk further: these tests are about resuming, not the model.
SHRINK = {"data.input_size": (32, 32), "model.num_levels": 2, "model.features": 4}


def _config(steps: int, **fields):
    config = get_config("tiny")
    with config.unlocked():
        config.update_from_flattened_dict(SHRINK)
        config.data.augment = ""
        config.data.phantom_size = 16
        config.train.tensorboard = False
        config.train.steps, config.train.eval_every, config.train.log_every = steps, 2, 2
        for path, value in fields.items():
            section, name = path.split("__")
            setattr(getattr(config, section), name, value)
    return config


def test_config_differences_safe_fields_and_allowed_names():
    saved = _config(4).to_dict()
    changed = _config(8, optim__learning_rate=1e-3, task__losses={"heatmap_mse": 1.0}).to_dict()
    changed["train"]["eval_every"] = 5  # cadence: safe
    changed["refine"]["steps"] = 9  # a later stage: safe
    assert config_change.differences(saved, changed) == {
        "optim.learning_rate": (0.002, 0.001),
        "refine.steps": (1500, 9),
        "task.losses.coord_l1": (0.001, "<absent>"),
        "train.eval_every": (2, 5),
        "train.steps": (4, 8),
    }
    with pytest.raises(config_change.ConfigChangeError) as info:
        config_change.check_resume(saved, changed, where="run")
    message = str(info.value)
    assert "\n" not in message and message.startswith("run: the config differs")
    assert "optim.learning_rate: 0.002 -> 0.001; task.losses.coord_l1: 0.001 -> '<absent>'" in (
        message
    )
    assert "--allow_config_change=optim.learning_rate,task.losses.coord_l1" in message
    assert "train.steps" not in message and "eval_every" not in message
    # A name covers the fields under it; the result lists every accepted change.
    accepted = config_change.check_resume(saved, changed, ["optim", "task.losses"])
    assert set(accepted) == {
        "optim.learning_rate",
        "refine.steps",
        "task.losses.coord_l1",
        "train.eval_every",
        "train.steps",
    }
    with pytest.raises(config_change.ConfigChangeError, match="task.losses.coord_l1"):
        config_change.check_resume(saved, changed, config_change.parse_allowed("optim, task.loss"))
    assert config_change.parse_allowed(None) == ()


def test_fields_of_another_lmjax_version_are_no_change():
    saved = _config(4).to_dict()
    del saved["train"]["ensemble_map"]  # saved before the field existed
    saved["train"]["retired_option"] = 3  # saved with a field since removed
    current = _config(4).to_dict()
    assert config_change.differences(saved, current) == {}
    current["train"]["ensemble_map"] = "vmap"  # not the default: a change after all
    assert config_change.differences(saved, current) == {"train.ensemble_map": ("<absent>", "vmap")}


def test_resume_with_a_changed_config_is_refused_unless_allowed(tmp_path, capsys):
    quiet = lambda *_: None  # noqa: E731
    loop.train(_config(2), tmp_path, log=quiet)
    longer = _config(4)  # train.steps needs no flag ...
    changed = _config(4, optim__learning_rate=1e-3, task__sigma=3.0)  # ... these do
    with pytest.raises(config_change.ConfigChangeError) as info:
        loop.train(changed, tmp_path, log=quiet)
    assert "optim.learning_rate: 0.002 -> 0.001; task.sigma: 2.0 -> 3.0;" in str(info.value)
    assert "--allow_config_change=optim.learning_rate,task.sigma" in str(info.value)
    # The command line: the same refusal in one line, exit status 2, nothing trained.
    args = ["train", f"--workdir={tmp_path}", "--config=" + configs.DEFAULT + ":tiny"]
    args += [f"--config.{k}={v}" for k, v in _flat_overrides(longer).items()]
    status, _, err = run_cli(capsys, *args, "--config.optim.learning_rate=0.001")
    assert status == 2, err
    error = [line for line in err.splitlines() if "lmjax train: error" in line]
    assert len(error) == 1 and "optim.learning_rate: 0.002 -> 0.001" in error[0], err
    assert "Traceback" not in err
    messages = []
    allowed = "optim.learning_rate,task.sigma"
    loop.train(changed, tmp_path, log=messages.append, allow_config_change=allowed)
    assert f"resumed from step 2 in {tmp_path}" in messages
    assert "resuming with changed optim.learning_rate=0.001, task.sigma=3.0, train.steps=4" in (
        messages
    )
    with ckpt_lib.Checkpointer(tmp_path, read_only=True) as checkpoints:
        assert checkpoints.all_steps() == [2, 4]
    assert restore.read_config(tmp_path).optim.learning_rate == 1e-3


def test_allow_config_change_is_refused_where_it_does_not_apply(tmp_path, capsys):
    args = ["train", f"--workdir={tmp_path}", "--config=" + configs.DEFAULT + ":tiny"]
    status, _, err = run_cli(
        capsys, *args, "--config.data.cv_folds=3", "--allow_config_change=optim"
    )
    assert status == 2 and err.count("\n") == 1, err
    assert "--allow_config_change applies to single runs of the map heads" in err
    assert not (tmp_path / "checkpoints").exists()


def _flat_overrides(config) -> dict[str, str]:
    """The fields `_config` changes from the tiny phantom, as --config.FIELD values."""
    c = config
    return {
        **SHRINK,
        "data.augment": "",
        "data.phantom_size": c.data.phantom_size,
        "train.tensorboard": False,
        "train.steps": c.train.steps,
        "train.eval_every": c.train.eval_every,
        "train.log_every": c.train.log_every,
    }


def test_damaged_newest_checkpoint_and_full_disk_in_training(tmp_path, caplog, capsys, disk_full):
    quiet = lambda *_: None  # noqa: E731
    loop.train(_config(4), tmp_path, log=quiet)
    (tmp_path / "checkpoints" / "4" / "state" / "_METADATA").write_text('{"tree_metadata": {')
    messages = []
    with caplog.at_level(logging.WARNING):
        loop.train(_config(6), tmp_path, log=messages.append)
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1 and "checkpoint step 4 is damaged (state/_METADATA:" in damaged[0]
    assert f"resumed from step 2 in {tmp_path}" in messages
    assert (tmp_path / ckpt_lib.DAMAGED_DIR / "4").is_dir()
    # Evaluation reads the best (or latest) whole step: 2, 4 again, or 6.
    _, _, state, _ = restore.restore_trained(tmp_path, which="latest")
    assert int(state.step) == 6

    disk_full["on"] = True
    args = ["train", f"--workdir={tmp_path}", "--config=" + configs.DEFAULT + ":tiny"]
    args += [f"--config.{k}={v}" for k, v in _flat_overrides(_config(8)).items()]
    status, _, err = run_cli(capsys, *args)
    disk_full["on"] = False
    # One line, not Orbax's tracebacks; status 1 like any training that cannot go on.
    assert status == 1 and err.count("\n") == 1, err
    assert err.startswith("lmjax train: error: ") and "saving step 8 failed" in err
    assert "No space left on device" in err
    assert err.rstrip().endswith("the last complete checkpoint is step 6")
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if "tmp" in p]
    _, _, state, _ = restore.restore_trained(tmp_path, which="latest")
    assert int(state.step) == 6


def _start(workdir, cache):
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "lmjax.cli",
        "train",
        f"--workdir={workdir}",
        f"--compilation_cache_dir={cache}",
        "--config=" + configs.DEFAULT + ":tiny",
        "--config.data.phantom_size=16",
        *(f"--config.{k}={v}" for k, v in SHRINK.items()),
        "--config.train.tensorboard=False",
        "--config.train.steps=100000",
        "--config.train.eval_every=100000",
        "--config.train.log_every=1",
    ]
    # LLVM's optimisation level 0: this process's time is mostly compiling.
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _wait_for(proc, prefix: str, lines: list[str]) -> None:
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix) or time.time() > deadline:
            return


@pytest.mark.slow  # a training process of its own: start-up and compilation
def test_ctrl_c_saves_and_exits(tmp_path):
    proc = _start(tmp_path, tmp_path / "jax_cache")
    lines = []
    _wait_for(proc, "step 3/", lines)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=240)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "SIGINT: saving the current step; press Ctrl-C again to exit at once" in out
    saved = int(out.split("SIGINT: saved step ")[1].split()[0])
    assert saved >= 3
    with ckpt_lib.Checkpointer(tmp_path, read_only=True) as checkpoints:
        assert checkpoints.all_steps() == [saved]  # not a validation step: saved all the same


SIGINT_TWICE = """
import os, signal, time
from lmjax.train.loop import _stop_handler

stop = {"signal": None}
signal.signal(signal.SIGINT, _stop_handler(stop))
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("first:", stop["signal"], flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
print("still running", flush=True)
"""


def test_a_second_ctrl_c_exits_at_once():
    # The training loop's handler in a process of its own: two SIGINTs that the
    # loop would see coalesce when sent to a training at once.
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", SIGINT_TWICE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 128 + signal.SIGINT, (out.stdout, out.stderr)
    assert out.stdout == "first: SIGINT\n"
    assert "SIGINT: saving the current step" in out.stderr
    assert "SIGINT again: exiting without waiting for the save" in out.stderr
    assert time.time() - started < 30
