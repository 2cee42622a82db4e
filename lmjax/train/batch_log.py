"""The data order of a run, for checking that a resumed run saw what an
uninterrupted one would have: with `LMJAX_LOG_BATCHES=1` in the environment,
training appends one JSON line per step to `<workdir>/batches.jsonl`
(`batches.<process>.jsonl` in a multi-process run):

    {"step": 7, "index": [12, 3, 30, 8], "sha256": "..."}

`index` are the record indices the batch holds (-1: padding) and `sha256` a digest
of every array the step reads (names, dtypes, shapes and bytes), so augmentation
and decoding count too. Lines are flushed as written; a killed run's repeated steps
appear again after it resumes, and `read` keeps the last line of each step.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping

import jax
import numpy as np

ENV = "LMJAX_LOG_BATCHES"


def enabled() -> bool:
    return os.environ.get(ENV, "").strip() not in ("", "0")


def path(workdir: str | pathlib.Path) -> pathlib.Path:
    name = "batches.jsonl" if jax.process_count() == 1 else f"batches.{jax.process_index()}.jsonl"
    return pathlib.Path(workdir) / name


def digest(batch: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the arrays by name: dtype, shape and bytes."""
    h = hashlib.sha256()
    for key in sorted(batch):
        a = np.ascontiguousarray(batch[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class BatchLog:
    """Appends a step's line when enabled (`ENV`); otherwise does nothing."""

    def __init__(self, workdir: str | pathlib.Path) -> None:
        self._file = None
        if enabled():
            where = path(workdir)
            cut = where.exists() and not where.read_bytes().endswith(b"\n")
            self._file = where.open("a", buffering=1)
            if cut and where.stat().st_size:  # a killed run's last line, cut short: end it
                self._file.write("\n")

    def write(self, step: int, batch: Mapping[str, np.ndarray], shipped) -> None:
        if self._file is None:
            return
        index = np.asarray(batch["index"]).tolist() if "index" in batch else None
        line = {"step": step, "index": index, "sha256": digest({k: batch[k] for k in shipped})}
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read(file: str | pathlib.Path) -> dict[int, dict]:
    """`{step: line}`, the last line of each step; a line cut short by a kill is skipped.

    Raises:
      ValueError: a step logged twice with different batches (the data order of the
        resumed run is not the one of the run it resumes).
    """
    out: dict[int, dict] = {}
    for text in pathlib.Path(file).read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        old = out.get(line["step"])
        if old is not None and (old["index"], old["sha256"]) != (line["index"], line["sha256"]):
            raise ValueError(f"{file}: step {line['step']} was fed two different batches")
        out[line["step"]] = line
    return out
