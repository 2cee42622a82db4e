"""Checkpointing: the one module that uses Orbax.

It is longer than 400 lines because Orbax stays inside it: saving, the keep policy,
read-only restoring and the damage fallback all drive one CheckpointManager (what
needs no Orbax is in `checkpoint_check` and `checkpoint_faults`).

One `orbax.checkpoint.CheckpointManager` under `<workdir>/checkpoints` saves per step:

    state    any pytree of jax arrays (params, optimizer state, step, typed PRNG keys);
             Orbax writes each process's shards itself and stores typed keys as key data
    data     the Grain iterator state (`DatasetIterator.get_state()`, JSON), one file per
             process (Grain's `process_<i>-of-<n>.json`): each process reads its own slice
    config   the run config (JSON), written by process 0 only
    metrics  optional floats (e.g. validation MRE), process 0 only; Orbax's own item

Keep policy: the latest `max_to_keep` steps plus the best one by `best_metric`, as
`AnyPreservationPolicy([LatestN(n), BestN(n=1)])` on one manager. (Orbax's own
`max_to_keep` with `best_fn` would keep the n best steps and drop the latest ones.)

Saves are asynchronous: `save` returns once the arrays are copied to host memory (so
donating `state` to the next train step is safe); files are written in the background.
Call `wait()` (or `close()`) before the process exits, e.g. in a SIGTERM handler. A save
cut short leaves only a `*.orbax-checkpoint-tmp` directory, which is never restored and
is removed when the next writing Checkpointer on the workdir starts.

Readers (evaluate, predict, a run initialised from another) open with `read_only=True`:
no temp-directory cleanup (that would delete the save a running training has in
flight), no directory creation, no root metadata, no deletions. They see only
finished steps (Orbax lists a step once its temporary folder is renamed into place),
and a step that the training deletes while it is being read is retried on the
newest finished one.

Damage: restoring the latest (or best) step checks its files first
(`checkpoint_check`); a step with a missing, empty or truncated file, or whose
restore fails naming one of its files, is reported in one warning (step and file)
and the next newest step is used (for the best, the next best). A writer moves the
damaged folder to `<workdir>/damaged_checkpoints/<step>` (so that training can save
that step again), and every damaged step there when it opens.

A save that fails (a full disk: Orbax reports it from its background thread at the
next `save` or `wait`) raises `CheckpointSaveError` naming the step and the last
complete one; the failed save's temporary folder is removed and nothing else is
touched, so the last good checkpoint stays restorable.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep

from lmjax.train import checkpoint_check
from lmjax.train import checkpoint_faults as faults
from lmjax.train.checkpoint_faults import (  # noqa: F401 (part of this module's API)
    DAMAGED_DIR,
    CheckpointSaveError,
    DamagedCheckpointError,
)

PyTree = Any
log = logging.getLogger(__name__)
_READ_RETRIES = 3  # a reader racing a training's keep policy loses a step at most rarely


def abstract_like(state: PyTree) -> PyTree:
    """`jax.ShapeDtypeStruct`s (with shardings) for the array leaves of a live `state`.

    Replace the shardings to restore onto another mesh. Non-array leaves (Python ints)
    are kept as they are: Orbax restores them by value.
    """

    def one(x: Any) -> Any:
        is_array = isinstance(x, jax.Array)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if is_array else x

    return jax.tree.map(one, state)


class _DropReadOnlyNotice(logging.Filter):
    # Orbax warns "Given directory is read only" on every read-only open: to a user of
    # lmjax evaluate/predict that reads as a problem where none is.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


def _quiet_read_only_notices() -> None:
    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _DropReadOnlyNotice) for f in absl_log.filters):
        absl_log.addFilter(_DropReadOnlyNotice())


def _data_filename() -> str:
    # Grain's own Orbax handler names the files this way; one per process, because each
    # process iterates over its own slice of the data.
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class Checkpointer:
    """Saves and restores train state, Grain state, config and metrics by step.

    Args:
      workdir: run directory; checkpoints go to `<workdir>/checkpoints/<step>/`.
      max_to_keep: how many of the latest checkpoints to keep (besides the best).
      best_metric: key in the `metrics` dict that ranks checkpoints.
      best_mode: "min" (errors such as MRE) or "max" (e.g. SDR).
      read_only: never write to the workdir (see the module docstring); `save`
        raises RuntimeError.
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        *,
        max_to_keep: int = 3,
        best_metric: str = "val_mre",
        best_mode: Literal["min", "max"] = "min",
        read_only: bool = False,
    ) -> None:
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        # Orbax's array reader wants an absolute path; a remote one (gs://) already is.
        where = os.fspath(workdir)
        self.workdir = epath.Path(where if "://" in where else os.path.abspath(where))
        self.best_metric, self.best_mode = best_metric, best_mode
        self.read_only = read_only
        self._pending: int | None = None  # the step whose asynchronous save may still fail
        # BestN keeps the n highest after sorting; `reverse` puts the lowest last for "min".
        best = keep.BestN(
            get_metric_fn=self._score,
            reverse=best_mode == "min",
            n=1,
            keep_checkpoints_without_metrics=False,  # LatestN alone decides those
        )
        policy = keep.AnyPreservationPolicy([keep.LatestN(n=max_to_keep), best])
        if read_only:
            _quiet_read_only_notices()
            # A reader must leave a running training's in-flight save (a temporary
            # folder) alone, and create nothing: Orbax's read_only skips saves and
            # deletions, create=False the folder, save_root_metadata its metadata file.
            options = ocp.CheckpointManagerOptions(
                best_fn=self._score,
                best_mode=best_mode,
                read_only=True,
                save_interval_steps=0,  # what read_only sets anyway, without its warning
                create=False,
                cleanup_tmp_directories=False,
                save_root_metadata=False,
                enable_async_checkpointing=False,
            )
        else:
            options = ocp.CheckpointManagerOptions(
                best_fn=self._score,  # still needed: it makes `best_step()` rank by metric
                best_mode=best_mode,
                preservation_policy=policy,
                cleanup_tmp_directories=True,  # drop saves cut short by a killed run
            )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            # primary_host=None: every process writes its own iterator state.
            "data": ocp.JsonCheckpointHandler(
                filename=_data_filename(),
                multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=None),
            ),
            "config": ocp.JsonCheckpointHandler(),  # process 0 only (Orbax's default)
        }
        directory = self.workdir / "checkpoints"
        if not read_only:
            faults.quiet_failed_saves(directory)
        # Orbax reads every step's metrics file when it opens: damage found first.
        self._no_best = self._scan(directory)
        if self._no_best:
            options = dataclasses.replace(options, best_fn=None, lightweight_initialize=True)
        self._manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)

    def _scan(self, directory: epath.Path) -> bool:
        """A writer sets every damaged step aside (`checkpoint_faults.scan`); a reader
        returns whether a metrics file is unreadable (then the best is the latest)."""
        aside = None if self.read_only else self.workdir / DAMAGED_DIR
        return faults.scan(directory, _data_filename(), aside, where=str(self.workdir))

    def _score(self, metrics: Any) -> float:
        # A missing or NaN metric ranks worst, so it never displaces a real best.
        worst = math.inf if self.best_mode == "min" else -math.inf
        value = metrics.get(self.best_metric) if isinstance(metrics, Mapping) else None
        return worst if value is None or math.isnan(float(value)) else float(value)

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        data_state: Mapping[str, Any],
        config: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts saving `step` (asynchronously); False if the step was not due or exists.

        Call on every process. `data_state` is this process's `iterator.get_state()`;
        `config` must be JSON-serialisable; metrics values are converted to float.
        Call `wait()` before exiting, or the save may be left unfinished.

        Raises:
          RuntimeError: the Checkpointer is read-only.
          CheckpointSaveError: this save, or the previous one still being written,
            failed (see the module docstring).
        """
        if self.read_only:
            raise RuntimeError(f"{self._manager.directory}: opened read-only; cannot save")
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave(dict(config)),
        )
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
        self.wait()  # Orbax waits for the previous save anyway; this names its failure
        try:
            started = self._manager.save(int(step), args=items, metrics=metrics, force=force)
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            raise
        except Exception as err:
            raise self._save_failed(err, int(step)) from err
        if started:
            self._pending = int(step)
        return started

    def _save_failed(self, err: BaseException, step: int) -> CheckpointSaveError:
        """The one-line error for a failed save of `step`, after removing its
        temporary folder (a full disk gets the space back)."""
        self._pending = None
        faults.remove_failed_save(self._manager.directory, step)
        self._manager.reload()
        return faults.save_error(err, self._manager.directory, step, self.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The saved step with the best `best_metric`, or None if no step has it."""
        if self._no_best:
            return None
        step = self._manager.best_step()  # Orbax ranks a step without the metric last
        has_metric = step is not None and math.isfinite(self._score(self._manager.metrics(step)))
        return step if has_metric else None

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(
        self,
        step: int | Literal["best"] | None = None,
        *,
        abstract_state: PyTree,
        check_config: Callable[[dict[str, Any]], object] | None = None,
    ) -> tuple[PyTree, dict[str, Any] | None, dict[str, Any], dict[str, float] | None]:
        """Restores `(state, data_state, config, metrics)` of a step (None: the latest).

        `abstract_state` (see `abstract_like`) fixes the structure, dtypes and shardings
        of the restored state, so a checkpoint restores onto any mesh or device count.
        `data_state` is None when this process layout has no saved iterator state (the
        checkpoint came from a different number of processes); the data restarts then.

        Read-only, a latest or best step that a running training deletes while it is
        read is retried (a few times) on the then newest (best) finished step. A
        damaged latest or best step is skipped (see the module docstring).

        `check_config` is called with the step's saved config before its state is
        read; what it raises (a config the caller cannot resume) propagates.

        Raises:
          FileNotFoundError: no such step (one line).
          ValueError: saved shapes differ from `abstract_state`, or Orbax cannot
            restore the state; the message names the step folder.
        """
        for attempt in range(_READ_RETRIES):
            chosen = self._resolve(step)
            try:
                if isinstance(step, int):
                    self._check_config(chosen, check_config)
                    return self._restore_step(chosen, abstract_state)
                return self._restore_whole(step, chosen, abstract_state, check_config)
            except Exception:
                vanished = not (self._manager.directory / str(chosen)).exists()
                if not (self.read_only and vanished and isinstance(step, str | None)):
                    raise
                if attempt == _READ_RETRIES - 1:
                    raise
                log.warning("%s: step %d was deleted while read; retrying", self.workdir, chosen)
                self._manager.reload()
        raise AssertionError("unreachable")

    def _restore_whole(
        self, step: Literal["best"] | None, chosen: int, abstract_state: PyTree, check_config
    ):
        """The latest or best step, or, when it is damaged, the newest whole step
        before it (the best: the next best whole step, then the newest unranked)."""
        others = sorted((s for s in self.all_steps() if s != chosen), reverse=True)
        if step == "best":
            sign = 1 if self.best_mode == "min" else -1
            others.sort(key=lambda s: sign * self._safe_score(s))  # stable: newest first on ties
        candidates = [chosen] + [s for s in others if step == "best" or s < chosen]
        first_damage = None
        for i, candidate in enumerate(candidates):
            step_dir = self._manager.directory / str(candidate)
            damage = checkpoint_check.step_damage(step_dir, _data_filename())
            if damage is not None and not step_dir.exists():
                raise FileNotFoundError(f"{step_dir}: deleted while read")
            if damage is None:
                try:
                    self._check_config(candidate, check_config)
                    return self._restore_step(candidate, abstract_state)
                except Exception as err:
                    damage = checkpoint_check.damaged_file(step_dir, err)
                    if damage is None or not step_dir.exists():
                        raise
            first_damage = first_damage or f"step {candidate}: {damage}"
            after = f"using step {candidates[i + 1]}" if i + 1 < len(candidates) else "no other"
            log.warning(
                "%s: checkpoint step %d is damaged (%s); %s", self.workdir, candidate, damage, after
            )
            if self._set_aside(candidate, self._manager.directory):
                self._manager.reload()
        raise DamagedCheckpointError(
            f"{self._manager.directory}: every checkpoint is damaged (newest: {first_damage})"
        )

    def _safe_score(self, step: int) -> float:
        try:
            return self._score(self._manager.metrics(step))
        except (OSError, ValueError):  # an unreadable metrics file ranks worst
            return self._score(None)

    def _set_aside(self, step: int, directory: epath.Path) -> epath.Path | None:
        """Where a writer moved the damaged `step` (None: a reader moves nothing)."""
        if self.read_only:
            return None
        return faults.set_aside(directory, step, self.workdir / DAMAGED_DIR)

    def _check_config(self, step: int, check_config) -> None:
        if check_config is not None:
            config = ocp.args.Composite(config=ocp.args.JsonRestore())
            check_config(self._manager.restore(step, args=config).config)

    def _restore_step(self, step: int, abstract_state: PyTree) -> tuple:
        self._check_shapes(step, abstract_state)
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "config": ocp.args.JsonRestore(),
        }
        where = self._manager.directory
        data_file = where / str(step) / "data" / _data_filename()
        if data_file.exists():
            items["data"] = ocp.args.JsonRestore()
        else:
            log.warning("%s: no data state for this process layout; data restarts", data_file)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except ValueError as err:
            raise ValueError(f"{where / str(step)}: cannot restore state: {err}") from err
        data = out["data"] if "data" in items else None
        return out.state, data, out.config, self._manager.metrics(step)

    def _resolve(self, step: int | Literal["best"] | None) -> int:
        """The step to restore; FileNotFoundError with a one-line reason if there is none."""
        saved = self.all_steps()
        if step is None:
            step, why = self.latest_step(), "no checkpoint found"
        elif step == "best":
            step, why = self.best_step(), f"no checkpoint with metric {self.best_metric!r}"
        else:
            why = f"no checkpoint for step {step} (saved: {saved})"
        if step not in saved:
            raise FileNotFoundError(f"{self.workdir}: {why} in {self._manager.directory}")
        return step

    def _check_shapes(self, step: int, abstract_state: PyTree) -> None:
        """Raises ValueError naming every leaf whose saved shape differs from the target."""
        saved = self._manager.item_metadata(step)["state"]
        stored = {_key(p): leaf.shape for p, leaf in jax.tree.leaves_with_path(saved)}
        bad = []
        for path, leaf in jax.tree.leaves_with_path(abstract_state):
            shape = getattr(leaf, "shape", None)
            if shape is not None and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                # Typed keys are stored as their key data (trailing uint32 dimension).
                shape = jax.eval_shape(jax.random.key_data, leaf).shape
            key = _key(path)
            if shape is not None and key in stored and tuple(stored[key]) != tuple(shape):
                bad.append(f"{key}: checkpoint {tuple(stored[key])} vs target {tuple(shape)}")
        if bad:
            where = self._manager.directory / str(step)
            raise ValueError(f"{where}: saved state shapes differ: {'; '.join(bad)}")

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          CheckpointSaveError: the pending save failed (see the module docstring).
        """
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as err:
            if self._pending is None:
                raise
            raise self._save_failed(err, self._pending) from err
        self._pending = None

    def close(self) -> None:
        """Waits for pending saves and releases the manager (see `wait`)."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key(path: tuple[Any, ...]) -> str:
    # Orbax's metadata tree turns tuples into lists and namedtuples/dataclasses into
    # dicts, so compare paths by their plain key names.
    names = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(n) for n in names)


def has_checkpoint(workdir: str | epath.PathLike) -> bool:
    """Whether `workdir` holds a finished checkpoint (a step folder), without Orbax."""
    directory = epath.Path(workdir) / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def restore_state(checkpoints: Checkpointer, like: PyTree, *, which: str = "best") -> PyTree:
    """The state of the best (or, with `which="latest"` or no ranked step, the
    latest) checkpoint, shaped like the live `like`; closes `checkpoints`."""
    try:
        step = "best" if which == "best" and checkpoints.best_step() is not None else None
        state, _, _, _ = checkpoints.restore(step, abstract_state=abstract_like(like))
    finally:
        checkpoints.close()
    return state


def restore_config(workdir: str | epath.PathLike) -> dict[str, Any] | None:
    """The config saved with the latest checkpoint in `workdir` whose config file is
    whole, or None if there is none.

    Reads only the config item, so no model or abstract state is needed.
    """
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        return None
    # lightweight: Orbax would read every step's metrics file, damaged or not.
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, lightweight_initialize=True
    )
    handlers = {"config": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
        for step in sorted(manager.all_steps(), reverse=True):
            saved = directory / str(step) / "config" / "metadata"
            if saved.exists() and checkpoint_check.bad_json(saved) is None:
                config = ocp.args.Composite(config=ocp.args.JsonRestore())
                return manager.restore(step, args=config).config
            log.warning("%s: checkpoint step %d has no whole config; trying older", workdir, step)
        return None
