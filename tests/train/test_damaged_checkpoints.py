"""A damaged newest checkpoint is reported and skipped; a failed save keeps the last
good one."""

from __future__ import annotations

import errno
import logging
import os
import pathlib

import pytest

from lmjax.train import checkpoint_check
from lmjax.train.checkpoint import (
    DAMAGED_DIR,
    Checkpointer,
    CheckpointSaveError,
    DamagedCheckpointError,
    abstract_like,
    restore_config,
)
from tests.train.test_checkpoint import CONFIG, assert_same_state, make_state


def _save_steps(root: pathlib.Path, steps=(1, 2, 3)) -> None:
    with Checkpointer(root) as ckpt:
        for step in steps:
            ckpt.save(
                step,
                make_state(float(step)),
                data_state={"next": step},
                config=CONFIG,
                metrics={"val_mre": 1.0 / step},  # the newest is also the best
            )


def _truncate(path: pathlib.Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _truncate_arrays(step_dir: pathlib.Path) -> None:
    for folder in ("d", "ocdbt.process_0/d"):
        for path in (step_dir / "state" / folder).iterdir():
            _truncate(path)


# How the newest step is damaged, and the file the report must name.
DAMAGE = {
    "metadata missing": (lambda d: (d / "state" / "_METADATA").unlink(), "state/_METADATA"),
    "metadata truncated": (lambda d: _truncate(d / "state" / "_METADATA"), "state/_METADATA"),
    "config truncated": (lambda d: _truncate(d / "config" / "metadata"), "config/metadata"),
    "data state missing": (
        lambda d: (d / "data" / "process_0-of-1.json").unlink(),
        "data/process_0-of-1.json",
    ),
    "metrics truncated": (lambda d: _truncate(d / "metrics" / "metrics"), "metrics/metrics"),
    "array store root empty": (
        lambda d: (d / "state" / "manifest.ocdbt").write_bytes(b""),
        "state/manifest.ocdbt",
    ),
    "array data truncated": (_truncate_arrays, "state/"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("read_only", [False, True], ids=["resume", "evaluate"])
def test_damaged_latest_step_is_reported_and_the_previous_one_used(
    tmp_path, caplog, how, read_only
):
    _save_steps(tmp_path)
    damage, named = DAMAGE[how]
    damage(tmp_path / "checkpoints" / "3")
    abstract = abstract_like(make_state())
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, read_only=read_only) as ckpt:
        # Resuming restores the latest step, evaluating the best (`restore_state`: the
        # latest when no step ranks): step 3 is both.
        best = read_only and ckpt.best_step() is not None
        state, data, _, _ = ckpt.restore("best" if best else None, abstract_state=abstract)
        steps_left = ckpt.all_steps()
    assert_same_state(state, make_state(2.0))
    assert data == {"next": 2}
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"checkpoint step 3 is damaged ({named}" in warnings[0], warnings[0]
    # Found by reading (the arrays), or by the writer's look at every step when it opens.
    aside = f"; moved to {tmp_path / DAMAGED_DIR / '3'}"
    assert warnings[0].endswith("; using step 2") or not read_only and warnings[0].endswith(aside)
    if read_only:  # a reader changes nothing
        assert steps_left == [1, 2, 3] and not (tmp_path / DAMAGED_DIR).exists()
    else:  # a writer moves the damaged step aside, so that it can save step 3 again
        assert steps_left == [1, 2] and (tmp_path / DAMAGED_DIR / "3").is_dir()
        with Checkpointer(tmp_path) as ckpt:
            assert ckpt.save(3, make_state(5.0), data_state={}, config=CONFIG)
            ckpt.wait()
            again, _, _, _ = ckpt.restore(abstract_state=abstract)
        assert_same_state(again, make_state(5.0))


def test_a_damaged_best_step_gives_way_to_the_next_best(tmp_path, caplog):
    mre = {1: 0.5, 2: 3.0, 3: 0.1, 4: 2.0}
    with Checkpointer(tmp_path, max_to_keep=4) as ckpt:
        for step, value in mre.items():
            ckpt.save(
                step,
                make_state(float(step)),
                data_state={},
                config=CONFIG,
                metrics={"val_mre": value},
            )
    _truncate(tmp_path / "checkpoints" / "3" / "state" / "_METADATA")
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, read_only=True) as ckpt:
        assert ckpt.best_step() == 3
        state, _, _, metrics = ckpt.restore("best", abstract_state=abstract_like(make_state()))
    assert_same_state(state, make_state(1.0))  # not the newest (4): the next best
    assert metrics == {"val_mre": 0.5}
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1 and "checkpoint step 3 is damaged (state/_METADATA" in damaged[0]
    assert damaged[0].endswith("; using step 1")


def test_the_saved_config_comes_from_the_newest_whole_step(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        for step in (1, 2):
            ckpt.save(
                step, make_state(), data_state={}, config={"step": step}, metrics={"val_mre": 1.0}
            )
    _truncate(tmp_path / "checkpoints" / "2" / "config" / "metadata")
    _truncate(tmp_path / "checkpoints" / "2" / "metrics" / "metrics")
    assert restore_config(tmp_path) == {"step": 1}


def test_every_step_damaged_is_one_error(tmp_path):
    _save_steps(tmp_path, steps=(1, 2))
    for step in (1, 2):
        (tmp_path / "checkpoints" / str(step) / "config" / "metadata").unlink()
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(DamagedCheckpointError, match="every checkpoint is damaged") as info:
            ckpt.restore(abstract_state=abstract_like(make_state()))
    assert "step 2: config/metadata: missing" in str(info.value)


def test_a_checkpoint_of_another_process_layout_is_not_damage(tmp_path):
    _save_steps(tmp_path, steps=(1,))
    data = tmp_path / "checkpoints" / "1" / "data"
    (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
    assert (
        checkpoint_check.step_damage(tmp_path / "checkpoints" / "1", "process_0-of-1.json") is None
    )
    (data / "process_0-of-2.json").unlink()
    damage = checkpoint_check.step_damage(tmp_path / "checkpoints" / "1", "process_0-of-1.json")
    assert damage == "data/process_0-of-1.json: missing (and no other process's)"


def test_an_explicit_step_is_not_replaced(tmp_path):
    _save_steps(tmp_path, steps=(1, 2))
    (tmp_path / "checkpoints" / "2" / "state" / "_METADATA").unlink()
    with Checkpointer(tmp_path, read_only=True) as ckpt, pytest.raises(ValueError):
        ckpt.restore(2, abstract_state=abstract_like(make_state()))


def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(tmp_path, disk_full):
    with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(1, make_state(1.0), data_state={"next": 1}, config=CONFIG)
        ckpt.wait()
        disk_full["on"] = True
        assert ckpt.save(2, make_state(2.0), data_state={"next": 2}, config=CONFIG)
        with pytest.raises(CheckpointSaveError) as info:
            ckpt.wait()
        disk_full["on"] = False
        message = str(info.value)
        assert info.value.errno == errno.ENOSPC and "\n" not in message
        assert "saving step 2 failed" in message and "No space left on device" in message
        assert message.endswith("the last complete checkpoint is step 1")
        # The failed save left nothing behind; the keep policy deleted nothing.
        assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
        ckpt.wait()  # reported once
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        state, data, _, _ = ckpt.restore(abstract_state=abstract_like(make_state()))
    assert_same_state(state, make_state(1.0))
    assert data == {"next": 1}


def test_a_failed_save_surfaces_at_the_next_save(tmp_path, disk_full):
    ckpt = Checkpointer(tmp_path)
    disk_full["on"] = True
    ckpt.save(1, make_state(), data_state={}, config=CONFIG)
    with pytest.raises(CheckpointSaveError, match="saving step 1 failed .* is none$"):
        ckpt.save(2, make_state(), data_state={}, config=CONFIG)
    disk_full["on"] = False
    ckpt.close()
    assert not (tmp_path / "checkpoints" / "1").exists()
