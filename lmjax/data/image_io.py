"""Read one radiograph (DICOM, PNG, JPEG, BMP, TIFF) into a `Radiograph`.

Conventions every reader here keeps:

- Pixels are float32 `[H, W]` at full bit depth, never squeezed to 8 bits.
- MONOCHROME1 (and TIFF min-is-white) is inverted so bone is bright. The rule:
  invert in the stored range, `s' = lo + hi - s` with `[lo, hi]` the range of
  BitsStored (widened to the observed values if a file breaks it), then apply
  Rescale Slope/Intercept. The VOI window centre is moved the same way, so a
  window read from the file still shows the same structures.
- Spacing is `(row_mm, col_mm)` or None; invalid tags are named in `warnings`
  and never used. Only DICOM carries a spacing; for other formats it comes from
  the caller's `spacing=` or is unknown.
- Problems that do not stop reading go to `Radiograph.warnings`. A colour to
  grey conversion changes the pixel values, so it is also sent to
  `warnings.warn`.
- Hostile or broken files (`lmjax.data.limits`): the file size and the header's
  rows x columns are checked before decoding; truncated data, a DICOM header that
  disagrees with its pixel data, and NaN or infinite pixels are one-line
  LandmarkDataErrors naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pydicom.pixels
import tifffile
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lmjax.data import limits
from lmjax.data.dicom_display import display_of_file, to_display_uint8  # noqa: F401
from lmjax.data.types import SPACING_NONE, LandmarkDataError, Radiograph, Spacing, as_spacing

SUPPORTED_EXTENSIONS = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DICOM_EXTENSIONS = (".dcm", ".dicom")
_TIFF_EXTENSIONS = (".tif", ".tiff")
_CODECS_HINT = (
    "install a decoder: pip install 'lmjax[dicom-codecs]' "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg) or pip install python-gdcm"
)
# JPEG chroma subsampling can make the channels of a grey image differ by a few
# levels; such an image is grey, not colour, and is not worth a warning.
_JPEG_GREY_TOLERANCE = 3
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601
_PILLOW_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I": 32, "F": 32}


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `read_radiograph` would try to read this file.

    Args:
      path: a file path.

    Returns:
      True for an existing file with a supported extension, or with any (or no)
      extension whose content starts with the DICOM preamble.
    """
    p = Path(path)
    if not p.is_file():
        return False
    return p.suffix.lower() in SUPPORTED_EXTENSIONS or _has_dicm_preamble(p)


def read_radiograph(
    path: str | os.PathLike, *, spacing: Sequence[float] | None = None
) -> Radiograph:
    """Read one radiograph.

    Args:
      path: DICOM (by content or `.dcm`/`.dicom`), PNG, JPEG, BMP or TIFF file.
      spacing: optional `(row_mm, col_mm)` that overrides what the file says;
        the result then has `spacing_source == "user"`.

    Returns:
      A `Radiograph` with float32 `[H, W]` pixels.

    Raises:
      LandmarkDataError: naming the file, when it is missing, unsupported,
        unreadable, truncated, has no pixel data, several frames, needs a missing
        decoder, is over a size limit (`lmjax.data.limits`), has NaN or infinite
        pixels, or when `spacing` is not two finite positive numbers.
    """
    p = Path(path)
    name = str(p)
    user_spacing = as_spacing(spacing)
    if spacing is not None and user_spacing is None:
        raise LandmarkDataError(
            f"{name}: spacing={spacing!r} is not two finite positive numbers (row_mm, col_mm)"
        )
    if not p.is_file():
        raise LandmarkDataError(f"{name}: no such file")
    limits.check_image_file(p)
    ext = p.suffix.lower()
    if _has_dicm_preamble(p) or ext in _DICOM_EXTENSIONS:
        with limits.malformed(name, "DICOM file"):  # pydicom parses tags lazily
            rg = _read_dicom(p)
    elif ext in _TIFF_EXTENSIONS:
        rg = _read_tiff(p)
    elif ext in SUPPORTED_EXTENSIONS:
        rg = _read_pillow(p)
    else:
        raise LandmarkDataError(
            f"{name}: unsupported file type {ext or '(no extension)'!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}, or any file with a DICOM preamble"
        )
    limits.check_finite(rg.pixels, name)
    if user_spacing is not None:
        rg.spacing, rg.spacing_source = user_spacing, "user"
    return rg


class SpacingInfo(NamedTuple):
    spacing: Spacing | None
    source: str
    warnings: list[str]


def read_spacing(path: str | os.PathLike) -> SpacingInfo:
    """The pixel spacing a file states, reading DICOM headers only (no pixels).

    Other formats carry no calibrated spacing, so they give `(None, "none")`.

    Raises:
      LandmarkDataError: naming the file, when it is missing or not readable.
    """
    p = Path(path)
    if not p.is_file():
        raise LandmarkDataError(f"{p}: no such file")
    if not (_has_dicm_preamble(p) or p.suffix.lower() in _DICOM_EXTENSIONS):
        return SpacingInfo(None, SPACING_NONE, [])
    limits.check_image_file(p)
    with limits.malformed(str(p), "DICOM file"):
        ds = pydicom.dcmread(p, force=not _has_dicm_preamble(p), stop_before_pixels=True)
        warns: list[str] = []
        spacing, source = _dicom_spacing(ds, str(p), warns)
    return SpacingInfo(spacing, source, warns)


# ---------------------------------------------------------------- DICOM

# Files without the DICM preamble carry no transfer syntax; pydicom's guess of
# their encoding, (implicit VR, little endian), stands in for it.
_ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian}


def _read_dicom(path: Path) -> Radiograph:
    name = str(path)
    forced = not _has_dicm_preamble(path)
    try:
        ds = pydicom.dcmread(path, force=forced)
    except Exception as e:
        raise LandmarkDataError(f"{name}: unreadable DICOM file ({limits.one_line(e)})") from e
    if forced and not any(k in ds for k in ("PixelData", "Rows", "SOPClassUID")):
        raise LandmarkDataError(f"{name}: not a DICOM file (no DICM preamble, no DICOM tags)")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise LandmarkDataError(f"{name}: DICOM file has no pixel data (7FE0,0010): no image")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise LandmarkDataError(
            f"{name}: multi-frame DICOM ({frames} frames); only single 2D images are supported"
        )
    if "TransferSyntaxUID" not in ds.file_meta:
        encoding = _ENCODINGS.get(tuple(ds.original_encoding), ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = encoding
    if "PixelData" in ds or "Rows" in ds:
        limits.check_dicom_pixels(ds, name)  # before decoding allocates Rows x Columns
    stored = _decode_dicom(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored") or 8 * stored.dtype.itemsize)
    warns: list[str] = []
    spacing, source = _dicom_spacing(ds, name, warns)
    if stored.ndim == 3:  # colour: modality rescale and windows do not apply
        pixels = _to_grey(stored, name, 0, warns)
        return Radiograph(pixels, spacing, source, bits, photometric, None, name, warns)
    if stored.ndim != 2:
        raise LandmarkDataError(f"{name}: pixel data has shape {stored.shape}, not a 2D image")

    slope = _first(_tag_numbers(ds, "RescaleSlope", name, warns, lambda v: v[0] != 0)) or 1.0
    intercept = _first(_tag_numbers(ds, "RescaleIntercept", name, warns)) or 0.0
    center = _first(_tag_numbers(ds, "WindowCenter", name, warns))
    width = _first(_tag_numbers(ds, "WindowWidth", name, warns, lambda v: v[0] > 0))
    window = (center, width) if center is not None and width is not None else None
    values = stored.astype(np.float64)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if values.min() < lo or values.max() > hi:
        if photometric == "MONOCHROME1":  # only its inversion depends on the range
            warns.append(f"{name}: pixel values exceed BitsStored {bits}; inverted in their range")
        lo, hi = int(min(lo, values.min())), int(max(hi, values.max()))
    lut = dict(bits=bits, stored_range=(lo, hi), slope=slope, intercept=intercept, window=window)
    display = display_of_file(ds, stored, name, warns, inverted=photometric == "MONOCHROME1", **lut)
    if photometric == "MONOCHROME1":
        values = (lo + hi) - values
        if window is not None:
            # The same inversion seen after rescaling: v' = slope*(lo+hi) + 2*intercept - v.
            window = (float(slope * (lo + hi) + 2 * intercept - window[0]), window[1])
    pixels = (values * slope + intercept).astype(np.float32)
    return Radiograph(pixels, spacing, source, bits, photometric, window, name, warns, display)


def _decode_dicom(ds: pydicom.Dataset, name: str) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    described = f"{syntax.name} ({syntax})"
    if syntax.is_compressed:
        try:
            available = pydicom.pixels.get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise LandmarkDataError(
                f"{name}: pixel data is compressed as {described} and no installed "
                f"decoder reads it; {_CODECS_HINT}"
            )
    try:
        return np.asarray(ds.pixel_array)
    except Exception as e:
        hint = f"; if the data is valid, {_CODECS_HINT}" if syntax.is_compressed else ""
        why = limits.one_line(e)
        raise LandmarkDataError(
            f"{name}: cannot decode {described} pixel data ({why}){hint}"
        ) from e


def _tag_numbers(
    ds: pydicom.Dataset,
    keyword: str,
    name: str,
    warns: list[str],
    valid: Callable[[list[float]], bool] = bool,
) -> list[float] | None:
    """The numbers of a DS/IS tag; None when absent, or with a warning when not `valid`."""
    raw = ds.get(keyword)
    if raw is None or raw == "":
        return None
    items = list(raw) if isinstance(raw, MultiValue) else [raw]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        values = []
    if values and np.all(np.isfinite(values)) and valid(values):
        return values
    tag = tag_for_keyword(keyword) or 0
    shown = "\\".join(map(str, items))
    warns.append(
        f'{name}: invalid {keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}) "{shown}"; ignored'
    )
    return None


def _first(values: list[float] | None) -> float | None:
    # Several windows may be listed; the first is the one the modality suggests.
    return None if values is None else values[0]


def _dicom_spacing(ds: pydicom.Dataset, name: str, warns: list[str]) -> tuple[Spacing | None, str]:
    def valid(v: list[float]) -> bool:
        return as_spacing(v) is not None

    spacing = _tag_numbers(ds, "PixelSpacing", name, warns, valid)
    if spacing is not None:
        return as_spacing(spacing), "PixelSpacing"
    spacing = _tag_numbers(ds, "ImagerPixelSpacing", name, warns, valid)
    if spacing is None:
        return None, SPACING_NONE
    # ImagerPixelSpacing is measured at the detector; the magnification factor
    # brings it back to the patient plane where landmarks are measured.
    keyword = "EstimatedRadiographicMagnificationFactor"
    factor = _first(_tag_numbers(ds, keyword, name, warns, lambda v: v[0] > 0))
    if factor is None:
        return as_spacing(spacing), "ImagerPixelSpacing"
    return as_spacing([s / factor for s in spacing]), f"ImagerPixelSpacing/{keyword}"


# ---------------------------------------------------------------- other images
# Spacing is never taken from PNG/JPEG/TIFF resolution or DPI fields: they describe
# printing or scanning, not a calibrated distance in the patient.


def _to_grey(arr: np.ndarray, name: str, tolerance: int, warns: list[str]) -> np.ndarray:
    """One float32 `[H, W]` channel from grey, grey+alpha, RGB or RGBA `[H, W, C]`."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise LandmarkDataError(f"{name}: image has shape {arr.shape}, not a 2D grey or RGB image")
    # Alpha is dropped: it is not part of the radiograph.
    arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
    if arr.shape[2] == 1:
        return arr[..., 0].astype(np.float32)
    # Per-channel planes: a reduction over the 3-wide last axis is ~10x slower.
    planes = np.moveaxis(arr, 2, 0).astype(np.int32)
    spread = max(int(np.abs(planes[0] - planes[c]).max()) for c in (1, 2))
    if spread == 0:
        return planes[0].astype(np.float32)
    grey = arr.astype(np.float32) @ _LUMA_WEIGHTS
    if spread > tolerance:
        msg = f"{name}: colour image converted to grey luminance (0.299 R + 0.587 G + 0.114 B)"
        warns.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return grey


def _read_pillow(path: Path) -> Radiograph:
    name = str(path)
    warns: list[str] = []
    try:
        with Image.open(path) as im:  # reads the header only
            limits.check_image_size(name, im.height, im.width)
            im.load()
            mode = im.mode
            orientation = im.getexif().get(0x0112, 1)
            if mode not in (*_PILLOW_BITS, "L", "LA", "RGB", "RGBA"):
                # Palette, CMYK, YCbCr, ...: only their RGB rendering is meaningful.
                im = im.convert("RGBA" if mode in ("P", "PA") else "RGB")
            arr = np.asarray(im)
    except LandmarkDataError:
        raise
    except Exception as e:  # truncated files and decompression bombs included
        raise LandmarkDataError(f"{name}: unreadable image ({limits.one_line(e)})") from e
    if orientation != 1:
        # Landmarks are annotated on stored pixels here; rotating would move them.
        warns.append(f"{name}: EXIF Orientation {orientation} ignored; pixels kept as stored")
    tolerance = _JPEG_GREY_TOLERANCE if path.suffix.lower() in (".jpg", ".jpeg") else 0
    pixels = _to_grey(arr, name, tolerance, warns)
    photometric = "RGB" if arr.ndim == 3 and arr.shape[2] >= 3 else "MONOCHROME2"
    return Radiograph(
        pixels, None, SPACING_NONE, _PILLOW_BITS.get(mode, 8), photometric, None, name, warns
    )


_TIFF_PHOTOMETRIC = {
    tifffile.PHOTOMETRIC.MINISBLACK: "MONOCHROME2",
    tifffile.PHOTOMETRIC.MINISWHITE: "MONOCHROME1",
    tifffile.PHOTOMETRIC.RGB: "RGB",
}


def _read_tiff(path: Path) -> Radiograph:
    # tifffile keeps 16-bit colour and min-is-white TIFFs exact, where Pillow
    # squeezes the first to 8 bits and inverts only 8-bit min-is-white.
    name = str(path)
    try:
        with tifffile.TiffFile(path) as tf:
            images = sum(not getattr(p, "is_reduced", False) for p in tf.pages)
            page = tf.pages[0]
            limits.check_image_size(name, page.imagelength, page.imagewidth)
            photometric, bits = _TIFF_PHOTOMETRIC.get(page.photometric), int(page.bitspersample)
            # LZW, JPEG, ... need imagecodecs in tifffile; Pillow also reads them.
            decodable = photometric and page.compression in tifffile.TIFF.DECOMPRESSORS
            arr = page.asarray() if decodable else None
            planar = page.axes.startswith("S")
    except LandmarkDataError:
        raise
    except Exception as e:
        raise LandmarkDataError(f"{name}: unreadable TIFF file ({limits.one_line(e)})") from e
    if images > 1:
        raise LandmarkDataError(
            f"{name}: multi-page TIFF ({images} images); only single 2D images are supported"
        )
    if arr is None:
        # Pillow is exact up to 8 bits and for 16-bit min-is-black grey.
        if bits > 8 and not (photometric == "MONOCHROME2" and page.samplesperpixel == 1):
            raise LandmarkDataError(
                f"{name}: {bits}-bit {page.photometric.name} TIFF with "
                f"{page.compression.name} compression needs: pip install imagecodecs"
            )
        return _read_pillow(path)
    if planar:
        arr = np.moveaxis(arr, 0, -1)
    if photometric == "MONOCHROME1":
        arr = (2**bits - 1) - arr.astype(np.float64) if arr.dtype.kind == "u" else -arr
    warns: list[str] = []
    pixels = _to_grey(arr, name, 0, warns)
    return Radiograph(pixels, None, SPACING_NONE, bits, photometric, None, name, warns)
