"""What lmjax refuses to read: oversized images and annotation files, and paths in
annotation files that lead outside the data folder.

The readers (`lmjax.data.image_io` and the annotation formats) check these before
they decode or parse, so a decompression bomb, a huge TIFF or DICOM, or a JSON file
of hundreds of MB costs a `stat` and a header read, not the memory to hold it. A
refusal is a one-line `LandmarkDataError` that names the file and the limit.

The limits, their defaults, and the environment variables that change them (read at
every check; from Python, `set_limits` or the `changed` context manager):

    LMJAX_MAX_IMAGE_PIXELS      67108864    rows x columns of one image (2**26, 8192 x 8192)
    LMJAX_MAX_IMAGE_BYTES       536870912   size of one image file (512 MiB)
    LMJAX_MAX_ANNOTATION_BYTES  134217728   size of one annotation file (128 MiB)
    LMJAX_ALLOW_OUTSIDE_PATHS   0           1: paths in annotation files may lead
                                            outside the data folder (absolute, `..`)

PNG, JPEG and BMP also stop at Pillow's own limit (twice `PIL.Image.MAX_IMAGE_PIXELS`,
about 179 M pixels), which is above the default here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from lmjax.data.types import LandmarkDataError

ENV = {
    "max_image_pixels": "LMJAX_MAX_IMAGE_PIXELS",
    "max_image_bytes": "LMJAX_MAX_IMAGE_BYTES",
    "max_annotation_bytes": "LMJAX_MAX_ANNOTATION_BYTES",
    "allow_outside_paths": "LMJAX_ALLOW_OUTSIDE_PATHS",
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """The limits in force (see the module docstring)."""

    max_image_pixels: int = 2**26
    max_image_bytes: int = 512 * 2**20
    max_annotation_bytes: int = 128 * 2**20
    allow_outside_paths: bool = False


_SET: Limits | None = None


def _from_env(field: str, default: Any) -> Any:
    raw = os.environ.get(ENV[field], "").strip()
    if not raw:
        return default
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        value = int(float(raw)) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        raise ValueError(f"{ENV[field]}={raw!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{ENV[field]}={raw!r} must be positive")
    return value


def current() -> Limits:
    """The limits `set_limits` set, else those of the environment, else the defaults.

    Raises:
      ValueError: an environment variable that is not a positive whole number.
    """
    if _SET is not None:
        return _SET
    defaults = Limits()
    return Limits(**{f: _from_env(f, getattr(defaults, f)) for f in ENV})


def set_limits(limits: Limits | None) -> None:
    """Puts `limits` in force for this process; None: the environment's again."""
    global _SET
    _SET = limits


@contextlib.contextmanager
def changed(**fields: Any) -> Iterator[Limits]:
    """`current()` with `fields` replaced, in force inside the block."""
    before = _SET
    new = dataclasses.replace(current(), **fields)
    set_limits(new)
    try:
        yield new
    finally:
        set_limits(before)


def one_line(error: BaseException) -> str:
    """`Type: message` of an exception on one line, at most 300 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def malformed(name: str, what: str) -> Iterator[None]:
    """Turns any error raised while interpreting untrusted `what` (a DICOM header, an
    annotation document) into a one-line LandmarkDataError naming `name`; lmjax's
    own data errors pass unchanged."""
    try:
        yield
    except LandmarkDataError:
        raise
    except Exception as e:  # third-party parsers raise anything on hostile input
        raise LandmarkDataError(f"{name}: malformed {what} ({one_line(e)})") from e


def _check_bytes(path: pathlib.Path, limit: int, field: str, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise LandmarkDataError(f"{path}: cannot read {what} ({one_line(e)})") from e
    if size > limit:
        raise LandmarkDataError(
            f"{path}: {what} of {size:,} bytes is over the limit of {limit:,} ({ENV[field]})"
        )


def check_image_file(path: pathlib.Path) -> None:
    """Raises LandmarkDataError when the file is larger than `max_image_bytes`."""
    _check_bytes(path, current().max_image_bytes, "max_image_bytes", "image file")


def check_image_size(name: str, rows: Any, cols: Any) -> None:
    """Raises LandmarkDataError, before decoding, for a header's empty or too large
    `rows x cols` (more than `max_image_pixels`)."""
    rows, cols = int(rows), int(cols)
    limit = current().max_image_pixels
    if rows <= 0 or cols <= 0:
        raise LandmarkDataError(f"{name}: image header says {rows} x {cols} pixels; no image")
    if rows * cols > limit:
        raise LandmarkDataError(
            f"{name}: image of {rows} x {cols} = {rows * cols:,} pixels is over the limit "
            f"of {limit:,} ({ENV['max_image_pixels']}); refused before decoding"
        )


FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite_float32(values: Any) -> bool:
    """Whether every value is finite and finite as float32 too (no NaN, no inf, not
    beyond float32, where a coordinate would silently turn infinite)."""
    with np.errstate(invalid="ignore"):
        return bool((np.abs(np.asarray(values, np.float64)) <= FLOAT32_MAX).all())


def check_finite(pixels: np.ndarray, name: str) -> np.ndarray:
    """`pixels`, or a LandmarkDataError when some are NaN or infinite (a float TIFF or
    DICOM can hold them; they would surface much later as a NaN loss)."""
    finite = np.isfinite(pixels)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise LandmarkDataError(f"{name}: {bad:,} pixels are NaN or infinite; refused")
    return pixels


def check_dicom_pixels(ds: Any, name: str) -> None:
    """Rows x Columns within the limits and, for uncompressed pixel data, as many bytes
    as the header describes; LandmarkDataError otherwise (one line, naming `name`)."""
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise LandmarkDataError(f"{name}: DICOM pixel data without Rows and Columns")
    check_image_size(name, rows, cols)
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 0)
    if bits not in (1, 8, 16, 32, 64) or not 1 <= samples <= 4:
        raise LandmarkDataError(
            f"{name}: DICOM BitsAllocated {bits} and SamplesPerPixel {samples} describe no image"
        )
    need = math.ceil(int(rows) * int(cols) * samples * bits / 8)
    have = len(ds.PixelData)
    if have < need:
        raise LandmarkDataError(
            f"{name}: DICOM header says {rows} x {cols} x {samples} samples of {bits} bits "
            f"({need:,} bytes) but the pixel data holds {have:,} bytes (truncated or wrong header)"
        )


def read_text(path: pathlib.Path, what: str) -> str:
    """The text of an annotation file after its size check.

    Raises:
      LandmarkDataError: unreadable, not UTF-8, or larger than `max_annotation_bytes`.
    """
    _check_bytes(path, current().max_annotation_bytes, "max_annotation_bytes", what)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkDataError(f"{path}: cannot read {what} ({one_line(e)})") from e


def read_json(path: pathlib.Path, what: str) -> Any:
    """An annotation JSON document after its size check (see `read_text`).

    Raises:
      LandmarkDataError: as `read_text`, or not valid JSON (nesting too deep included).
    """
    text = read_text(path, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise LandmarkDataError(f"{path}: not a readable {what} ({one_line(e)})") from e


def inside(folder: pathlib.Path, name: Any, *, source: str, field: str) -> pathlib.Path:
    """`folder / name` for a path `name` read from an annotation file (`source`,
    `field`), refused when it leaves `folder` (an absolute path, or `..` climbing
    out of it) unless `allow_outside_paths`.

    The check is on the path as written: links inside the folder are followed,
    because whoever owns the data folder made them (image folders are often links
    to shared storage).

    Raises:
      LandmarkDataError: naming `source`, the field and the path.
    """
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise LandmarkDataError(f"{source}: {field} {name!r} is not a file name")
    if not current().allow_outside_paths:
        pure = pathlib.PurePath(os.path.normpath(name))
        if pure.is_absolute() or pure.drive or (pure.parts and pure.parts[0] == ".."):
            raise LandmarkDataError(
                f"{source}: {field} {name!r} leads outside the data folder {folder}; refused "
                f"(set {ENV['allow_outside_paths']}=1 to allow)"
            )
    return folder / name
