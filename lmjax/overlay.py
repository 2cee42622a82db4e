"""The overlay `lmjax predict` writes: numbered landmarks, outlines, radii and
measurement lines drawn on the windowed radiograph (Pillow only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmjax.data import affine
from lmjax.data.cache import cache_hw

MAX_OVERLAY_SIDE = 2048
_COLOURS = ((255, 99, 71), (50, 205, 50), (30, 144, 255), (255, 215, 0), (238, 130, 238))


def measurement_lines(measured: dict[str, Any]) -> list[str]:
    """One text line per measurement: name, value with unit, class or why missing."""
    lines = []
    for name, m in measured.items():
        value = "-" if m.get("value") is None else f"{m['value']:.1f} {m.get('unit', '')}"
        tail = m.get("class") or m.get("reason") or ""
        lines.append(f"{name} {value} {tail}".strip())
    return lines


def overlay(
    grey: np.ndarray,
    coords: np.ndarray,
    lines: list[str] = (),
    regions: list[dict] = (),
    *,
    radii_px: np.ndarray | None = None,
    implausible: np.ndarray | None = None,
) -> Image.Image:
    """RGB uint8 `[H, W]` image with landmark k circled and numbered k + 1, outlines
    and patches (`regions`: `{"kind", "points"}`) drawn as lines, and the
    measurement `lines` in the top-left corner; downscaled (points too) to at most
    MAX_OVERLAY_SIDE. `radii_px` `[K, 2]` (x, y semi-axes in original pixels, NaN:
    none) draws each landmark's conformal radius as a thin ellipse of its colour;
    landmarks flagged in `implausible` `[K]` get a red cross and a "!"."""
    pic = Image.fromarray(grey).convert("RGB")
    src_hw = grey.shape[:2]
    dst_hw = cache_hw(src_hw, MAX_OVERLAY_SIDE)
    scale = affine.resize(src_hw, dst_hw)
    if dst_hw != src_hw:
        pic = pic.resize(dst_hw[::-1], Image.BILINEAR)
        coords = affine.apply(coords, scale)
    axes = None
    if radii_px is not None:  # semi-axes scale with the image sides
        axes = np.asarray(radii_px, np.float64) * [dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]]
    draw = ImageDraw.Draw(pic)
    r = max(2, max(dst_hw) // 200)
    for k, region in enumerate(regions):
        points = [tuple(p) for p in affine.apply(np.asarray(region["points"]), scale).tolist()]
        if region["kind"] == "patch" and len(points) > 2:
            points.append(points[0])
        if len(points) > 1:
            draw.line(points, fill=_COLOURS[(k + 2) % len(_COLOURS)], width=max(1, r // 2))
    font = ImageFont.load_default(size=max(10, 3 * r))
    for k, (x, y) in enumerate(np.asarray(coords, np.float64)):
        if np.isfinite(x) and np.isfinite(y):
            colour = _COLOURS[k % len(_COLOURS)]
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(1, r // 2))
            flagged = implausible is not None and bool(implausible[k])
            label = f"{k + 1}!" if flagged else str(k + 1)
            draw.text((x + r + 1, y - r), label, fill=colour, font=font)
            if axes is not None and np.isfinite(axes[k]).all():
                ax, ay = axes[k]
                draw.ellipse([x - ax, y - ay, x + ax, y + ay], outline=colour, width=1)
            if flagged:
                c = 2 * r
                for end in ((x - c, y - c, x + c, y + c), (x - c, y + c, x + c, y - c)):
                    draw.line(end, fill=(255, 0, 0), width=max(1, r // 2))
    step = max(10, 3 * r) + 2
    for i, line in enumerate(lines):
        y = 2 + i * step
        draw.rectangle(draw.textbbox((4, y), line, font=font), fill=(0, 0, 0))
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
    return pic


__all__ = ["MAX_OVERLAY_SIDE", "measurement_lines", "overlay"]
