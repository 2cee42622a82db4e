"""The files `lmjax predict` reads and the names of what it writes for them.

Folders are searched recursively and the outputs keep their layout: the image
`IN/a/b/x.dcm` of the input folder `IN` gets `OUT/a/b/x.json` (`.png`,
`.labelme.json`); files named directly go to the top of `OUT`. Names are made
unique per output folder (`x`, `x_2`, ... ignoring case). Hidden files and folders
(`.name`) and the output folder itself (when it lies inside an input folder) are
not searched; symbolic links to folders are followed, each folder once.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np

from lmjax.data import image_io
from lmjax.data.labelme import natural_key
from lmjax.data.types import LandmarkDataError

OUTPUT_EXTENSIONS = (".json", ".png", ".labelme.json")


class Input(NamedTuple):
    path: pathlib.Path  # the image file
    name: str  # its outputs' path under the output folder, without extension: "a/b/x"
    # What the outputs call the image in place of its path (`--anonymize_names`:
    # the hashed name and the file's extension); None: its path.
    alias: str | None = None

    @property
    def label(self) -> str:
        """The image's file name as the outputs give it."""
        return self.alias or self.path.name


def anonymized(planned: list[Input], anonymizer) -> list[Input]:
    """`planned` renamed by `anonymizer` (`lmjax.anonymize`): each output name
    becomes the hash of the whole one, folders included, so the outputs lie flat."""
    out = []
    for item in planned:
        stem = anonymizer.stem(item.name)
        # Any other "extension" is part of the name ("DOE.JOHN"), and the file DICOM.
        ext = item.path.suffix.lower()
        ext = ext if ext in image_io.SUPPORTED_EXTENSIONS else ".dcm"
        out.append(Input(item.path, stem, f"{stem}{ext}"))
    return out


def _walk(root: pathlib.Path, skip: set[pathlib.Path]) -> list[tuple[pathlib.Path, str]]:
    """`(file, folder relative to root)` of every non-hidden file under `root`, each
    folder's files in natural order, then its subfolders in natural order."""
    found: list[tuple[pathlib.Path, str]] = []
    seen = set(skip)
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = pathlib.Path(folder).resolve()
        if real in seen:  # a link back up the tree, or the output folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        rel = pathlib.Path(folder).relative_to(root).as_posix()
        for name in sorted((f for f in files if not f.startswith(".")), key=natural_key):
            found.append((pathlib.Path(folder) / name, "" if rel == "." else rel))
    return found


def plan_inputs(inputs: list[str], *, exclude: str | os.PathLike | None = None) -> list[Input]:
    """The image files named by `inputs` (files, and folders searched recursively)
    with their output names; non-image files in a folder are skipped with a note on
    stderr, a file named twice counts once. `exclude`: a folder not searched (the
    output folder).

    Raises:
      LandmarkDataError: an input is missing, a named file is not an image file,
        or a folder holds no image files.
    """
    skip = {pathlib.Path(exclude).resolve()} if exclude is not None else set()
    files: list[tuple[pathlib.Path, str]] = []
    for path in map(pathlib.Path, inputs):
        if path.is_dir():
            found = []
            for p, rel in _walk(path, skip - {path.resolve()}):
                if image_io.is_image_file(p):
                    found.append((p, rel))
                else:
                    print(f"lmjax predict: {p}: not an image file; skipped", file=sys.stderr)
            if not found:
                raise LandmarkDataError(f"{path}: no image files")
            files += found
        elif not path.is_file():
            raise LandmarkDataError(f"{path}: no such file or folder")
        elif not image_io.is_image_file(path):
            raise LandmarkDataError(f"{path}: not an image file (DICOM, PNG, JPEG, BMP or TIFF)")
        else:
            files.append((path, ""))
    first = {p.resolve(): p for p, _ in reversed(files)}
    files = [(p, rel) for p, rel in files if first[p.resolve()] is p]
    by_folder: dict[str, list[int]] = defaultdict(list)
    for i, (_, rel) in enumerate(files):
        by_folder[rel].append(i)
    names = [""] * len(files)
    for rel, index in by_folder.items():
        stems = unique_stems([files[i][0] for i in index])
        for i, stem in zip(index, stems, strict=True):
            names[i] = f"{rel}/{stem}" if rel else stem
    return [Input(p, name) for (p, _), name in zip(files, names, strict=True)]


def collect_inputs(inputs: list[str]) -> list[pathlib.Path]:
    """The image files of `plan_inputs`, in order."""
    return [i.path for i in plan_inputs(inputs)]


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


def output_extensions(overlay: bool = True) -> tuple[str, ...]:
    """The files `lmjax predict` writes per image (the `.png` is the overlay)."""
    return OUTPUT_EXTENSIONS if overlay else (".json", ".labelme.json")


def existing(
    out: pathlib.Path, item: Input, origin: dict[str, Any], names, overlay: bool = True
) -> dict | None:
    """The `<name>.json` an earlier run wrote for this image with the same model
    (config, weights and stages in its provenance) and landmarks `names`, when its
    `.labelme.json` (and with `overlay` its `.png`) is there too (the JSON is
    written last); else None."""
    if not all((out / f"{item.name}{ext}").is_file() for ext in output_extensions(overlay)):
        return None
    try:
        doc = json.loads((out / f"{item.name}.json").read_text())
        same = pathlib.Path(doc["image"]).name == item.label
        same = same and [p["name"] for p in doc["landmarks"]] == list(names)
        keys = ("config_sha256", "weights_sha256", "refine_weights_sha256", "stages")
        mine = doc.get("provenance") or {}
        same = same and all(mine.get(k) == origin.get(k) for k in keys)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc if same else None


def from_doc(doc: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, Any]:
    """`(coords [K, 2], confidence [K], spacing or None)` of a `<stem>.json`."""
    marks = doc["landmarks"]
    coords = np.array([[np.nan if p[a] is None else p[a] for a in "xy"] for p in marks], float)
    conf = np.array([p["confidence"] for p in marks], float)
    return coords, conf, None if doc["spacing"] is None else tuple(doc["spacing"])


__all__ = [
    "OUTPUT_EXTENSIONS",
    "output_extensions",
    "Input",
    "anonymized",
    "collect_inputs",
    "existing",
    "from_doc",
    "plan_inputs",
    "relative",
    "unique_stems",
]
