"""Is a saved checkpoint step whole? File checks on `<workdir>/checkpoints/<step>/`.

A step folder appears only when Orbax renames a finished save into place, so a save
cut short by `kill -9` never looks like a step. What these checks catch is damage
after the fact: a file truncated or deleted by a full disk, a copy interrupted
half-way, a hand edit. They read only the small JSON files and look for the rest;
damage inside the array data is found by the restore itself, whose error names the
file (`damaged_file`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from etils import epath

# JSON files that every saved step holds, relative to the step folder.
REQUIRED_JSON = ("state/_METADATA", "config/metadata")
# The array store's root; its data files are checked by reading them.
REQUIRED_FILES = ("state/manifest.ocdbt",)
# JSON files that must parse where they exist (written only with some options).
OPTIONAL_JSON = ("_CHECKPOINT_METADATA", "state/_sharding", "metrics/metrics")
DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def bad_json(path: epath.Path) -> str | None:
    """Why the file at `path` is no JSON document, or None if it is one."""
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"truncated or not JSON ({type(err).__name__} at {str(err)[:80]})"
    return None


def step_damage(step_dir: epath.Path, data_file: str) -> str | None:
    """`"<file>: <problem>"` for the first missing or unreadable file, or None.

    `data_file` is this process's Grain state file (`process_<i>-of-<n>.json`). A
    step saved by another number of processes holds none for this layout, which is
    not damage (the data restarts); no data file at all, or a missing one beside
    those of the same layout, is.
    """

    step_dir = epath.Path(step_dir)

    def rel(path: epath.Path) -> str:
        return str(path)[len(str(step_dir)) + 1 :]

    for name in REQUIRED_JSON + REQUIRED_FILES:
        if not (step_dir / name).exists():
            return f"{name}: missing"
        if (step_dir / name).stat().length == 0:
            return f"{name}: empty"
    jsons: Iterable[epath.Path] = [step_dir / n for n in REQUIRED_JSON + OPTIONAL_JSON]
    metadatas = step_dir / "state" / "array_metadatas"
    if metadatas.is_dir():
        jsons = [*jsons, *sorted(metadatas.iterdir())]
    data = step_dir / "data"
    if data.is_dir():
        saved = sorted(p for p in data.iterdir() if DATA_FILE.fullmatch(p.name))
        if not saved:
            return f"data/{data_file}: missing (and no other process's)"
        ours = DATA_FILE.fullmatch(data_file)
        same_layout = [p for p in saved if DATA_FILE.fullmatch(p.name)[2] == ours[2]]
        if same_layout and not (data / data_file).exists():
            return f"data/{data_file}: missing"
        jsons = [*jsons, *saved]
    if (step_dir / "metrics").is_dir() and not (step_dir / "metrics" / "metrics").exists():
        return "metrics/metrics: missing"
    for path in jsons:
        if path.exists() and (problem := bad_json(path)):
            return f"{rel(path)}: {problem}"
    return None


def damaged_file(step_dir: epath.Path, error: BaseException) -> str | None:
    """The file inside `step_dir` that a restore error names, as `"<file>: <error>"`,
    or None when the error names none (then it is no damage of this step)."""
    text = str(error)
    found = re.search(re.escape(str(step_dir)) + r"/([^\s\"'\],)]+)", text)
    if found is None:
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{found[1]}: {first[:160]}"
