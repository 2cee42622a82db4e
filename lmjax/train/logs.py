"""Run logs in the workdir: `metrics.jsonl` and TensorBoard event files.

Only process 0 writes, so a multi-process run leaves one copy. JSONL lines are
flushed as they are written: a killed run keeps everything logged before it.
TensorBoard scalars go under `<workdir>/tensorboard` with `train/` and `val/`
prefixes (`tensorboard --logdir <workdir>`), and at every evaluation the overlays of
the first `TENSORBOARD_OVERLAYS` validation images (prediction against ground truth,
`lmjax.overlay.compare_overlay`) as images `val/overlay/<i>`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_OVERLAYS = 4  # validation images shown at each evaluation
OVERLAY_SIDE = 384  # px, longer side of each


def _scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers flattened to `a/b` keys; strings and None are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out |= _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class RunLog:
    """Appends metric records to `metrics.jsonl` and to TensorBoard; a context manager."""

    def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        workdir = pathlib.Path(workdir)
        self._jsonl = (workdir / "metrics.jsonl").open("a") if self.enabled else None
        self._tb = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / TENSORBOARD_DIR), flush_secs=30)

    def write(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        """One record: `kind` is "train" (flat at top level, as before) or "val"."""
        if not self.enabled:
            return
        record = {"step": step, **values} if kind == "train" else {"step": step, kind: values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for tag, value in _scalars(values, f"{kind}/").items():
                self._tb.add_scalar(tag, value, step)

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def images(self, step: int, tag: str, images: Sequence[np.ndarray]) -> None:
        """RGB uint8 `[H, W, 3]` images as `<tag>/<i>` in TensorBoard (nothing without it)."""
        if self._tb is None:
            return
        for i, image in enumerate(images):
            self._tb.add_image(f"{tag}/{i}", np.asarray(image), step, dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def validation_overlays(dataset, coords: np.ndarray, n: int = TENSORBOARD_OVERLAYS) -> list:
    """RGB arrays of the first `n` records of `dataset` with their predicted
    landmarks `coords` `[N, K, 2]` (original frame) drawn against the ground truth."""
    from lmjax.overlay import compare_overlay

    names = dataset.landmark_set.names
    return [
        np.asarray(compare_overlay(record, pred, names, long_side=OVERLAY_SIDE))
        for record, pred in zip(dataset.records[:n], np.asarray(coords)[:n], strict=False)
    ]
