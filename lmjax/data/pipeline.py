"""The Grain input pipeline: records -> augmented, batched NumPy dicts.

    range(N)[process_index::process_count] -> shuffle(seed) -> repeat(num_epochs)
      -> random_map(load from cache, one warp, photometric)   (train)
      -> to_iter_dataset(ReadOptions(threads)) [-> mp_prefetch(workers)] -> batch

Every batch is a dict of NumPy arrays (B = batch size, (H, W) = `input_size`):

    image              float32 [B, H, W, 1]  normalised (see `normalize`)
    landmarks          float32 [B, K, 2]     model-input (x, y); NaN where not visible
    visible            bool    [B, K]        annotated and inside the input image
    to_original        float32 [B, 3, 3]     model-input -> original pixels
    original_landmarks float32 [B, K, 2]     annotations in the original frame
    spacing            float32 [B, 2]        (row_mm, col_mm); NaN when unknown
    item_size_px       float32 [B, 2]        the set's disc radius and stroke width in
                                             model-input pixels; NaN without a spacing
    index              int32   [B]           record index in `dataset.records`; -1 = padding
    valid              bool    [B]           False only for evaluation padding
    region_mask        int32   [B, H, W]     only when the records have region masks
    pixel_norm         float32 [B, 2]        only with `defer_normalize`: (offset, scale)
    item_vertices      float32 [B, K, V, 2]  only for sets with outlines or patches, and
    vertex_valid       bool    [B, K, V]     moved like landmarks (`lmjax.data.item_geometry`)

`to_original` inverts the composed affine (cache resize, fit, augmentation); it
does not undo an elastic warp, which only training uses. After a flip, label k
of the sample is the mirrored anatomical partner, and `original_landmarks` and
`visible` are permuted with it, so `to_original @ landmarks[k]` is always
`original_landmarks[k]`. Targets (heatmaps) are not rendered here: the device
renders them from `landmarks`.

With `defer_normalize` the images stay in [0, 1] and `pixel_norm` carries the
normalisation, `model input = (image - offset) / scale`, for a device that
augments first (`lmjax.data.device_augment`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lmjax.data import affine, cache
from lmjax.data import augment_presets as presets
from lmjax.data.augment import (
    AugmentConfig,
    Geometry,
    photometric,
    sample_geometry,
    warp,
)
from lmjax.data.item_geometry import ItemGeometry, invert_field, vertex_entries
from lmjax.data.roi import crop_matrix, roi_long_side
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet, Record

FITS = ("resize", "letterbox")
NORMALIZATIONS = ("zscore", "unit")


def fit_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int], fit: str) -> np.ndarray:
    """Cache frame -> model input: stretch (`resize`) or keep aspect and pad (`letterbox`)."""
    return affine.resize(src_hw, dst_hw) if fit == "resize" else affine.letterbox(src_hw, dst_hw)


def region_flip_table(landmark_set: LandmarkSet) -> np.ndarray:
    """Label lookup that swaps left/right regions on a flip, `new = table[old]`.

    Region pairs follow from the landmark pairs: if landmarks a and b swap and lie
    on regions ra != rb, those regions swap. Without declared regions labels stay.

    Raises:
      ValueError: when the pairs make one region the partner of two others.
    """
    table = np.arange(landmark_set.num_regions + 1, dtype=np.int32)
    if landmark_set.regions is None:
        return table
    partner: dict[int, int] = {}
    for a, b in landmark_set.flip_pairs:
        ra, rb = landmark_set.regions[a], landmark_set.regions[b]
        if ra < 0 or rb < 0 or ra == rb:
            continue
        for x, y in ((ra, rb), (rb, ra)):
            if partner.setdefault(x, y) != y:
                raise ValueError(
                    f"landmark set {landmark_set.name!r}: region "
                    f"{landmark_set.region_names[x]!r} pairs with two regions"
                )
    for x, y in partner.items():
        table[x + 1] = y + 1  # label r + 1 is region r
    return table


class Sampler(grain.transforms.RandomMap, grain.transforms.Map):
    """Record index -> sample dict (`random_map` augments, `map` does not); indices
    past the records give evaluation padding. Thread-safe and picklable."""

    def __init__(self, dataset: Dataset, augment: AugmentConfig | None, **options):
        """`options`: input_hw, fit, normalize, long_side, cache_dir, with_masks,
        defer_normalize."""
        self.records: Sequence[Record] = dataset.records
        flips = augment is not None and augment.flips
        self.perm = dataset.landmark_set.flip_permutation() if flips else None
        self.region_table = region_flip_table(dataset.landmark_set) if flips else None
        self.k = dataset.landmark_set.num_landmarks
        self.radius_mm = dataset.landmark_set.radius_mm
        self.width_mm = dataset.landmark_set.width_mm
        self.augment = augment
        self.input_hw: tuple[int, int] = tuple(options.pop("input_hw"))
        self.fit: str = options.pop("fit")
        self.normalize: str = options.pop("normalize")
        self.long_side: int = options.pop("long_side")
        self.cache_dir: str | None = options.pop("cache_dir")
        self.with_masks: bool = options.pop("with_masks")
        self.defer_normalize: bool = options.pop("defer_normalize", False)
        self._memo: dict[int, cache.CachedImage] = {}
        self._sides: dict[int, int] = {}  # cache long side of each record read
        # None for landmark-only sets; `V` is fixed here, once per dataset.
        self.geometry = ItemGeometry.of(self.records, dataset.landmark_set)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_memo"] = {}  # workers rebuild their own; never ship decoded images
        return state

    def _image(self, index: int) -> cache.CachedImage:
        rec = self.records[index]
        on_disk = isinstance(rec.image, str)  # the disk cache (or a decode) serves paths
        if not on_disk and index in self._memo:  # arrays are resized once per process
            return self._memo[index]
        # A region's cache side is known after one read; later reads go straight to it.
        side = self._sides.get(index, self.long_side)
        img = cache.load_record(rec, long_side=side, cache_dir=self.cache_dir)
        if index not in self._sides:
            self._sides[index] = roi_long_side(rec, img, self.long_side)
            if self._sides[index] > side:
                img = cache.load_record(rec, long_side=self._sides[index], cache_dir=self.cache_dir)
        if not on_disk:
            self._memo[index] = img
        return img

    def map(self, element: int) -> dict[str, np.ndarray]:
        return self.sample(element, None)

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.sample(element, rng)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        index = int(index)
        if index >= len(self.records):
            return self.padding()
        rec, img = self.records[index], self._image(index)
        h, w = self.input_hw
        geo = Geometry(matrix=affine.identity())
        if rng is not None and self.augment is not None:
            geo = sample_geometry(self.augment, rng, self.input_hw)
        crop, crop_hw = crop_matrix(rec, img.to_cache)
        fit = fit_matrix(crop_hw or img.pixels.shape, self.input_hw, self.fit)
        to_input = affine.compose(crop, fit, geo.matrix)
        full = affine.compose(img.to_cache, to_input)
        pts = affine.apply(rec.landmarks, full).astype(np.float64)
        verts = None
        if self.geometry is not None:
            verts = affine.apply(self.geometry.original(rec), full).astype(np.float64)
        if geo.field is not None:
            pts, verts, ok = invert_field(geo.field, pts, verts)
            # A field that folds cannot move landmarks consistently: drop the warp.
            geo = Geometry(geo.matrix, geo.flipped, geo.field if ok else None)
        vis, original = rec.visible.copy(), rec.landmarks.copy()
        if geo.flipped:
            pts, vis, original = pts[self.perm], vis[self.perm], original[self.perm]
            verts = None if verts is None else verts[self.perm]
        # Pixel edges bound the image: a landmark pushed out of it is not visible.
        inside = (pts >= -0.5).all(axis=1) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] <= h - 0.5)
        vis &= inside
        pts[~vis] = np.nan
        pixels = warp(img.pixels, to_input, self.input_hw, field=geo.field)
        if rng is not None and self.augment is not None:
            pixels = photometric(pixels, self.augment, rng)
        norm = np.array([0.0, 1.0], np.float32)
        if self.normalize == "zscore":
            # Statistics of the whole source image, not of the augmented view, so that
            # brightness/contrast augmentation is not normalised away and padding
            # stays at the source's zero.
            norm[:] = float(img.pixels.mean()), max(float(img.pixels.std()), 1e-6)
        if not self.defer_normalize:
            pixels = (pixels - norm[0]) / norm[1]
        out = {
            "image": pixels.astype(np.float32)[..., None],
            "landmarks": pts.astype(np.float32),
            "visible": vis,
            "to_original": np.linalg.inv(full).astype(np.float32),
            "original_landmarks": original.astype(np.float32),
            "spacing": np.asarray(img.spacing or (np.nan, np.nan), np.float32),
            "item_size_px": self._item_size_px(img.spacing, full),
            "index": np.int32(index),
            "valid": np.bool_(True),
        }
        if self.defer_normalize:
            out["pixel_norm"] = norm
        if verts is not None:  # kept when the item is pushed out: boxes clip later
            out.update(vertex_entries(verts))
        if self.with_masks:
            mask = cache.load_mask(rec.region_mask, cache_dir=self.cache_dir)  # type: ignore[arg-type]
            if mask.shape != img.original_hw:
                raise LandmarkDataError(
                    f"{rec.name}: region mask {mask.shape} != image {img.original_hw}"
                )
            mask = warp(mask, full, self.input_hw, field=geo.field, order=0)
            if geo.flipped:  # mirrored left structures now read as right ones
                t = self.region_table
                known = (mask >= 0) & (mask < len(t))  # undeclared labels stay as they are
                mask = np.where(known, t[np.clip(mask, 0, len(t) - 1)], mask)
            out["region_mask"] = mask
        return out

    def _item_size_px(self, spacing, full: np.ndarray) -> np.ndarray:
        """(disc radius, stroke width) of the items in model-input pixels; NaN without a
        spacing. The affine's mean scale: discs stay round."""
        if not spacing:
            return np.full((2,), np.nan, np.float32)
        scale = float(np.sqrt(abs(np.linalg.det(full[:2, :2]))))
        mm = (self.radius_mm, self.width_mm)
        return np.asarray([v / float(np.mean(spacing)) * scale for v in mm], np.float32)

    def padding(self) -> dict[str, np.ndarray]:
        """An evaluation filler: no image, no landmarks, `valid = False`."""
        h, w = self.input_hw
        out = {
            "image": np.zeros((h, w, 1), np.float32),
            "landmarks": np.full((self.k, 2), np.nan, np.float32),
            "visible": np.zeros((self.k,), bool),
            "to_original": np.eye(3, dtype=np.float32),
            "original_landmarks": np.full((self.k, 2), np.nan, np.float32),
            "spacing": np.full((2,), np.nan, np.float32),
            "item_size_px": np.full((2,), np.nan, np.float32),
            "index": np.int32(-1),
            "valid": np.bool_(False),
        }
        if self.defer_normalize:
            out["pixel_norm"] = np.array([0.0, 1.0], np.float32)
        if self.geometry is not None:
            out.update(self.geometry.padding())
        if self.with_masks:
            out["region_mask"] = np.zeros((h, w), np.int32)
        return out


def stack_batch(elements: Sequence[dict], *, pad_to: int | None = None, filler=None) -> dict:
    """Stacks sample dicts; pads a short batch with `filler()` up to `pad_to`."""
    elements = list(elements)
    if pad_to is not None and len(elements) < pad_to:
        elements += [filler() for _ in range(pad_to - len(elements))]
    return {key: np.stack([e[key] for e in elements]) for key in elements[0]}


def _ensure_flags_parsed() -> None:
    """Grain 0.2.x reads an absl flag in workers (google/grain#1355): accept defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_dataset(
    dataset: Dataset,
    *,
    input_size: tuple[int, int],
    batch_size: int,
    augment: AugmentConfig | str | Mapping[str, Any] | None = None,
    seed: int = 0,
    train: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    num_threads: int | None = None,
    prefetch: int | None = None,
    cache_dir: str | None = None,
    cache_factor: float = 1.25,
    fit: str = "resize",
    normalize: str = "zscore",
    defer_normalize: bool = False,
) -> grain.IterDataset:
    """The batched Grain dataset; `iter()` it (or use `make_pipeline`).

    Args:
      dataset: records and their landmark set.
      input_size: model input `(H, W)`.
      batch_size: samples per batch (per process).
      augment: AugmentConfig, preset name, dict for `augment_presets.from_dict`, or
        None. Used only when `train`.
      seed: drives shuffling and augmentation; equal seeds give equal batches.
      train: shuffle, repeat, augment and drop the last partial batch. Otherwise
        one pass in record order, where every process gets `ceil(N / count)`
        samples and the last batch is padded (`valid` False, `index` -1), so all
        processes yield the same number of equally shaped batches.
      num_epochs: passes over the data when training; None repeats forever.
      process_index, process_count: this process's slice `[index::count]`;
        default `jax.process_index()` / `jax.process_count()`.
      worker_count: worker processes (`mp_prefetch`); 0 runs in this process.
        Batches are formed after the workers, so the output does not depend on it.
      num_threads: threads per process reading and augmenting samples.
      prefetch: samples buffered per process.
      cache_dir: disk cache of decoded images (see `lmjax.data.cache`).
      cache_factor: cache resolution as a multiple of `max(input_size)`.
      fit: `resize` (stretch) or `letterbox` (keep aspect, pad with zeros).
      normalize: `zscore` (zero mean, unit std per image, statistics of the
        whole source image before augmentation) or `unit` ([0, 1] by bit depth).
      defer_normalize: keep images in [0, 1] and return the normalisation as
        `pixel_norm` for the device to apply (after device augmentation).

    Raises:
      ValueError: for bad options, an empty slice, records of which only some have
        region masks, flips on a landmark set without left/right pairs, or a
        visible outline or patch without vertices (`LandmarkDataError`).
    """
    if fit not in FITS or normalize not in NORMALIZATIONS:
        raise ValueError(
            f"fit {fit!r} not in {FITS} or normalize {normalize!r} not in {NORMALIZATIONS}"
        )
    if batch_size < 1 or len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"bad batch_size {batch_size} or input_size {input_size}")
    cfg = presets.resolve_augment(augment, dataset.landmark_set.flip_pairs) if train else None
    if cfg is not None and cfg.flips:
        dataset.landmark_set.flip_permutation()  # raises now, not mid-epoch
    n_masks = sum(r.region_mask is not None for r in dataset.records)
    if 0 < n_masks < len(dataset.records):
        raise ValueError(
            f"dataset {dataset.name!r}: only {n_masks} of {len(dataset.records)} "
            "records have a region mask; all or none must"
        )
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    n = len(dataset.records)
    long_side = math.ceil(max(input_size) * cache_factor)
    sampler = Sampler(
        dataset,
        cfg,
        input_hw=input_size,
        fit=fit,
        normalize=normalize,
        long_side=long_side,
        cache_dir=cache_dir,
        with_masks=n_masks > 0,
        defer_normalize=defer_normalize,
    )
    # Separate streams per process, so processes do not mirror each other's draws.
    shuffle_seed, augment_seed = (
        int(s) for s in np.random.SeedSequence([seed, process_index]).generate_state(2)
    )
    if train:
        ds = grain.MapDataset.range(n)[process_index::process_count]
        if len(ds) == 0:
            raise ValueError(f"process {process_index} of {process_count} gets no records from {n}")
        ds = ds.shuffle(seed=shuffle_seed).repeat(num_epochs)
        ds = ds.random_map(sampler, seed=augment_seed) if cfg is not None else ds.map(sampler)
    else:
        per_process = -(-n // process_count)
        ds = grain.MapDataset.range(per_process * process_count)[process_index::process_count]
        ds = ds.map(sampler)
    threads = min(8, os.cpu_count() or 1) if num_threads is None else num_threads
    read = grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=prefetch or max(2 * batch_size, threads)
    )
    it_ds = ds.to_iter_dataset(read)
    if worker_count > 0:
        _ensure_flags_parsed()
        mp = grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=batch_size
        )
        it_ds = it_ds.mp_prefetch(mp)
    batch_fn = functools.partial(
        stack_batch, pad_to=None if train else batch_size, filler=sampler.padding
    )
    return it_ds.batch(batch_size, drop_remainder=train, batch_fn=batch_fn)


def make_pipeline(dataset: Dataset, **kwargs) -> grain.DatasetIterator:
    """`iter(make_dataset(dataset, **kwargs))`: a checkpointable batch iterator.

    `get_state()` / `set_state()` on it resume exactly (same seed and options).
    Close it (`.close()`) when using `worker_count > 0`.
    """
    return iter(make_dataset(dataset, **kwargs))
