"""The training loop end to end on the phantom: error falls, resume is exact."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from lmjax import configs
from lmjax.configs.phantom import get_config
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import evaluation, loop, restore, setup
from lmjax.train.logs import TENSORBOARD_DIR
from tests.train.test_logs import read_scalars


def _config(**train):
    config = get_config("tiny")
    with config.unlocked():
        config.data.augment = ""  # exact comparisons below; augmentation has its own tests
        for key, value in train.items():
            setattr(config.train, key, value)
    return config


def _params(workdir):
    config, _, state, _ = restore.restore_trained(workdir, which="latest")
    return int(state.step), jax.tree.leaves(jax.device_get(state.params))


def test_training_halves_the_validation_error(tmp_path):
    config = _config(steps=150, eval_every=150, log_every=50)
    _, val, _ = setup.load_splits(config)
    mesh, state, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    assert before["unit"] == after["unit"] == "mm"
    assert after["mre"] <= 0.5 * before["mre"], (before["mre"], after["mre"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"val"' in lines[-1]
    scalars = read_scalars(tmp_path / TENSORBOARD_DIR)
    assert [s for s, _ in scalars["train/loss"]] == [50, 100, 150]
    assert scalars["val/mre"] == [(150, pytest.approx(after["mre"], rel=1e-6))]
    assert setup.load_landmark_set(tmp_path) == val.landmark_set


def test_segmentation_with_method_3_learns(tmp_path):
    config = _config(steps=150, eval_every=150, log_every=50)
    with config.unlocked():
        config.task.mode = "segmentation"
        config.task.target = "circle"
        config.task.radius = 4.0
        config.task.losses = {"dice_ce": 1.0}
        config.task.extractor = "midpoint"
        config.optim.learning_rate = 1e-2
    _, val, _ = setup.load_splits(config)
    mesh, state, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    masks_before = evaluation.segmentation_report(config, eval_step, mesh, state, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    losses = [v for _, v in read_scalars(tmp_path / TENSORBOARD_DIR)["train/loss"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert after["mre"] <= 0.5 * before["mre"], (before["mre"], after["mre"])
    # The masks themselves: IoU of the thresholded sigmoid with the training discs.
    _, _, trained, _ = restore.restore_trained(tmp_path, which="latest")
    masks = evaluation.segmentation_report(config, eval_step, mesh, trained, val)
    k = val.landmark_set.num_landmarks
    assert masks["n"] == len(val.records) * k and len(masks["per_landmark"]) == k
    assert masks_before["iou"] < 0.1 < 0.3 < masks["iou"] <= 1, (masks_before, masks)
    assert masks["iou"] < masks["dice"] <= 1
    heatmap = _config(steps=1, eval_every=1, log_every=1)
    assert evaluation.segmentation_report(heatmap, eval_step, mesh, trained, val) is None


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """A 12-step run validated at steps 6 and 12 (read, never changed, by the tests)."""
    path = tmp_path_factory.mktemp("whole")
    loop.train(_config(steps=12, eval_every=6, log_every=6), path, log=lambda *_: None)
    return path


def test_resume_reaches_the_same_parameters(whole_run, tmp_path):
    loop.train(_config(steps=6, eval_every=6, log_every=6), tmp_path / "split", log=lambda *_: None)
    messages = []
    loop.train(
        _config(steps=12, eval_every=6, log_every=6), tmp_path / "split", log=messages.append
    )
    resumed = [m for m in messages if m.startswith("resumed from step")]
    assert resumed == [f"resumed from step 6 in {tmp_path / 'split'}"]
    assert messages[0].startswith("resolved config:\n  ")
    assert "\n  data.augment = ''\n" in messages[0]
    step_a, a = _params(whole_run)
    step_b, b = _params(tmp_path / "split")
    assert step_a == step_b == 12
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_evaluate_without_checkpoint_is_one_line(tmp_path, capsys):
    from tests.test_cli import run_cli

    code, _, err = run_cli(capsys, "evaluate", f"--workdir={tmp_path}")
    assert code == 2
    assert f"{tmp_path}: no checkpoint found" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        restore.restore_trained(tmp_path)
    assert ckpt_lib.restore_config(tmp_path) is None


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    import signal
    import time

    cmd = [
        sys.executable,
        "-u",
        "-m",
        "lmjax.cli",
        "train",
        f"--workdir={tmp_path}",
        "--config=" + configs.DEFAULT + ":tiny",
        "--config.train.steps=100000",
        "--config.train.eval_every=100000",
        "--config.train.log_every=2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 4/") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=240)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "SIGTERM: saved step" in out
    saved = int(out.split("SIGTERM: saved step ")[1].split()[0])
    assert saved >= 4
    with ckpt_lib.Checkpointer(tmp_path) as checkpoints:
        assert checkpoints.latest_step() == saved


def test_restore_reads_the_saved_config_json_and_runs_no_python(whole_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(whole_run, workdir)  # the copy's config is changed below
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["steps"] == 12 and saved["model"]["name"] == "unet"
    saved["train"]["flip_tta"] = True  # a change only config.json carries
    (workdir / "config.json").write_text(json.dumps(saved))
    (workdir / "config.py").write_text("raise SystemExit('a workdir config was executed')\n")
    config, _, state, _ = restore.restore_trained(workdir)
    with ckpt_lib.Checkpointer(workdir) as checkpoints:
        assert config.train.flip_tta is True and int(state.step) == checkpoints.best_step()
