"""Decode each source image once: resized, unit-range images cached on disk.

A source image is decoded (`lmjax.data.image_io.read_radiograph`), scaled to
[0, 1] by its bit depth, and resized with anti-aliasing so that its longer side is
at most `long_side` pixels (never enlarged). The result is the "cache frame"; the
affine `to_cache` maps original pixels into it (edge-aligned, as
`lmjax.data.affine.resize`), and augmentation starts from there.

With a `cache_dir`, the cache-frame image is written once as `<key>.npy` (uint16
holding round(x * 65535) for sources of at most 16 bits, else float32) with a
`<key>.json` sidecar; the key hashes the source path, its mtime and size, and the
cache resolution. Both files are written to a temporary name and renamed, the JSON
last, so readers never see a partial entry and parallel workers may race safely.
In-memory array records get the same resize, without a disk cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile

import numpy as np
from PIL import Image

from lmjax.data import affine
from lmjax.data.types import Radiograph, Record, Spacing, as_spacing

CACHE_VERSION = 1
_U16 = 65535.0


@dataclasses.dataclass
class CachedImage:
    """A decoded image in the cache frame.

    Attributes:
      pixels: float32 `[h, w]` in [0, 1].
      to_cache: 3x3 affine from original pixels to cache pixels.
      original_hw: `(H, W)` of the source image as annotated.
      spacing: `(row_mm, col_mm)` of the original pixels, or None when unknown.
    """

    pixels: np.ndarray
    to_cache: np.ndarray
    original_hw: tuple[int, int]
    spacing: Spacing | None


def cache_hw(src_hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """Shape with the longer side at most `long_side`, aspect ratio kept."""
    s = min(1.0, long_side / max(src_hw))
    return (max(1, round(src_hw[0] * s)), max(1, round(src_hw[1] * s)))


def unit_range(pixels: np.ndarray, bit_depth: int | None) -> np.ndarray:
    """float32 in [0, 1], dividing by `2**bit_depth - 1`.

    Without a bit depth (in-memory arrays), values already within [0, 1] are kept
    and larger ones are divided by the smallest 8/10/12/14/16-bit maximum that
    holds the image maximum.
    """
    x = np.asarray(pixels, np.float32)
    if bit_depth is None:
        top = float(np.nanmax(x)) if x.size else 0.0
        if top <= 1.0:
            return np.clip(x, 0.0, 1.0)
        bit_depth = next((b for b in (8, 10, 12, 14, 16) if top <= 2**b - 1), 32)
    return np.clip(x / np.float32(2**bit_depth - 1), 0.0, 1.0)


def resize_to_cache(pixels: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased resize into the cache frame; returns `(image, to_cache)`."""
    src_hw = tuple(pixels.shape[:2])
    dst_hw = cache_hw(src_hw, long_side)
    if dst_hw != src_hw:
        # Pillow's bilinear filter widens with the scale factor (anti-aliased, no
        # moire on the large downscale radiographs need), aligns pixel edges like
        # affine.resize, and is ~15x faster than skimage's Gaussian + resize.
        img = Image.fromarray(np.ascontiguousarray(pixels, np.float32))  # mode "F"
        pixels = np.asarray(img.resize(dst_hw[::-1], Image.BILINEAR), np.float32)
    return pixels, affine.resize(src_hw, dst_hw)


def decode(path: str, spacing: Spacing | None) -> Radiograph:
    """Reads one radiograph; imported here so this module loads without image_io."""
    from lmjax.data.image_io import read_radiograph

    return read_radiograph(path, spacing=spacing)


def cache_key(path: str, long_side: int, spacing: Spacing | None) -> str:
    st = os.stat(path)
    ident = [
        str(pathlib.Path(path).resolve()),
        st.st_mtime_ns,
        st.st_size,
        long_side,
        spacing,
        CACHE_VERSION,
    ]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def _atomic_write(target: pathlib.Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _decode_to_cache(path: str, long_side: int, spacing: Spacing | None):
    rad = decode(path, spacing)
    bits = int(rad.bit_depth) if rad.bit_depth else None
    pixels, to_cache = resize_to_cache(unit_range(rad.pixels, bits), long_side)
    meta = {
        "version": CACHE_VERSION,
        "source": path,
        "original_hw": list(rad.shape),
        "cache_hw": list(pixels.shape),
        "spacing": list(rad.spacing) if rad.spacing is not None else None,
        "spacing_source": rad.spacing_source,
        "bit_depth": rad.bit_depth,
        "warnings": list(rad.warnings),
    }
    return pixels, to_cache, meta


def _from_meta(pixels: np.ndarray, meta: dict) -> CachedImage:
    src_hw = tuple(meta["original_hw"])
    return CachedImage(
        pixels=pixels,
        to_cache=affine.resize(src_hw, tuple(pixels.shape)),
        original_hw=src_hw,  # type: ignore[arg-type]
        spacing=as_spacing(meta["spacing"]),
    )


def load_path(
    path: str, *, long_side: int, spacing: Spacing | None = None, cache_dir: str | None = None
) -> CachedImage:
    """The cache-frame image of a file, decoded at most once per `cache_dir`.

    Args:
      path: image file (DICOM, PNG, JPEG, TIFF, ...).
      long_side: cache resolution (longer side, pixels).
      spacing: the record's spacing, passed to the reader.
      cache_dir: folder for the disk cache, or None to decode every time.
    """
    if cache_dir is None:
        pixels, _, meta = _decode_to_cache(path, long_side, spacing)
        return _from_meta(pixels, meta)
    folder = pathlib.Path(cache_dir)
    key = cache_key(path, long_side, spacing)
    npy, js = folder / f"{key}.npy", folder / f"{key}.json"
    if js.exists() and npy.exists():
        meta = json.loads(js.read_text())
        stored = np.load(npy)
        pixels = (
            stored.astype(np.float32) / np.float32(_U16)
            if stored.dtype == np.uint16
            else stored.astype(np.float32, copy=False)
        )
        return _from_meta(pixels, meta)
    pixels, _, meta = _decode_to_cache(path, long_side, spacing)
    bits = meta["bit_depth"]
    if bits is not None and bits <= 16:
        # Values are in [0, 1]; 16-bit steps (1.5e-5) are below any source's precision.
        stored = np.round(pixels * _U16).astype(np.uint16)
        pixels = stored.astype(np.float32) / np.float32(_U16)
    else:
        stored = pixels
    meta["dtype"] = str(stored.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(npy, lambda f: np.save(f, stored))
    _atomic_write(js, lambda f: f.write(json.dumps(meta).encode()))
    return _from_meta(pixels, meta)


def load_array(
    pixels: np.ndarray,
    *,
    long_side: int,
    bit_depth: int | None = None,
    spacing: Spacing | None = None,
) -> CachedImage:
    """The cache-frame image of an in-memory `[H, W]` array."""
    src_hw = tuple(pixels.shape[:2])
    img, to_cache = resize_to_cache(unit_range(pixels, bit_depth), long_side)
    return CachedImage(pixels=img, to_cache=to_cache, original_hw=src_hw, spacing=spacing)  # type: ignore[arg-type]


def load_record(record: Record, *, long_side: int, cache_dir: str | None = None) -> CachedImage:
    """The cache-frame image of a record, with the record's spacing when it has one."""
    if isinstance(record.image, str):
        out = load_path(
            record.image, long_side=long_side, spacing=record.spacing, cache_dir=cache_dir
        )
        if record.spacing is not None:
            out.spacing = record.spacing
        return out
    return load_array(
        record.image,
        long_side=long_side,
        bit_depth=record.meta.get("bit_depth"),
        spacing=record.spacing,
    )


def load_mask(mask: np.ndarray | str, *, cache_dir: str | None = None) -> np.ndarray:
    """int32 `[H, W]` region label map, at original resolution, from an array or file.

    Masks stay at the original resolution (nearest-neighbour warps cost only the
    output size); a mask file is decoded once per `cache_dir`.
    """
    if isinstance(mask, str):
        npy = None
        if cache_dir is not None:
            npy = pathlib.Path(cache_dir) / f"{cache_key(mask, 0, None)}.mask.npy"
            if npy.exists():
                return np.load(npy).astype(np.int32)
        from skimage import io as sk_io

        labels = np.asarray(sk_io.imread(mask))
        if labels.ndim == 3:  # label maps saved as RGB(A) carry the label in every channel
            labels = labels[..., 0]
        if npy is not None:
            npy.parent.mkdir(parents=True, exist_ok=True)
            small = labels.astype(
                np.uint8 if 0 <= labels.min() and labels.max() < 256 else np.int32
            )
            _atomic_write(npy, lambda f: np.save(f, small))
        mask = labels
    return np.asarray(mask).astype(np.int32, copy=False)
