"""The one loader of config files, and the resolution of a config against the schema.

    config = load("experiments/configs/isbi2015_unet_heatmap.py:cpu",
                  overrides=["train.steps=20"])

`load` runs the file's `get_config(arg)`, applies `FIELD=VALUE` overrides and
`resolve`s the result: every field of `lmjax.configs.base` present (defaults for
those left out), no unknown name anywhere. Mistakes are `ConfigError`s whose one
line names the file and the field, with the nearest valid name.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from lmjax.configs import base

DEFAULT = str(pathlib.Path(__file__).with_name("phantom.py"))
CONFIG_FILE = "config.json"  # the resolved config a run writes to its workdir


class ConfigError(ValueError):
    """A config file or field that cannot be used; the message is one line."""


def split_spec(spec: str | pathlib.Path) -> tuple[pathlib.Path, str]:
    """`"PATH[:ARG]"` -> `(PATH, ARG)`."""
    text = str(spec)
    path, sep, arg = text.rpartition(":")
    if sep and path.endswith(".py") and "/" not in arg:
        return pathlib.Path(path), arg
    return pathlib.Path(text), ""


def _run_file(path: pathlib.Path, arg: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    name = f"lmjax_config_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report where, not a traceback
        raise ConfigError(f"{path}: cannot be run: {type(e).__name__}: {e}") from e
    get = getattr(module, "get_config", None)
    if not callable(get):
        raise ConfigError(f"{path}: defines no get_config(arg)")
    try:
        return get(arg) if arg else get()
    except TypeError as e:
        if arg:
            raise ConfigError(f"{path}: get_config({arg!r}): {e}") from e
        return get("")
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{path}: get_config({arg!r}): {type(e).__name__}: {e}") from e


def _nearest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, ml_collections.FieldReference):
        return value.get()
    return value


def _check_type(where: str, name: str, value: Any, field: base.Field) -> Any:
    """`value` in the field's type (ints for floats, lists for tuples), or ConfigError."""
    expected = field.kind or type(field.default)
    if isinstance(expected, tuple):
        if isinstance(value, Mapping) and dict in expected:
            return dict(value)
        if isinstance(value, expected):
            return value
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{where}: {name} must be {names}, got {type(value).__name__} {value!r}")
    if value is None:
        if field.default is None:
            return None
        raise ConfigError(f"{where}: {name} cannot be None")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if expected is dict and isinstance(value, Mapping):
        return dict(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be int, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(
            f"{where}: {name} must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _model_options(name: str) -> tuple[str, ...] | None:
    """Keyword options the family's builder takes (None: it takes any)."""
    from lmjax.models.registry import builder_options

    return builder_options(name)


def resolve(config: Any, *, source: str = "config") -> ml_collections.ConfigDict:
    """A new, locked ConfigDict with every schema field; `config` is a ConfigDict or dict.

    Raises:
      ConfigError: an unknown section or field (with the nearest valid name), a
        value of the wrong type, or an unknown model family or model option.
    """
    raw = _plain(config)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: get_config must return a ConfigDict, got {type(raw)}")
    out = base.get_config().to_dict()
    for key in base.DEFAULT_MODEL_OPTIONS:  # the default family's options are not schema
        del out["model"][key]
    tops = [*base.TOP, *base.SECTIONS]
    for section, value in raw.items():
        if section in base.TOP:
            out[section] = _check_type(source, section, _plain(value), base.TOP[section])
            continue
        if section not in base.SECTIONS:
            raise ConfigError(f"{source}: unknown field config.{section}{_nearest(section, tops)}")
        value = _plain(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: config.{section} must be a block of fields")
        fields = base.SECTIONS[section]
        for key, v in value.items():
            v = _plain(v)
            if key in fields:
                out[section][key] = _check_type(source, f"config.{section}.{key}", v, fields[key])
            elif section == "model":
                out[section][key] = v  # a family option, checked below
            else:
                near = _nearest(key, fields)
                raise ConfigError(f"{source}: unknown field config.{section}.{key}{near}")
    _check_model(out["model"], source)
    resolved = ml_collections.ConfigDict(out)
    resolved.lock()
    return resolved


def _check_model(model: dict[str, Any], source: str) -> None:
    from lmjax import models

    name = model["name"]
    if name not in models.list_models():
        near = _nearest(name, models.list_models())
        raise ConfigError(f"{source}: unknown model config.model.name={name!r}{near}")
    accepted = _model_options(name)
    if accepted is None:
        return
    for key in model:
        if key not in base.MODEL_FIELDS and key not in accepted:
            near = _nearest(key, [*accepted, *base.MODEL_FIELDS])
            raise ConfigError(f"{source}: model {name!r} takes no option config.model.{key}{near}")


_BOOLS = {"true": True, "false": False, "yes": True, "no": False}


def parse_value(text: str) -> Any:
    """A command-line value: a Python literal (1, 2e-3, (256, 192), {...}), true/false,
    else the string."""
    if text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[str], *, source: str = "--config"
) -> ml_collections.ConfigDict:
    """`config` (resolved) with `FIELD=VALUE` overrides applied, resolved again."""
    raw = config.to_dict()
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.removeprefix("config.")
        where = f"{source}.{name}"
        if not sep:
            raise ConfigError(f"{where}: needs =VALUE")
        path = name.split(".")
        if len(path) == 1:
            if path[0] not in base.TOP:
                near = _nearest(path[0], [*base.TOP, *base.SECTIONS])
                raise ConfigError(f"{where}: not a field{near}")
            raw[path[0]] = text
            continue
        section, key = path[0], ".".join(path[1:])
        fields = base.SECTIONS.get(section)
        if fields is None:
            near = _nearest(section, base.SECTIONS)
            raise ConfigError(f"{where}: unknown section {section!r}{near}")
        if len(path) > 2:  # an entry of a mapping field, e.g. task.losses.dice=1
            target = raw[section].get(path[1])
            if not isinstance(target, dict):
                raise ConfigError(f"{where}: config.{section}.{path[1]} is no mapping")
            target[".".join(path[2:])] = parse_value(text)
            continue
        field = fields.get(key)
        if field is not None and (field.default is None and field.kind is str):
            raw[section][key] = text
        elif field is not None and isinstance(field.default, str):
            raw[section][key] = text
        elif section == "model" and isinstance(raw["model"].get(key), str):
            raw[section][key] = text
        else:
            raw[section][key] = parse_value(text)
        resolve(raw, source=where)  # name the override that breaks it
    return resolve(raw, source=source)


def load(
    spec: str | pathlib.Path = DEFAULT,
    overrides: Iterable[str] = (),
    *,
    resolved: bool = True,
) -> ml_collections.ConfigDict:
    """The config of file `PATH[:ARG]` (`get_config(ARG)`), overridden and resolved.

    `resolved=False` returns the file's own ConfigDict, unlocked, for a config file
    that derives from another one and changes whole blocks.

    Raises:
      ConfigError: missing file, no `get_config`, an error inside it, an unknown
        field or a value of the wrong type; one line naming the file and field.
    """
    path, arg = split_spec(spec)
    config = _run_file(path, arg)
    if not resolved:
        if overrides:
            raise ConfigError("overrides need a resolved config")
        return config
    out = resolve(config, source=str(path))
    return apply_overrides(out, overrides) if overrides else out


def format_config(config: ml_collections.ConfigDict) -> str:
    """One `section.field = value` line per field, sorted by name."""
    lines = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict) and key in base.SECTIONS:
            lines += [f"{key}.{k} = {v!r}" for k, v in value.items()]
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines)


def save_json(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """Writes the resolved config to `workdir/config.json`; returns the path."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    path.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=False) + "\n")
    return path


def read_json(workdir: str | pathlib.Path) -> ml_collections.ConfigDict | None:
    """The resolved config of a run, from `workdir/config.json` (never a Python file);
    None when the file is missing."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    return resolve(raw, source=str(path))
