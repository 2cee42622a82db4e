"""Pretrained weights from the user's own checkpoint files into NNX models.

Nothing is downloaded: the user brings a file (`.safetensors`, `.npz`, or PyTorch's
`.pth`/`.pt`/`.bin`, read without PyTorch by a restricted unpickler) and names a
mapping table:

    report = load_pretrained(model, "sapiens_0.3b.safetensors", "vit_sapiens")
    print(report.summary())

A table is a list of `Rule`s. Each rule matches checkpoint keys with a regular
expression (`re.fullmatch`), names the model parameter it fills (a dot-separated
path such as `blocks.3.attn.qkv.kernel`, which may use the match's groups), the
layout transform (`TRANSFORMS`: PyTorch `[out, in]` Linear -> Flax `[in, out]`,
OIHW conv -> HWIO, ...) and optionally a `fit` (`FITS`) that adapts the array to
the model's shape (position-table resizing, summing RGB kernels for gray input).
A rule whose target is None names a known key the model has no use for; such keys
are listed as `skipped`, not `unexpected`.

The model is changed in place: every target is cast to the dtype of the variable
it fills, and everything no rule fills keeps its initial value. Targets may be any
variable of the model (parameters and batch statistics); `missing` lists the
parameters and batch statistics no rule filled, less `ignore_missing` and, by
default, LoRA adapters (`LoRAParam`), which no base checkpoint holds. On a model
with LoRA applied a rule's target `....qkv.kernel` also finds the wrapped
`....qkv.base.kernel`, so tables are written for the plain model.

Model families register their tables with `register_weight_table`; the tables of
lmjax's models ("vit_sapiens", "vit_timm", "vitpose", "swin_unetr_monai",
"vgg16_torchvision") are in `lmjax.models.weight_tables`. Files are read by
`lmjax.models.weight_files`, arrays converted by `lmjax.models.weight_arrays`. The
training loop calls `load_from_config` with `config.model`:

    model.pretrained         path of the checkpoint ("" = train from scratch)
    model.pretrained_table   table name (default: the model's, e.g. vit_pose -> vit_sapiens)
    model.pretrained_strict  raise unless every parameter is filled and every key used
    model.pretrained_ignore  more patterns of model paths allowed to stay missing
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.lora import LoRALinear, LoRAParam

# bicubic_matrix and resize_grid stay importable from here for the tests.
from lmjax.models.weight_arrays import (  # noqa: F401
    FITS,
    TRANSFORMS,
    bicubic_matrix,
    resize_grid,
)
from lmjax.models.weight_files import read_checkpoint


@dataclasses.dataclass(frozen=True)
class Rule:
    """Checkpoint keys matching `source` (re.fullmatch) fill the model path `target`.

    `target`: a dot path that may use `\\1` / `\\g<name>` (`re.Match.expand`), a
    function of the match, or None for keys to skip on purpose. `transform` names
    an entry of `TRANSFORMS`, `fit` (optional) one of `FITS`, applied after it with
    the model variable's shape.
    """

    source: str
    target: str | Callable[[re.Match], str] | None
    transform: str = "identity"
    fit: str | None = None

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"unknown transform {self.transform!r}; known: {', '.join(TRANSFORMS)}"
            )
        if self.fit is not None and self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}; known: {', '.join(FITS)}")
        re.compile(self.source)


@dataclasses.dataclass
class ImportReport:
    """What `load_pretrained` did; `ok` when nothing was missing, unexpected or mismatched."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, str, tuple, tuple]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    # checkpoint key -> the target its rule named, for unexpected keys with no such path
    no_target: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, first: int = 5) -> str:
        """Counts, and the first `first` names of each problem."""

        def some(items: Sequence[str]) -> str:
            more = f", ... ({len(items) - first} more)" if len(items) > first else ""
            return ", ".join(items[:first]) + more

        lines = [
            f"pretrained weights: {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched, "
            f"{len(self.skipped)} skipped"
        ]
        if self.missing:
            lines.append(f"  missing (kept their initial values): {some(self.missing)}")
        if self.unexpected:
            named = [
                f"{k} (-> {self.no_target[k]}: not in the model)" if k in self.no_target else k
                for k in self.unexpected
            ]
            lines.append(f"  unexpected (not loaded): {some(named)}")
        if self.mismatched:
            shown = [
                f"{k} -> {p}: {tuple(a)} vs model {tuple(b)}" for k, p, a, b in self.mismatched
            ]
            lines.append(f"  shape mismatch (not loaded): {some(shown)}")
        return "\n".join(lines)


WEIGHT_TABLES: dict[str, list[Rule]] = {}
TABLE_IGNORE: dict[str, tuple[str, ...]] = {}  # per table: model paths usually not in it
MODEL_TABLES: dict[str, str] = {}  # model registry name -> its default table


def register_weight_table(
    name: str,
    rules: Sequence[Rule],
    *,
    ignore_missing: Sequence[str] = (),
    model: str | Sequence[str] | None = None,
) -> None:
    """Adds the table `name` (a taken name is an error).

    `ignore_missing`: patterns of model paths the table never fills (e.g. "head"),
    applied whenever the table is used by name. `model`: registry name(s) of the
    model(s) this table is the default for (`config.model.pretrained_table` may then
    be omitted); a model keeps the first table registered for it.
    """
    if name in WEIGHT_TABLES:
        raise ValueError(f"weight table {name!r} is already registered")
    WEIGHT_TABLES[name] = list(rules)
    TABLE_IGNORE[name] = tuple(ignore_missing)
    for model_name in (model,) if isinstance(model, str) else (model or ()):
        MODEL_TABLES.setdefault(model_name, name)


def _dot(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def _variables(model: nnx.Module) -> tuple[dict, dict[str, str]]:
    """`{dot path: (path, variable)}` of every non-RNG variable, and LoRA aliases
    (`a.qkv.kernel` -> `a.qkv.base.kernel`)."""
    found = {
        _dot(p): (p, v)
        for p, v in nnx.to_flat_state(nnx.state(model))
        if not isinstance(v, nnx.RngState)
    }
    wrapped = [p for p, node in nnx.iter_graph(model) if isinstance(node, LoRALinear)]
    aliases = {}
    for path in wrapped:
        inner = _dot((*path, "base")) + "."
        for key in found:
            if key.startswith(inner):
                aliases[_dot(path) + "." + key[len(inner) :]] = key
    return found, aliases


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) or path.startswith(p + ".") for p in patterns)


def _rules(table: str | Sequence[Rule]) -> tuple[list[Rule], tuple[str, ...]]:
    if isinstance(table, str):
        if table not in WEIGHT_TABLES:
            known = ", ".join(sorted(WEIGHT_TABLES))
            raise ValueError(f"unknown weight table {table!r}; known: {known}")
        return WEIGHT_TABLES[table], TABLE_IGNORE[table]
    return list(table), ()


def load_pretrained(
    model: nnx.Module,
    checkpoint: str | os.PathLike | Mapping[str, np.ndarray],
    table: str | Sequence[Rule],
    *,
    strict: bool = False,
    ignore_missing: Sequence[str] = (),
    ignore_lora: bool = True,
) -> ImportReport:
    """Fills the variables of `model` that `table` maps from `checkpoint`, in place.

    Args:
      model: any NNX module (LoRA adapters applied or not).
      checkpoint: a file for `read_checkpoint`, or a dict of arrays.
      table: a registered table name (its `ignore_missing` patterns apply too) or rules.
      strict: raise instead of loading when anything is missing, unexpected or
        mismatched.
      ignore_missing: patterns of model paths (re.fullmatch, or a path prefix such as
        "head") that may stay unfilled without being reported missing.
      ignore_lora: LoRA adapter matrices are never reported missing.
    Returns:
      The `ImportReport`.
    Raises:
      ValueError: two keys fill the same variable; or, with `strict`, the report's
        summary when it is not `ok` (the model is then left unchanged).
    """
    arrays = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    rules, table_ignore = _rules(table)
    ignore = (*table_ignore, *ignore_missing)
    found, aliases = _variables(model)
    compiled = [(re.compile(r.source), r) for r in rules]
    report = ImportReport()
    writers: dict[str, str] = {}  # model path -> checkpoint key
    updates = []
    for key in sorted(arrays):
        hit = next(((m, r) for rx, r in compiled if (m := rx.fullmatch(key))), None)
        if hit is None:
            report.unexpected.append(key)
            continue
        match, rule = hit
        if rule.target is None:
            report.skipped.append(key)
            continue
        target = rule.target(match) if callable(rule.target) else match.expand(rule.target)
        path = target if target in found else aliases.get(target)
        if path is None:
            report.unexpected.append(key)
            report.no_target[key] = target
            continue
        if path in writers:
            raise ValueError(f"checkpoint keys {writers[path]!r} and {key!r} both fill {path}")
        writers[path] = key
        flat_path, var = found[path]
        shape = tuple(var[...].shape)
        value = np.asarray(arrays[key])
        try:
            value = TRANSFORMS[rule.transform](value)
            if rule.fit is not None:
                value = FITS[rule.fit](value, shape)
        except ValueError:
            pass  # the shape check below reports it
        if tuple(value.shape) != shape:
            report.mismatched.append((key, path, tuple(value.shape), shape))
            continue
        report.loaded.append(path)
        updates.append((flat_path, var.replace(jnp.asarray(value, var[...].dtype))))
    for path, (_, var) in found.items():
        if path in writers or not isinstance(var, nnx.Param | nnx.BatchStat):
            continue
        if ignore_lora and isinstance(var, LoRAParam):
            continue
        alias = next((a for a, p in aliases.items() if p == path), path)
        if not (_ignored(path, ignore) or _ignored(alias, ignore)):
            report.missing.append(path)
    report.loaded.sort()
    report.missing.sort()
    if strict and not report.ok:
        raise ValueError(report.summary(first=20))
    if updates:
        nnx.update(model, nnx.from_flat_state(updates))
    return report


CONFIG_KEYS = ("pretrained", "pretrained_table", "pretrained_strict", "pretrained_ignore")


def load_from_config(model: nnx.Module, model_config, *, log=print) -> ImportReport | None:
    """Loads `model_config.pretrained` (if set) into `model`; logs the summary.

    `model_config` is a resolved `config.model` (`lmjax.configs.resolve`), which has
    every key in `CONFIG_KEYS` (see the module docstring); returns None when no
    file is set.
    """
    path = model_config.pretrained
    if not path:
        return None
    table = model_config.pretrained_table or MODEL_TABLES.get(model_config.name, "")
    if not table:
        raise ValueError(
            f"model.pretrained is set but model {model_config.name!r} has no default weight "
            f"table; set model.pretrained_table to one of {', '.join(sorted(WEIGHT_TABLES))}"
        )
    report = load_pretrained(
        model,
        path,
        table,
        strict=bool(model_config.pretrained_strict),
        ignore_missing=tuple(model_config.pretrained_ignore),
    )
    log(f"{path} ({table}):\n{report.summary()}")
    return report
