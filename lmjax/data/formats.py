"""One registry of dataset formats, looked up by name or detected from a path.

A format is a reader `read(path, options) -> Dataset`, an optional detector
`detect(path) -> bool`, a one-line description and a Markdown layout for the
README's table. Each format module registers itself; `lmjax.data.builtin_formats`
lists the built-in ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Callable

from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet

Reader = Callable[[pathlib.Path, "ReadOptions"], Dataset]
Detector = Callable[[pathlib.Path], bool]

# Formats without a stated priority are tried after the built-in annotation
# formats and before a plain folder of images (90), which any folder with an
# image would otherwise match first.
DEFAULT_PRIORITY = 50

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What `load_dataset` passes to every reader; a reader uses what it needs.

    Attributes:
      ground_truth: ISBI 2015 ground truth: "senior", "junior" or "mean".
      image_dir: where the images are, when not beside the annotations.
      landmark_set: the expected landmarks, or None to take the file's.
      strict: duplicated labels are errors rather than warnings.
      phantom_size, seed: size and seed of a generated dataset.
    """

    ground_truth: str = "senior"
    image_dir: str | pathlib.Path | None = None
    landmark_set: LandmarkSet | None = None
    strict: bool = False
    phantom_size: int = 200
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """A registered format; `layout` None keeps it out of tables and file hints."""

    name: str
    read: Reader
    detect: Detector | None
    description: str
    layout: str | None
    priority: int
    order: int


_FORMATS: dict[str, FormatSpec] = {}
_counter = 0
_builtins_loaded = False


def _check_callable(fn: object, args: tuple, what: str, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} for format {name!r} is not callable")
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        shape = ", ".join(("path", "options")[: len(args)])
        raise TypeError(f"{what} for format {name!r} must take ({shape})") from None
    except ValueError:
        pass  # builtins without a signature: trust them


def register_format(
    name: str,
    *,
    read: Reader,
    detect: Detector | None,
    description: str,
    layout: str | None,
    priority: int = DEFAULT_PRIORITY,
    override: bool = False,
) -> FormatSpec:
    """Adds a format under `name`; a taken name is an error unless `override`.

    Args:
      name: the `--format` value.
      read: `read(path: pathlib.Path, options: ReadOptions) -> Dataset`.
      detect: `detect(path: pathlib.Path) -> bool`, for an existing file or
        folder; None for a format used only by name.
      description: one line for help texts.
      layout: Markdown for the README's format table (pipes are escaped there);
        None for a format that reads no files.
      priority: detectors run lowest first; ties in registration order.
      override: replace a format already registered under `name`.

    Signatures are checked here, at import, rather than at first use.
    """
    global _counter
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"format name {name!r}: use letters, digits, '_', '-' or '.'")
    old = _FORMATS.get(name)
    if old is not None and old.read is not read and not override:
        raise ValueError(f"format {name!r} is already registered; pass override=True")
    _check_callable(read, (None, None), "reader", name)
    if detect is not None:
        _check_callable(detect, (None,), "detector", name)
    if "\n" in description or (layout is not None and "\n" in layout):
        raise ValueError(f"format {name!r}: description and layout must be one line")
    _counter += 1
    spec = FormatSpec(
        name=name,
        read=read,
        detect=detect,
        description=description,
        layout=layout,
        priority=int(priority),
        # A replaced format keeps its place in listings.
        order=old.order if old is not None else _counter,
    )
    _FORMATS[name] = spec
    return spec


def unregister_format(name: str) -> FormatSpec:
    """Removes `name` and returns its entry (which `register_format` can restore)."""
    return _FORMATS.pop(get_format(name).name)


def _load_builtins() -> None:
    # Imported on first lookup rather than at the top: the format modules import
    # this registry, so a top-level import here would be a cycle.
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import lmjax.data.builtin_formats  # noqa: F401


def _specs() -> list[FormatSpec]:
    _load_builtins()
    return sorted(_FORMATS.values(), key=lambda s: s.order)


def list_formats() -> list[str]:
    """Registered format names in registration order (the `--format` choices)."""
    return [s.name for s in _specs()]


def get_format(name: str) -> FormatSpec:
    """The format registered as `name`.

    Raises:
      LandmarkDataError: `name` is not registered (one line listing the known names).
    """
    _load_builtins()
    if name not in _FORMATS:
        raise LandmarkDataError(f"unknown format {name!r}; known: {', '.join(list_formats())}")
    return _FORMATS[name]


def file_formats() -> list[str]:
    """Formats that read files (every one with a layout), in registration order."""
    return [s.name for s in _specs() if s.layout is not None]


def detect_format(data_dir: str | pathlib.Path) -> str:
    """The first format, by priority, whose detector accepts the file or folder.

    Raises:
      LandmarkDataError: the path does not exist, or no detector accepts it (the
        message lists the formats and annotation folders one level down).
    """
    path = pathlib.Path(data_dir)
    if not path.exists():
        raise LandmarkDataError(f"{path}: no such file or folder")
    for spec in sorted(_specs(), key=lambda s: (s.priority, s.order)):
        if spec.detect is not None and spec.detect(path):
            return spec.name
    formats = ", ".join(file_formats())
    if path.is_file():
        raise LandmarkDataError(f"{path}: no format reads this file (formats: {formats})")
    nested = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.glob("*.json")))
    hint = f"; annotation folders inside: {', '.join(nested)}" if nested else ""
    raise LandmarkDataError(f"{path}: no images or annotations found (formats: {formats}){hint}")


def markdown_table() -> str:
    """The README's format table: one row per layout, formats sharing it on one row."""
    rows: dict[str, list[str]] = {}
    for spec in _specs():
        if spec.layout is not None:
            rows.setdefault(spec.layout, []).append(f"`{spec.name}`")
    lines = ["| format | layout |", "|---|---|"]
    for layout, names in rows.items():
        cell = layout.replace("|", r"\|")  # a bare pipe would end the cell
        lines.append(f"| {' / '.join(names)} | {cell} |")
    return "\n".join(lines)


def format_help() -> str:
    """One line per format, name and description, for command-line help."""
    specs = _specs()
    width = max((len(s.name) for s in specs), default=0)
    return "\n".join(f"{s.name:<{width}}  {s.description}" for s in specs)
