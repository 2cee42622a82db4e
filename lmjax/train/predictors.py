"""Models for `lmjax predict` by task, looked up by `config.task.mode`.

The map heads (`lmjax.task.HEADS`) predict through their eval step
(`lmjax.train.restore.restore_trained`). A task whose finished workdir predicts
some other way (the detector -> SAM cascade) registers a factory
`workdir -> model` here, where `model(dataset) -> (coords [N, K, 2], confidence
[N, K], regions)` has a `landmark_set`. Modules listed in `_BUILTIN` register on
first lookup; none of them may reach the training loop (`lmjax predict` stays
light, a constraint `tests/test_package_structure.py` checks).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_BUILTIN = ("lmjax.train.cascade_predict",)
PREDICTORS: dict[str, Callable[..., Any]] = {}
_loaded = False


def register_predictor(mode: str, factory: Callable[..., Any], *, override=False) -> None:
    """Makes `lmjax predict` build `factory(workdir)` for runs of `task.mode == mode`."""
    if mode in PREDICTORS and PREDICTORS[mode] is not factory and not override:
        raise ValueError(f"predictor {mode!r} is already registered; pass override=True")
    PREDICTORS[mode] = factory


def predictor_for(mode: str) -> Callable[..., Any] | None:
    """The registered factory of `mode`, or None (a map head: the eval step predicts)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN:
            importlib.import_module(module)
    return PREDICTORS.get(mode)


__all__ = ["PREDICTORS", "predictor_for", "register_predictor"]
