"""Trainers by task: what `lmjax train`, `evaluate`, `benchmark` and `compile-check`
run for a config, looked up by `config.task.mode`.

The map heads (heatmap, segmentation, coordinate; `lmjax.task.HEADS`) share one
trainer, the loop in `lmjax.train.loop`. A task that learns something else (SAM's
decoder on cached embeddings and box prompts) registers its own `Trainer` under
its mode; modules listed in `_BUILTIN` register on first lookup, so the CLI needs
no edit for a new one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

# Modules whose import registers a trainer (imported lazily: they pull in models).
_BUILTIN = ("lmjax.train.sam_decoder", "lmjax.train.cascade")


class Trainer(NamedTuple):
    """One task's commands; each returns a JSON-ready report."""

    # (config, workdir, *, log) -> final validation report
    train: Callable[..., dict[str, Any]]
    # (workdir, *, split, data_dir, ground_truth, log) -> report
    evaluate: Callable[..., dict[str, Any]]
    # (config, *, steps, warmup, data, infer_batch) -> report; None: not measurable
    benchmark: Callable[..., dict[str, Any]] | None = None
    format_benchmark: Callable[[dict[str, Any]], str] | None = None
    # (config, *, device_memory_gb) -> report with "fits"
    compile_check: Callable[..., dict[str, Any]] | None = None
    format_compile_check: Callable[[dict[str, Any]], str] | None = None


TRAINERS: dict[str, Trainer] = {}
_loaded = False


def register_trainer(mode: str, trainer: Trainer, *, override: bool = False) -> Trainer:
    """Makes `trainer` run every config whose `task.mode` is `mode`."""
    if mode in TRAINERS and TRAINERS[mode] is not trainer and not override:
        raise ValueError(f"trainer {mode!r} is already registered; pass override=True")
    TRAINERS[mode] = trainer
    return trainer


def lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported at its first call (benchmarks pull in heavy modules
    that training does not need)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN:
            importlib.import_module(module)


def _map_trainer() -> Trainer:
    from lmjax import benchmark, compilation
    from lmjax.train import evaluation, loop

    return Trainer(
        train=loop.train,
        evaluate=evaluation.evaluate_workdir,
        benchmark=benchmark.benchmark,
        format_benchmark=benchmark.format_benchmark,
        compile_check=compilation.compile_check,
        format_compile_check=compilation.format_compile_check,
    )


def list_modes() -> list[str]:
    """Task modes with their own trainer (the map heads' modes are not listed)."""
    _load_builtin()
    return sorted(TRAINERS)


def trainer_for(config) -> Trainer:
    """The trainer of `config.task.mode`: a registered one, else the map heads' loop."""
    _load_builtin()
    return TRAINERS.get(config.task.mode) or _map_trainer()


def trainer_for_workdir(workdir) -> Trainer:
    """The trainer that made `workdir` (read from its `config.json`)."""
    from lmjax.train.restore import read_config

    return trainer_for(read_config(workdir))
