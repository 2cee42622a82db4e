"""Radiographs at the refinement's fine spacing, stacked on one canvas for the device.

The global model sees the film at about 1 mm per pixel; the refinement stage cuts
its patches from the same image resampled once to `spacing_mm` (e.g. 0.25 mm per
pixel), through the decode cache, so a training run decodes each file once. Each
image keeps the affine from its original pixels to the fine ones, so patch
coordinates map back to the original frame exactly.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lmjax import progress
from lmjax.data import cache
from lmjax.data.types import Record

# Canvas sides are rounded up to this, so batches of differently sized images share
# a few compiled shapes instead of one per size.
CANVAS_MULTIPLE = 64


@dataclasses.dataclass
class FineImages:
    """Images at the fine spacing, zero-padded (bottom, right) to one canvas.

    Attributes:
      pixels: float16 `[N, H, W]` in [0, 1].
      to_fine: float32 `[N, 3, 3]` from original pixels to canvas pixels.
      step: float32 `[N]` canvas pixels per `spacing_mm` (1 up to rounding).
      mm_per_pixel: float32 `[N]` of the canvas; NaN where the spacing is unknown
        (the image is then kept at its original pixels, and `spacing_mm` is read
        as original pixels).
    """

    pixels: np.ndarray
    to_fine: np.ndarray
    step: np.ndarray
    mm_per_pixel: np.ndarray

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The rows `index` as a batch for the device (`pixels` as float32 `[B, H, W, 1]`)."""
        return {
            "fine": self.pixels[index].astype(np.float32)[..., None],
            "to_fine": self.to_fine[index],
            "step": self.step[index],
        }


def _pixel_mm(spacing) -> float:
    """One number for a (row_mm, col_mm) spacing: their geometric mean (square pixels
    in every dataset lmjax reads; a slightly anisotropic one gets round patches)."""
    return math.sqrt(float(spacing[0]) * float(spacing[1]))


def _one(record: Record, spacing_mm: float, cache_dir: str | None):
    # Without a disk cache the file is decoded once at full size and resized here;
    # with one, a tiny cached probe gives the shape and the file's spacing first.
    full = None
    if cache_dir is None:
        full = cache.load_record(record, long_side=1 << 30, cache_dir=None)
        probe = full
    else:
        probe = cache.load_record(record, long_side=64, cache_dir=cache_dir)
    spacing = record.spacing or probe.spacing
    hw = probe.original_hw
    if spacing is None:
        long_side = max(hw)
    else:
        long_side = max(1, math.ceil(max(hw) * _pixel_mm(spacing) / spacing_mm))
    if full is not None:
        pixels, to_fine = cache.resize_to_cache(full.pixels, long_side)
    else:
        img = cache.load_record(record, long_side=long_side, cache_dir=cache_dir)
        pixels, to_fine = img.pixels, img.to_cache
    # The resize keeps the aspect, so rows give the true scale of both axes.
    mm = math.nan if spacing is None else _pixel_mm(spacing) * hw[0] / pixels.shape[0]
    # Without a spacing, `spacing_mm` is read as original pixels per sample.
    step = spacing_mm if spacing is None else spacing_mm / mm
    return pixels, np.asarray(to_fine, np.float32), step, mm


def load_fine(
    records: list[Record],
    spacing_mm: float,
    *,
    cache_dir: str | None = None,
    canvas: tuple[int, int] | None = None,
    threads: int = 2,
) -> FineImages:
    """Every record's image at `spacing_mm` per pixel, on a shared canvas.

    Args:
      canvas: `(H, W)` to pad to; default the largest image rounded up to
        `CANVAS_MULTIPLE`. An image larger than a given canvas is an error.
    """
    if not spacing_mm > 0:
        raise ValueError(f"refine.spacing_mm must be positive, got {spacing_mm}")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        done = pool.map(lambda r: _one(r, spacing_mm, cache_dir), records)
        loaded = list(progress.track(done, desc="fine images", total=len(records), unit="image"))
    if canvas is None:
        hs = max((p.shape[0] for p, *_ in loaded), default=1)
        ws = max((p.shape[1] for p, *_ in loaded), default=1)
        canvas = (_round_up(hs), _round_up(ws))
    pixels = np.zeros((len(records), *canvas), np.float16)
    for i, (p, *_) in enumerate(loaded):
        if p.shape[0] > canvas[0] or p.shape[1] > canvas[1]:
            raise ValueError(
                f"image {i} at the fine spacing is {p.shape}, over the canvas {canvas}"
            )
        pixels[i, : p.shape[0], : p.shape[1]] = p
    to_fine = np.stack([m for _, m, _, _ in loaded]) if loaded else np.zeros((0, 3, 3))
    return FineImages(
        pixels=pixels,
        to_fine=to_fine.astype(np.float32),
        step=np.array([s for *_, s, _ in loaded], np.float32),
        mm_per_pixel=np.array([m for *_, m in loaded], np.float32),
    )


def _round_up(n: int) -> int:
    return -(-n // CANVAS_MULTIPLE) * CANVAS_MULTIPLE


__all__ = ["FineImages", "load_fine"]
