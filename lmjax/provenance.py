"""Where a prediction or report came from: the `provenance` block of predict's JSON
files, `provenance.json` beside `predictions.csv`, evaluate reports and API results.

    lmjax_version          the installed package version
    config_sha256          SHA-256 of the run's resolved config (`config.json`),
                           canonical JSON (sorted keys, no spaces): stable across
                           re-reads and independent of the file's indentation
    checkpoint_step        the step of the global model's checkpoint that was used
    weights_sha256         SHA-256 over that checkpoint's weights (`checkpoints/<step>/state`)
    refine_step, refine_weights_sha256   the same for the refinement stage, when used
    input_sha256           per image: SHA-256 of the file's bytes (an array: of its
                           C-order bytes, `hashlib.sha256(a.tobytes())`)

A checkpoint's hash covers every file under its `state` folder in sorted order of
relative path, each as its path, its size and its bytes, so a renamed or truncated
file changes it. It is computed once per process and folder (a checkpoint is
hundreds of MB on a large model), and again when a file's size or mtime changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

_CHUNK = 1 << 20
_weights_cache: dict[tuple, str] = {}


def version() -> str:
    # The package is imported before any of its modules, so it is in sys.modules;
    # importing it here would read as an import cycle (lmjax -> api -> ... -> lmjax).
    return sys.modules["lmjax"].__version__


def canonical_sha256(doc: Any) -> str:
    """SHA-256 of `doc` as canonical JSON (sorted keys, compact separators)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def config_sha256(workdir: str | os.PathLike) -> str | None:
    """Hash of the run's `config.json` (parsed, canonical), else of the config saved
    with its checkpoint (older runs); None when neither can be read."""
    from lmjax.configs import loader

    path = pathlib.Path(workdir) / loader.CONFIG_FILE
    if path.is_file():
        return canonical_sha256(json.loads(path.read_text()))
    from lmjax.train.restore import read_config

    try:
        return canonical_sha256(read_config(workdir).to_dict())
    except (FileNotFoundError, ValueError):
        return None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes (dtype and shape not included)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def folder_sha256(folder: str | os.PathLike) -> str | None:
    """SHA-256 over every file under `folder` (see the module), cached per process;
    None when the folder does not exist."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        return None
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    stats = tuple((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files)
    key = (str(root.resolve()), stats)
    if key not in _weights_cache:
        h = hashlib.sha256()
        for (rel, p), (_, size, _) in zip(files, stats, strict=True):
            h.update(f"{rel}\0{size}\0".encode())
            with open(p, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        _weights_cache[key] = h.hexdigest()
    return _weights_cache[key]


def _state_dir(checkpoints: pathlib.Path, step: int | None) -> pathlib.Path | None:
    return None if step is None else checkpoints / str(int(step)) / "state"


def _refine_step(workdir: pathlib.Path) -> int | None:
    """The refinement checkpoint its predictions restore: the best step recorded in
    `refine/refine.json` (the one Orbax ranks best), else the latest one saved."""
    folder = workdir / "refine"
    try:
        best = json.loads((folder / "refine.json").read_text()).get("best_step")
    except (OSError, ValueError):
        best = None
    if best is not None and (folder / "checkpoints" / str(best) / "state").is_dir():
        return int(best)
    steps = [int(p.name) for p in (folder / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=None)


def run(
    workdir: str | os.PathLike, step: int | None, *, stages: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The provenance of a trained run as used at `step` (None: unknown; the
    weights' hash is then None), with the refinement stage when `stages` has it."""
    root = pathlib.Path(workdir)
    out: dict[str, Any] = {
        "lmjax_version": version(),
        "workdir": str(root.resolve()),
        "config_sha256": config_sha256(root),
        "checkpoint_step": None if step is None else int(step),
        "weights_sha256": None,
    }
    state = _state_dir(root / "checkpoints", step)
    if state is not None:
        out["weights_sha256"] = folder_sha256(state)
    if "refine" in stages:
        refine_step = _refine_step(root)
        out["refine_step"] = refine_step
        refine = _state_dir(root / "refine" / "checkpoints", refine_step)
        out["refine_weights_sha256"] = None if refine is None else folder_sha256(refine)
    if stages:
        out["stages"] = list(stages)
    return out


__all__ = [
    "array_sha256",
    "canonical_sha256",
    "config_sha256",
    "file_sha256",
    "folder_sha256",
    "run",
    "version",
]
