"""The training loop: one readable pass through mesh, input, model, steps, evaluation.

Validation uses `lmjax.train.evaluation`, the code of `lmjax evaluate`, so the
numbers in the log are the numbers a user gets later. Metrics are fetched from
the device only every `log_every` steps.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import numpy as np

from lmjax import configs, parallel
from lmjax.task import task_spec
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train import config_change, ensemble
from lmjax.train.batch_log import BatchLog
from lmjax.train.evaluation import evaluate_state
from lmjax.train.logs import RunLog, validation_overlays
from lmjax.train.optim import ReduceOnPlateau
from lmjax.train.setup import (
    augments_on_device,
    build,
    check_region_masks,
    device_keys,
    has_geometry,
    load_splits,
    make_train_pipeline,
    save_landmark_set,
)
from lmjax.train.state import set_lr_scale

_PLATEAU_FIELDS = ("scale", "best", "num_bad", "cooldown_left")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says where."""


def train(
    config, workdir: str | pathlib.Path, *, log=print, allow_config_change=()
) -> dict[str, Any]:
    """Trains (or resumes) into `workdir`; returns the final validation report.

    On SIGTERM or SIGINT (Ctrl-C) the current step is checkpointed (without
    validating, unless it is a validation step, so that a resumed run takes the
    steps an uninterrupted one would) and the report carries `stopped_by` with the
    signal's name; a second SIGINT exits at once, leaving the save in flight
    unfinished (the next run removes it and resumes from the previous one).

    Resuming, the config saved with the checkpoint must equal `config` except in
    `config_change.SAFE_FIELDS` and the fields named in `allow_config_change`.

    Raises:
      TrainingError: a non-finite loss, or a checkpoint save failed (disk full).
      ConfigChangeError: resuming with a changed config (a ValueError).
    """
    config = configs.resolve(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        log("resolved config:\n  " + configs.format_config(config).replace("\n", "\n  "))
        log(f"wrote {configs.save_json(config, workdir)}")
    cache_dir = config.data.cache_dir or str(workdir / "cache")
    train_ds, val_ds, _ = load_splits(config)
    k = train_ds.landmark_set.num_landmarks
    save_landmark_set(workdir, train_ds.landmark_set)
    mesh, state, train_step, eval_step, optim = build(config, k, train_ds.landmark_set, log=log)
    shipped = device_keys(
        task_spec(config),
        augment_on_device=augments_on_device(config),
        geometry=has_geometry(train_ds.landmark_set),
    )
    check_region_masks(train_ds, shipped, config.task.losses)
    jax.set_mesh(mesh)
    batches = make_train_pipeline(config, train_ds, cache_dir=cache_dir)
    plateau = ReduceOnPlateau.from_config(optim)
    checkpoints = ckpt_lib.Checkpointer(workdir, max_to_keep=config.train.keep)
    start = 0
    if checkpoints.latest_step() is not None:
        allowed = config_change.parse_allowed(allow_config_change)

        def check_config(saved: dict[str, Any]) -> None:
            changed = config_change.check_resume(
                saved, config.to_dict(), allowed, where=str(workdir)
            )
            if changed:
                log(
                    "resuming with changed "
                    + ", ".join(f"{k}={v[1]!r}" for k, v in changed.items())
                )

        state, data_state, _, metrics = checkpoints.restore(
            abstract_state=ckpt_lib.abstract_like(state), check_config=check_config
        )
        batches.set_state(data_state)
        for key in _PLATEAU_FIELDS:
            if metrics and f"plateau_{key}" in metrics:
                setattr(plateau, key, type(getattr(plateau, key))(metrics[f"plateau_{key}"]))
        start = int(state.step)
        log(f"resumed from step {start} in {workdir}")
    elif config.train.init_from:
        from lmjax.train.restore import init_from

        state = init_from(state, config.train.init_from, train_ds.landmark_set, log=log)

    stop = {"signal": None}
    previous = {s: signal.signal(s, _stop_handler(stop)) for s in _STOP_SIGNALS}
    history = RunLog(workdir, tensorboard=config.train.tensorboard)
    batch_log = BatchLog(workdir)
    report: dict[str, Any] = {}
    try:
        t0, seen, skipped = time.perf_counter(), 0, None
        for step in range(start + 1, config.train.steps + 1):
            batch = next(batches)
            batch_log.write(step, batch, shipped)
            device_batch = parallel.shard_batch({k: batch[k] for k in shipped}, mesh)
            state, metrics = train_step(state, device_batch)
            skipped = metrics["skipped"] if skipped is None else skipped + metrics["skipped"]
            seen += config.train.batch_size
            last = step == config.train.steps
            stopping = stop["signal"] is not None
            if jax.process_count() > 1:
                # SIGTERM reaches the processes at different steps, but they have to stop
                # at the same one (evaluation and checkpointing are collective); they
                # agree at log steps, so that the other steps stay free of host syncs.
                at_log = step % config.train.log_every == 0 or last
                stopping = at_log and parallel.any_process(stopping)
            if step % config.train.log_every == 0 or last or stopping:
                values = {name: float(v) for name, v in jax.device_get(metrics).items()}
                if float(skipped) > 0 or not np.isfinite(values["loss"]):
                    raise TrainingError(
                        f"non-finite loss or gradient at or before step {step} "
                        f"(loss {values['loss']}); the last good checkpoint is "
                        f"step {checkpoints.latest_step()} in {workdir}"
                    )
                rate = seen / (time.perf_counter() - t0)
                eta = (config.train.steps - step) * config.train.batch_size / rate
                log(
                    f"step {step}/{config.train.steps}  loss {values['loss']:.5f}  "
                    f"{rate:.1f} img/s  eta {eta:.0f}s"
                )
                history.write(step, "train", {**values, "images_per_s": rate})
                t0, seen = time.perf_counter(), 0
            evaluating = step % config.train.eval_every == 0 or last
            if evaluating:
                report, coords, _ = evaluate_state(
                    config, eval_step, mesh, state, val_ds, cache_dir=cache_dir
                )
                if history.has_tensorboard:
                    history.images(step, "val/overlay", validation_overlays(val_ds, coords))
                scale = plateau.update(report["mre"])
                state = set_lr_scale(state, scale, mesh)
                log(
                    f"step {step}  val MRE {report['mre']:.3f} {report['unit']}  "
                    f"SDR@2 {report['sdr']['2']:.1f}%  lr scale {scale:g}"
                )
                if "members" in report:  # an ensemble: each member beside it
                    log(ensemble.format_members(report))
                keys = ("mre", "sd", "median", "p95", "sdr", "unit")
                members = {f"member{m['member']}_mre": m["mre"] for m in report.get("members", ())}
                history.write(step, "val", {key: report[key] for key in keys} | members)
            if evaluating or stopping:
                checkpoints.save(
                    step,
                    state,
                    data_state=batches.get_state(),
                    config=config.to_dict(),
                    metrics={
                        **({"val_mre": report["mre"]} if evaluating else {}),
                        **{f"plateau_{key}": getattr(plateau, key) for key in _PLATEAU_FIELDS},
                    },
                )
            if stopping:
                why = stop["signal"] or "SIGTERM"  # or another process's signal
                log(f"{why}: saved step {step} in {workdir}; exiting")
                report["stopped_by"] = why
                break
        checkpoints.wait()  # the last save's failure is this run's failure
    except ckpt_lib.CheckpointSaveError as err:
        raise TrainingError(str(err)) from err
    finally:
        # A failed save is reported above, or an error in flight says more.
        with contextlib.suppress(ckpt_lib.CheckpointSaveError):
            checkpoints.close()
        history.close()
        batch_log.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return report


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_handler(stop: dict[str, Any]):
    """Asks the loop to save and stop; a second SIGINT (Ctrl-C pressed again, the
    user no longer waits for the save) ends the process at once."""

    def handle(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and stop["signal"] is not None:
            print(f"{name} again: exiting without waiting for the save", file=sys.stderr)
            sys.stderr.flush()
            os._exit(128 + signum)
        stop["signal"] = stop["signal"] or name
        if signum == signal.SIGINT:
            print(
                f"{name}: saving the current step; press Ctrl-C again to exit at once",
                file=sys.stderr,
            )

    return handle
