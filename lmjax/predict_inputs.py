"""The files `lmjax predict` reads and the names of what it writes for them."""

from __future__ import annotations

import os
import pathlib
import sys

from lmjax.data import image_io
from lmjax.data.labelme import natural_key
from lmjax.data.types import LandmarkDataError


def collect_inputs(inputs: list[str]) -> list[pathlib.Path]:
    """Image files named by `inputs`, folders giving theirs in natural order; other
    files in a folder are skipped with a note on stderr, a file named twice counts once.

    Raises:
      LandmarkDataError: an input is missing, a named file is not an image file,
        or a folder holds no image files.
    """
    files: list[pathlib.Path] = []
    for path in map(pathlib.Path, inputs):
        if path.is_dir():
            found = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
            for p in found:
                if not image_io.is_image_file(p):  # also false for folders: not recursed
                    print(f"lmjax predict: {p}: not an image file; skipped", file=sys.stderr)
            found = [p for p in found if image_io.is_image_file(p)]
            if not found:
                raise LandmarkDataError(f"{path}: no image files")
            files += found
        elif not path.is_file():
            raise LandmarkDataError(f"{path}: no such file or folder")
        elif not image_io.is_image_file(path):
            raise LandmarkDataError(f"{path}: not an image file (DICOM, PNG, JPEG, BMP or TIFF)")
        else:
            files.append(path)
    first = {p.resolve(): p for p in reversed(files)}
    return [p for p in files if first[p.resolve()] is p]


def unique_stems(files: list[pathlib.Path]) -> list[str]:
    """File stems, with `_2`, `_3`, ... where they collide (ignoring case, as macOS
    and Windows file systems do)."""
    stems: list[str] = []
    for p in files:
        taken, n = {s.lower() for s in stems}, 1
        while (stem := p.stem if n == 1 else f"{p.stem}_{n}").lower() in taken:
            n += 1
        stems.append(stem)
    return stems


def relative(path: pathlib.Path, start: pathlib.Path) -> str:
    """`path` relative to `start` with `/`, or absolute across Windows drives."""
    try:
        return pathlib.Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


__all__ = ["collect_inputs", "relative", "unique_stems"]
