"""Overlays people can read: landmarks in a fixed palette of 24 colours, labels
with a dark outline (readable on bright bone and on dark background alike), ground
truth and prediction with different markers joined by the error vector,
conformal radii, measurement lines (S-N, Go-Gn, ...) and a legend. Used by
`lmjax predict`, the report's gallery and the TensorBoard images (Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmjax.data import affine
from lmjax.data.cache import cache_hw

MAX_OVERLAY_SIDE = 2048
# A fixed qualitative palette (after Trubetskoy's 20 distinct colours) without its
# darkest entries: every colour must stay readable inside a dark outline.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (30, 144, 255), (245, 130, 48),
    (180, 80, 230), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 170, 160), (220, 190, 255), (200, 130, 60), (255, 250, 200), (255, 110, 110),
    (170, 255, 195), (170, 170, 40), (255, 215, 180), (120, 130, 255), (190, 190, 190),
    (255, 255, 255), (150, 210, 255), (255, 170, 0), (120, 210, 90),
)  # fmt: skip
OUTLINE = (0, 0, 0)
MISSED = (255, 0, 0)
# Lines worth seeing on a cephalogram, as canonical (ISBI 2015) landmark names;
# drawn when the landmark set has both ends (under its own or an aliased name).
SEGMENTS = (
    ("S-N", "sella", "nasion"),
    ("Go-Gn", "gonion", "gnathion"),
    ("Po-Or", "porion", "orbitale"),
    ("PNS-ANS", "posterior_nasal_spine", "anterior_nasal_spine"),
)
# Names up to this long are written beside the landmark; longer ones get numbers
# and the legend says which is which.
SHORT_NAME = 8


def colour(k: int) -> tuple[int, int, int]:
    """Landmark k's colour (the palette repeats after 24)."""
    return PALETTE[k % len(PALETTE)]


def measurement_lines(measured: dict[str, Any]) -> list[str]:
    """One text line per measurement: name, value with unit, class or why missing."""
    lines = []
    for name, m in measured.items():
        value = "-" if m.get("value") is None else f"{m['value']:.1f} {m.get('unit', '')}"
        tail = m.get("class") or m.get("reason") or ""
        lines.append(f"{name} {value} {tail}".strip())
    return lines


def segments_for(names: Sequence[str]) -> list[tuple[str, int, int]]:
    """`(label, i, j)` of every `SEGMENTS` line whose two landmarks the set has,
    found by name or by the measurement registry's aliases (e.g. "l1" for sella)."""
    from lmjax.measurements.registry import ALIASES

    index = {n: i for i, n in enumerate(names)}

    def find(canonical: str) -> int | None:
        for name in (canonical, *ALIASES.get(canonical, ())):
            if name in index:
                return index[name]
        return None

    out = []
    for label, a, b in SEGMENTS:
        i, j = find(a), find(b)
        if i is not None and j is not None:
            out.append((label, i, j))
    return out


def labels_for(names: Sequence[str] | None, k: int, mode: str = "auto") -> list[str]:
    """The text beside each landmark: its name (`mode` "names", or "auto" when every
    name is at most SHORT_NAME characters), else its number k + 1."""
    if mode not in ("auto", "names", "numbers"):
        raise ValueError(f"labels must be auto, names or numbers, got {mode!r}")
    if names is not None and len(names) != k:
        raise ValueError(f"{len(names)} landmark names for {k} landmarks")
    use_names = names is not None and (
        mode == "names" or (mode == "auto" and all(len(n) <= SHORT_NAME for n in names))
    )
    return list(names) if use_names else [str(i + 1) for i in range(k)]


def display_grey(record, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """`(uint8 [h, w], original -> display affine)` of a record's image as a person
    sees it (a DICOM's own VOI/presentation LUTs, else its window or range),
    downscaled to at most `long_side`."""
    from lmjax.data import image_io

    if isinstance(record.image, str):
        grey = image_io.to_display_uint8(image_io.read_radiograph(record.image))
    else:
        x = np.asarray(record.image, np.float32)
        lo, hi = float(np.min(x)), float(np.max(x))
        grey = np.zeros(x.shape, np.uint8) if hi <= lo else np.round(
            np.clip((x - lo) / (hi - lo), 0, 1) * 255
        ).astype(np.uint8)  # fmt: skip
    src = grey.shape[:2]
    dst = cache_hw(src, long_side)
    if dst != src:
        grey = np.asarray(Image.fromarray(grey).resize(dst[::-1], Image.BILINEAR))
    return grey, affine.resize(src, dst)


def _text(draw, xy, text, fill, font, width):
    draw.text(xy, text, fill=fill, font=font, stroke_width=width, stroke_fill=OUTLINE)


def _line(draw, points, fill, width):
    """A line with a dark border, readable on bright bone."""
    draw.line(points, fill=OUTLINE, width=width + 2)
    draw.line(points, fill=fill, width=width)


def _cross(draw, x, y, c, fill, width):
    for end in ((x - c, y, x + c, y), (x, y - c, x, y + c)):
        _line(draw, end, fill, width)


def overlay(
    grey: np.ndarray,
    coords: np.ndarray,
    lines: list[str] = (),
    regions: list[dict] = (),
    *,
    radii_px: np.ndarray | None = None,
    implausible: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    labels: str = "auto",
    segments: Sequence[tuple[str, int, int]] = (),
    legend: bool | None = None,
    max_side: int = MAX_OVERLAY_SIDE,
) -> Image.Image:
    """RGB image of `grey` (uint8 `[H, W]`) with the landmarks `coords` `[K, 2]`
    (original pixels, NaN: missed) drawn on it, downscaled (points too) to at most
    `max_side`.

    Each landmark k is a circle in `colour(k)` labelled by `labels_for(names, K,
    labels)`. `truth` `[K, 2]` adds the ground truth as a cross and the error vector
    from it to the prediction. `radii_px` `[K, 2]` (x, y semi-axes in original
    pixels, NaN: none) draws conformal radii as thin ellipses; landmarks flagged in
    `implausible` `[K]` get a red cross and a "!". `segments` (`(label, i, j)`, e.g.
    `segments_for(names)`) join predicted landmarks; `regions` (`{"kind",
    "points"}`) are drawn as lines; `lines` of text go in the top-left corner; the
    legend (default: when `names` are given) lists colours, names and markers in the
    top-right corner.
    """
    pic = Image.fromarray(grey).convert("RGB")
    src_hw = grey.shape[:2]
    dst_hw = cache_hw(src_hw, max_side)
    scale = affine.resize(src_hw, dst_hw)
    coords = np.asarray(coords, np.float64)
    if dst_hw != src_hw:
        pic = pic.resize(dst_hw[::-1], Image.BILINEAR)
        coords = affine.apply(coords, scale)
        if truth is not None:
            truth = affine.apply(np.asarray(truth, np.float64), scale)
    axes = None
    if radii_px is not None:  # semi-axes scale with the image sides
        axes = np.asarray(radii_px, np.float64) * [dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]]
    draw = ImageDraw.Draw(pic)
    r = max(2, max(dst_hw) // 200)
    w = max(1, r // 2)
    font = ImageFont.load_default(size=max(10, 3 * r))
    stroke = max(1, r // 3)
    for k, region in enumerate(regions):
        points = [tuple(p) for p in affine.apply(np.asarray(region["points"]), scale).tolist()]
        if region["kind"] == "patch" and len(points) > 2:
            points.append(points[0])
        if len(points) > 1:
            _line(draw, points, colour(k + 2), w)
    finite = np.isfinite(coords).all(-1)
    for label, i, j in segments:
        if finite[i] and finite[j]:
            a, b = tuple(coords[i]), tuple(coords[j])
            _line(draw, [a, b], (255, 255, 255), max(1, w // 2))
            mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
            _text(draw, mid, label, (255, 255, 255), font, stroke)
    text = labels_for(names, len(coords), labels)
    if truth is not None:
        for k, (t, p) in enumerate(zip(truth, coords, strict=True)):
            if np.isfinite(t).all():
                if np.isfinite(p).all():  # the error vector, ground truth -> prediction
                    _line(draw, [tuple(t), tuple(p)], colour(k), w)
                _cross(draw, *t, 1.5 * r, MISSED if not np.isfinite(p).all() else colour(k), w)
    for k, (x, y) in enumerate(coords):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        c = colour(k)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=OUTLINE, width=w + 2)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=c, width=w)
        flagged = implausible is not None and bool(implausible[k])
        _text(draw, (x + r + 2, y - 2 * r), text[k] + ("!" if flagged else ""), c, font, stroke)
        if axes is not None and np.isfinite(axes[k]).all():
            ax, ay = axes[k]
            draw.ellipse([x - ax, y - ay, x + ax, y + ay], outline=c, width=1)
        if flagged:
            c2 = 2 * r
            for end in ((x - c2, y - c2, x + c2, y + c2), (x - c2, y + c2, x + c2, y - c2)):
                draw.line(end, fill=MISSED, width=w)
    step = max(10, 3 * r) + 2
    for i, line in enumerate(lines):
        y = 2 + i * step
        draw.rectangle(draw.textbbox((4, y), line, font=font), fill=(0, 0, 0))
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
    if legend if legend is not None else names is not None:
        _legend(draw, pic.size, names or text, text, font, step, r, w, truth is not None)
    return pic


def _legend(draw, size, names, text, font, step, r, w, with_truth):
    """Colour, label and name of each landmark, and what the markers mean, in a dark
    box at the top right."""
    rows = [f"{t} {n}" if t != n else n for t, n in zip(text, names, strict=True)]
    keys = ["o predicted", "+ ground truth, line: error"] if with_truth else []
    width = max(draw.textlength(s, font=font) for s in rows + keys) + 3 * r + 12
    x0 = size[0] - width - 4
    draw.rectangle([x0, 2, size[0] - 2, 6 + step * (len(rows) + len(keys))], fill=(0, 0, 0))
    for i, row in enumerate(rows):
        y = 4 + i * step
        draw.ellipse([x0 + 4, y + 2, x0 + 4 + 2 * r, y + 2 + 2 * r], outline=colour(i), width=w)
        draw.text((x0 + 3 * r + 8, y), row, fill=colour(i), font=font)
    for i, key in enumerate(keys):
        draw.text((x0 + 4, 4 + (len(rows) + i) * step), key, fill=(255, 255, 255), font=font)


def compare_overlay(
    record,
    pred: np.ndarray,
    names: Sequence[str],
    *,
    long_side: int = 512,
    radii_px: np.ndarray | None = None,
    labels: str = "numbers",
    legend: bool = False,
) -> Image.Image:
    """A record's image at most `long_side` with the prediction `pred` `[K, 2]`
    against its ground truth, error vectors and (optionally) conformal radii: the
    report's gallery cards and the TensorBoard validation images."""
    grey, to_display = display_grey(record, long_side)
    # Drawn at the display size, so the coordinates scale with the image.
    axes = None
    if radii_px is not None:
        axes = np.asarray(radii_px, np.float64) * [to_display[0, 0], to_display[1, 1]]
    return overlay(
        grey,
        affine.apply(np.asarray(pred, np.float64), to_display),
        truth=affine.apply(np.asarray(record.landmarks, np.float64), to_display),
        radii_px=axes,
        names=names,
        labels=labels,
        segments=segments_for(names),
        legend=legend,
    )


__all__ = [
    "MAX_OVERLAY_SIDE",
    "PALETTE",
    "colour",
    "compare_overlay",
    "display_grey",
    "labels_for",
    "measurement_lines",
    "overlay",
    "segments_for",
]
