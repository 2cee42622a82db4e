"""Resuming a run with another config: which changes are safe, which need consent.

A resumed run restores parameters, optimizer state and the data iterator saved under
the old config; a different model, task, data or optimizer silently trains
something that neither config describes. So `lmjax train` on an existing workdir
compares the config saved with the checkpoint against the new one and refuses any
difference in a field not in `SAFE_FIELDS`, unless `--allow_config_change=FIELD,...`
names it (a name also covers the fields under it: `optim` allows every optimizer
field, `task.losses` every loss weight).

Safe without a flag, because they change neither what is learned nor the data order:

    train.steps                 a longer (or shorter) run; the learning-rate schedule
                                stretches to the new length from the resumed step on
    train.eval_every, train.log_every, train.keep, train.tensorboard
                                how often it validates, checkpoints and logs
    train.flip_tta, train.tta_scales, data.test_split
                                evaluation only
    data.cache_dir, data.num_threads
                                where decoded images are cached, how many threads read
    paper                       the description
    refine.*, conformal.*       stages that run after this training

A checkpoint saved by another lmjax version may lack a field added since (it then
counts as unchanged while the new config holds the field's default) or hold one
removed since (ignored); inside free mappings (`task.losses`, ...) every key counts.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterable, Mapping
from typing import Any

from lmjax.configs import base

SAFE_FIELDS = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "train.keep",
    "train.tensorboard",
    "train.flip_tta",
    "train.tta_scales",
    "data.test_split",
    "data.cache_dir",
    "data.num_threads",
    "paper",
    "refine",
    "conformal",
)
_ABSENT = "<absent>"


class ConfigChangeError(ValueError):
    """The new config differs from the checkpoint's in fields not allowed to change."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    # A JSON round trip makes tuples (a live config) and lists (a saved one) equal.
    tree = json.loads(json.dumps(tree, default=str)) if not prefix else tree
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _covered(field: str, names: Iterable[str]) -> bool:
    return any(field == n or field.startswith(n + ".") for n in names)


@functools.cache
def _defaults() -> dict[str, Any]:
    return _flat(base.get_config().to_dict())


def _version_skew(field: str, old: Any, new: Any) -> bool:
    """Whether the difference is only a field added or removed between versions."""
    if _covered(field, [".".join(m) for m in base.FREE_MAPPINGS]):
        return False
    defaults = _defaults()
    return new == _ABSENT or (old == _ABSENT and field in defaults and defaults[field] == new)


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """`{field: (saved value, current value)}` for every leaf field that differs (a
    field only one lmjax version has, at its default, does not; module docstring)."""
    a, b = _flat(dict(saved)), _flat(dict(current))
    pairs = {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys())}
    return {k: v for k, v in pairs.items() if v[0] != v[1] and not _version_skew(k, *v)}


def parse_allowed(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """`--allow_config_change`'s "a.b,c" (or a list) as field names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(n.strip() for n in items if n.strip())


def check_resume(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    allowed: Iterable[str] = (),
    *,
    where: str = "",
) -> dict[str, tuple]:
    """The differences that are allowed (safe or named), for the log.

    Raises:
      ConfigChangeError: one line listing each refused field with both values and
        the flag that would accept them.
    """
    allowed = tuple(allowed)
    changed = differences(saved, current)
    refused = {k: v for k, v in changed.items() if not _covered(k, SAFE_FIELDS + allowed)}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigChangeError(
            f"{where}: the config differs from the checkpoint's in {listed}; resume with "
            f"--allow_config_change={','.join(refused)} if that is intended, or use a new workdir"
        )
    return changed


def check_applies(allowed, config, train_fn, cross_validation: bool) -> None:
    """Raises ValueError when `--allow_config_change` is given where no resume takes
    it: a task with its own trainer, or cross-validation."""
    takes = "allow_config_change" in inspect.signature(train_fn).parameters
    if allowed and (not takes or cross_validation):
        raise ValueError(
            "--allow_config_change applies to single runs of the map heads, not to "
            f"task.mode {config.task.mode!r} runs or cross-validation"
        )
