"""When checkpoints go wrong: damaged steps set aside, failed saves cleaned up and
reported in one line. No Orbax here; `checkpoint.Checkpointer` calls these.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time

import jax
from etils import epath

from lmjax.train import checkpoint_check

log = logging.getLogger("lmjax.train.checkpoint")
DAMAGED_DIR = "damaged_checkpoints"


class CheckpointSaveError(OSError):
    """A save failed (e.g. no space left); the message names the step and the last
    complete one, which is left as it was."""


class DamagedCheckpointError(ValueError):
    """Every candidate step is damaged; the message names the newest one's file."""


class _DropFailedSaveTracebacks(logging.Filter):
    """Orbax's background threads log a failed save with a traceback per item (and
    asyncio one per pending write); `CheckpointSaveError` reports it in one line, so
    below `--verbosity=1` (absl at INFO) those records are dropped."""

    directories: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or logging.getLogger("absl").isEnabledFor(logging.INFO):
            return True
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        return not any(d in text for d in self.directories)


def quiet_failed_saves(directory: epath.Path) -> None:
    _DropFailedSaveTracebacks.directories.add(str(directory))
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFailedSaveTracebacks) for f in logger.filters):
            logger.addFilter(_DropFailedSaveTracebacks())


def join_save_threads(timeout_s: float = 10.0) -> None:
    # When one item of a save fails, Orbax reports it while the other items' threads
    # still write into the temporary folder; removing it under them only adds errors.
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        ours = type(thread).__module__.startswith("orbax") or thread.name == "async_save"
        if ours and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def remove_failed_save(directory: epath.Path, step: int) -> None:
    """Removes the temporary folder of `step`'s failed save (a full disk gets the
    space back) once the save's other threads have stopped writing into it."""
    join_save_threads()
    quiet = 0
    for _ in range(50):
        tmps = list(directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        quiet = 0 if tmps else quiet + 1
        if quiet == 2:
            break
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(0.1)


def save_error(
    err: BaseException, directory: epath.Path, step: int, steps: list[int]
) -> CheckpointSaveError:
    """The one-line error for a failed save of `step`; `steps` are those left."""
    last = f"step {steps[-1]}" if steps else "none"
    code = getattr(err, "errno", None) or (errno.ENOSPC if "No space left" in str(err) else 0)
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    error = CheckpointSaveError(
        f"{directory}: saving step {step} failed ({first}); the last complete checkpoint is {last}"
    )
    error.errno = code  # set apart: OSError(code, message) would print "[Errno N]" twice
    return error


def set_aside(directory: epath.Path, step: int, aside: epath.Path) -> epath.Path | None:
    """Moves the damaged `step` out of Orbax's sight, to `aside/<step>` (process 0
    only; None elsewhere): training saves that step again later, which Orbax refuses
    while a folder of that name exists."""
    if jax.process_index() != 0:
        return None
    aside.mkdir(parents=True, exist_ok=True)
    target = aside / str(step)
    if target.exists():
        shutil.rmtree(target)
    (directory / str(step)).rename(target)
    return target


def scan(directory: epath.Path, data_file: str, aside: epath.Path | None, *, where: str) -> bool:
    """Before Orbax opens `directory` (it reads every step's metrics file then): with
    `aside` (a writer) every step with a missing or unreadable file is moved there,
    one warning each; without (a reader) nothing moves, and the result says whether
    some step's metrics file is unreadable."""
    if not directory.is_dir():
        return False
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    unreadable = False
    for step in steps:
        step_dir = directory / str(step)
        if aside is None:
            metrics = step_dir / "metrics" / "metrics"
            unreadable |= metrics.exists() and checkpoint_check.bad_json(metrics) is not None
        elif damage := checkpoint_check.step_damage(step_dir, data_file):
            target = set_aside(directory, step, aside)
            log.warning(
                "%s: checkpoint step %d is damaged (%s); moved to %s", where, step, damage, target
            )
    return unreadable
