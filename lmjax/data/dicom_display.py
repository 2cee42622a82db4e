"""How a DICOM file says its grey values are shown, through pydicom's own LUT functions.

The display of a stored value goes through the file's Modality LUT (Rescale
Slope/Intercept or a Modality LUT Sequence), its VOI LUT (a VOI LUT Sequence, or
Window Center/Width with its VOI LUT Function: LINEAR, LINEAR_EXACT, SIGMOID) and
its Presentation LUT (a sequence, or the shape IDENTITY/INVERSE):
`pydicom.pixels.apply_modality_lut`, `apply_voi_lut` and `apply_presentation_lut`,
never a hand-written copy of them. MONOCHROME1 shows its smallest value white,
unless the Presentation LUT already inverts (`INVERSE`, the shape the DX IOD asks
of MONOCHROME1) or gives P-values itself (a sequence).

The functions run once, at read time, on every value the image can store (at most
`MAX_ENTRIES`), and the VOI's output range (a LUT's entry bits, a window's ends)
is stretched to 0..255, giving a uint8 table; showing an image is then one lookup. The
reader's pixels are the stored values rescaled (and, for MONOCHROME1, inverted in
their range, `lmjax.data.image_io`), so the lookup index is an affine function of a
pixel value, kept beside the table. `to_display_uint8` shows any radiograph in 8
bits: through that table, else its window, else its min..max.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut

from lmjax.data.types import Radiograph

MAX_ENTRIES = 1 << 17  # tables up to 17-bit ranges (stored values are at most 16 bits)
# The elements the LUT functions read, copied to a pixel-less header.
_KEYWORDS = (
    "PhotometricInterpretation",
    "PixelRepresentation",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "VOILUTFunction",
    "PresentationLUTSequence",
    "PresentationLUTShape",
)


class DisplayLUT(NamedTuple):
    """uint8 `table` `[N]`; a pixel value `v` shows as `table[round(scale * v + offset)]`
    (clipped to the table)."""

    table: np.ndarray
    scale: float
    offset: float

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 `[H, W]` of float `[H, W]` pixels."""
        # float32 holds every index exactly (tables have at most 2**17 entries).
        index = np.rint(
            pixels.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        )
        return self.table[np.clip(index, 0, len(self.table) - 1).astype(np.intp)]


def display_lut(
    ds: pydicom.Dataset,
    stored: np.ndarray,
    *,
    bits: int,
    stored_range: tuple[int, int],
    slope: float,
    intercept: float,
    window: tuple[float, float] | None,
    inverted: bool,
) -> DisplayLUT | None:
    """The display table of a grey DICOM image, or None when the file states no VOI
    or Presentation LUT (the caller then stretches the pixels' own range).

    Args:
      ds: the file's dataset (its LUT elements are read, not changed).
      stored: `[H, W]` stored values, as decoded.
      bits: bits stored; `stored_range`: `(lo, hi)` of the stored values, the
        BitsStored range widened to what the file holds.
      slope, intercept, window: the reader's checked Rescale Slope/Intercept and
        first window `(center, width)` (None: none valid); invalid tags are not used.
      inverted: MONOCHROME1, whose pixels the reader inverted in `stored_range`.

    Raises:
      ValueError, NotImplementedError, AttributeError, ...: what pydicom raises for
        a LUT it cannot apply; the caller reports it.
    """
    has_voi = bool(ds.get("VOILUTSequence")) or window is not None
    if not has_voi and not ("PresentationLUTSequence" in ds or "PresentationLUTShape" in ds):
        return None
    # The table spans every storable value with a VOI, else the image's own values.
    lo, hi = stored_range if has_voi else (int(stored.min()), int(stored.max()))
    if hi - lo + 1 > MAX_ENTRIES:
        return None
    header = pydicom.Dataset()
    header.file_meta = ds.file_meta  # LUT data stored as OW needs the byte order
    for keyword in _KEYWORDS:
        if keyword in ds:
            header.add(ds.data_element(keyword))
    header.BitsStored = bits
    header.PixelRepresentation = int(ds.get("PixelRepresentation", 0))
    if slope != 1 or intercept != 0:
        header.RescaleSlope, header.RescaleIntercept = slope, intercept
    if window is not None:
        header.WindowCenter, header.WindowWidth = window
    ramp = np.arange(lo, hi + 1, dtype=np.int64)
    values = apply_modality_lut(ramp, header)
    if header.get("VOILUTSequence"):  # a LUT is indexed by integer modality values
        values = np.rint(values).astype(np.int64)
    voi = apply_voi_lut(values, header).astype(np.float64)
    # The VOI's whole output range is what the display spans (a window wider than the
    # stored values leaves part of it unused); it rides through the Presentation LUT
    # as two extra entries, since an INVERSE shape flips about the array's maximum.
    extended = np.concatenate([voi, _voi_range(header) if has_voi else [voi.min(), voi.max()]])
    shown = apply_presentation_lut(extended, header).astype(np.float64)
    low, high = float(shown[-2:].min()), float(shown[-2:].max())
    unit = np.clip((shown[:-2] - low) / (high - low), 0, 1) if high > low else 0 * voi
    shape = str(header.get("PresentationLUTShape", "")).strip().upper()
    if inverted and shape != "INVERSE" and "PresentationLUTSequence" not in header:
        unit = 1.0 - unit  # MONOCHROME1: the minimum is white
    table = np.round(unit * 255).astype(np.uint8)
    # Pixels v = s * slope + intercept, or (lo' + hi' - s) * slope + intercept for
    # MONOCHROME1 (lo', hi' = `stored_range`); the index is s - lo.
    if inverted:
        a, b = stored_range
        return DisplayLUT(table, -1.0 / slope, a + b + intercept / slope - lo)
    return DisplayLUT(table, 1.0 / slope, -intercept / slope - lo)


def _voi_range(header: pydicom.Dataset) -> list[float]:
    """`[y_min, y_max]` of the VOI the header applies: a VOI LUT's entries span their
    bits (PS3.3 C.11.2.1.1); a window maps far-out inputs onto its range ends."""
    seq = header.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:  # pydicom prefers the LUT
        return [0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)]
    with np.errstate(over="ignore"):  # a SIGMOID at +-1e30
        ends = apply_voi_lut(np.array([-1e30, 1e30]), header)
    return [float(ends[0]), float(ends[1])]


def display_of_file(ds, stored, name: str, warns: list[str], **lut) -> DisplayLUT | None:
    """`display_lut`, or None with a warning in `warns` naming the file when pydicom
    cannot apply its LUTs (the image is then shown by its window)."""
    try:
        return display_lut(ds, stored, **lut)
    except Exception as e:  # pydicom raises several kinds for malformed LUTs
        warns.append(
            f"{name}: its VOI or Presentation LUT cannot be applied "
            f"({type(e).__name__}: {e}); shown by its window instead"
        )
        return None


def to_display_uint8(radiograph: Radiograph) -> np.ndarray:
    """Map pixels to 8 bits for previews and overlays.

    Args:
      radiograph: a radiograph as `read_radiograph` returns it.

    Returns:
      uint8 `[H, W]`: a DICOM file's own display (its modality, VOI and presentation
      LUTs, `display_of_file`) when it states a VOI or Presentation LUT;
      else the VOI window stretched to 0..255 when it has one, else its min..max.
    """
    if radiograph.display_lut is not None:
        return radiograph.display_lut(radiograph.pixels)
    x = radiograph.pixels.astype(np.float32)
    if radiograph.window is not None:
        center, width = radiograph.window
        lo, hi = center - width / 2, center + width / 2
    else:
        lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.round(np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


__all__ = ["MAX_ENTRIES", "DisplayLUT", "display_lut", "display_of_file", "to_display_uint8"]
