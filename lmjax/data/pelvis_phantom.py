"""Synthetic AP-pelvis images with landmarks, outlines and patches: the `pelvis_phantom` format.

Every item is defined in millimetres on a canonical pelvis, then one similarity
per image (patient size, rotation, position) maps the geometry to pixels before
anything is drawn, so image and annotations agree exactly. Bones are bright
filled polygons on a darker background, blurred for soft edges, with noise.

Conventions follow `lmjax.data.phantom`: float32 pixels in [0, 4095], bone
bright; the patient's left is on the image right; image `index` of `seed`
depends only on `(seed, index)`. An absent item has a NaN landmark, is not
visible and has no entry in `Record.polygons`; the calibration ball is always
present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lmjax.data import affine
from lmjax.data.formats import register_format
from lmjax.data.items import item_centroid
from lmjax.data.phantom import block_splits
from lmjax.data.types import Dataset, LandmarkSet, Record, Spacing

SPACING_SOURCE = "phantom"
MAX_VALUE = 4095.0
# Field of view across the shorter image side: 1.25 mm/px at 256 px.
_FOV_MM = 320.0
BALL = "calibration_ball"
BALL_RADIUS_MM = 12.5  # a 25 mm calibration sphere

_SIDES = ("right", "left")
_BILATERAL = {
    "landmark": ("femoral_head_centre", "teardrop", "greater_trochanter"),
    "outline": ("acetabular_roof", "femoral_head_arc", "pelvic_brim"),
    "patch": ("obturator_foramen",),
}
_MIDLINE = {"landmark": ("sacral_promontory", "pubic_symphysis"), "outline": (), "patch": (BALL,)}
_ITEMS = tuple(
    (name, kind)
    for kind in ("landmark", "outline", "patch")
    for name in (
        *_MIDLINE[kind],
        *(f"{f}_{side}" for f in _BILATERAL[kind] for side in _SIDES),
    )
)
_NAMES = tuple(n for n, _ in _ITEMS)
PELVIS_PHANTOM_ITEMS = LandmarkSet(
    name="pelvis_phantom",
    names=_NAMES,
    flip_pairs=tuple(
        (i, _NAMES.index(n[: -len("left")] + "right"))
        for i, n in enumerate(_NAMES)
        if n.endswith("_left")
    ),
    kinds=tuple(k for _, k in _ITEMS),
)


def pelvis_phantom_item_set() -> LandmarkSet:
    """8 landmarks, 6 outlines and 3 patches; 7 left/right pairs."""
    return PELVIS_PHANTOM_ITEMS


def _ellipse(cx, cy, a, b, theta=0.0, *, start=0.0, stop=2 * math.pi, n=24) -> np.ndarray:
    """`[n, 2]` points on an ellipse; the full turn leaves out its repeated end."""
    t = np.linspace(start, stop, n, endpoint=abs(stop - start) < 2 * math.pi - 1e-9)
    u, v = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([cx + c * u - s * v, cy + s * u + c * v], axis=-1)


def _side(rng: np.random.Generator, sign: float):
    """Items and bone shapes of one side, built laterally towards +x, then mirrored by `sign`."""
    j = lambda s: rng.normal(0.0, s)
    g = lambda s: 1.0 + rng.normal(0.0, s)
    hx, hy, r = 88 + j(2), j(2), 22 * g(0.05)
    fx, fy = 45 + j(2), 50 + j(2)
    items = {
        "femoral_head_centre": np.array([[hx, hy]]),
        "teardrop": np.array([[hx - r - 8 + j(1.5), hy + 14 + j(1.5)]]),
        "greater_trochanter": np.array([[hx + 45 + j(2), hy - 2 + j(2)]]),
        # Roof: the superior arc of the socket, a few mm outside the head.
        "acetabular_roof": _ellipse(
            hx, hy, r + 3, r + 3, start=math.radians(-165), stop=math.radians(-15), n=12
        ),
        # The head contour from inferomedial over the top, where no neck hides it.
        "femoral_head_arc": _ellipse(
            hx, hy, r, r, start=math.radians(110), stop=math.radians(300), n=14
        ),
        "pelvic_brim": _ellipse(0, -25, 80, 55, start=-math.pi / 3, stop=math.pi / 3, n=12),
        "obturator_foramen": _ellipse(fx, fy, 16 * g(0.06), 12 * g(0.06), math.radians(30), n=20),
    }
    # (polygon, intensity): additive, like overlapping bone in a projection.
    bones = [
        (_ellipse(95, -75, 50 * g(0.05), 38 * g(0.05), math.radians(30)), 0.30),  # iliac wing
        (_ellipse(fx, fy, 38, 26, math.radians(15)), 0.30),  # pubic and ischial rami
        (items["obturator_foramen"], -0.35),
        (_ellipse(hx, hy, r, r), 0.40),  # femoral head
        (np.array([[hx, hy - 12], [hx + 42, hy - 10], [hx + 48, hy + 30], [hx, hy + 14]]), 0.35),
        (_ellipse(hx + 40, hy + 8, 14, 18), 0.25),  # greater trochanter
        (np.array([[hx + 20, hy + 25], [hx + 50, hy + 5], [hx + 44, 200], [hx + 14, 200]]), 0.40),
    ]
    flip = np.array([sign, 1.0])
    return {k: v * flip for k, v in items.items()}, [(p * flip, w) for p, w in bones]


def _anatomy(rng: np.random.Generator):
    """Item vertices by name and bone polygons, in canonical millimetres."""
    j = lambda s: rng.normal(0.0, s)
    items = {
        "sacral_promontory": np.array([[j(2), -72 + j(2)]]),
        "pubic_symphysis": np.array([[j(1.5), 50 + j(2)]]),
        # Between the thighs, below the symphysis: clear of bone, always in frame.
        BALL: _ellipse(
            rng.choice((-1, 1)) * rng.uniform(20, 55),
            rng.uniform(90, 100),
            BALL_RADIUS_MM,
            BALL_RADIUS_MM,
            n=24,
        ),
    }
    bones = [
        (_ellipse(0, -15, 120, 80), 0.30),  # pelvic ring
        (_ellipse(0, -25, 80, 55), -0.22),  # the inlet projects thinner
        (_ellipse(0, -45, 40, 45), 0.20),  # sacrum
    ]
    for side, sign in zip(_SIDES, (-1.0, 1.0), strict=True):
        it, b = _side(rng, sign)
        items.update({f"{k}_{side}": v for k, v in it.items()})
        bones += b
    bones.append((items[BALL], 1.0))  # metal: brighter than any bone
    return items, bones


def _draw(rng: np.random.Generator, bones, shape: tuple[int, int]) -> np.ndarray:
    """The image `[H, W]` in [0, 4095] from bone polygons already in pixels."""
    # Loaded here, not at import: importing this module registers the format.
    from scipy import ndimage
    from skimage.draw import polygon

    h, w = shape
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = (xs / w - 0.5) * math.cos(ang) + (ys / h - 0.5) * math.sin(ang)
    image = np.float32(rng.uniform(0.1, 0.2)) + np.float32(rng.uniform(0, 0.1)) * ramp
    for verts, weight in bones:
        rr, cc = polygon(verts[:, 1], verts[:, 0], shape)
        image[rr, cc] += np.float32(weight)
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.2))
    image += np.float32(rng.uniform(0.01, 0.04)) * rng.standard_normal(shape, dtype=np.float32)
    return np.round(np.clip(image / 1.6, 0, 1) * MAX_VALUE).astype(np.float32)


def render_pelvis_phantom(
    seed: int, index: int, *, size: tuple[int, int] = (256, 256), absent_p: float = 0.1
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], Spacing]:
    """Renders image `index` of `seed`.

    Returns:
      image: float32 `[H, W]` in [0, 4095], bone bright.
      landmarks: float32 `[K, 2]` (x, y) pixels: the point of a landmark, the
        centroid of an outline or patch; NaN where absent.
      polygons: float32 `[V, 2]` pixel vertices of each present outline and patch.
      spacing: `(row_mm, col_mm)`, square pixels.
    """
    rng = np.random.default_rng([seed, index])
    h, w = size
    items, bones = _anatomy(rng)
    spacing = _FOV_MM / min(h, w)
    shift = rng.normal(0, 0.015, 2) * (w, h)
    m = affine.compose(
        affine.scale(rng.uniform(0.92, 1.08) / spacing),
        affine.rotate(math.radians(rng.uniform(-8, 8))),
        affine.translate((w - 1) / 2 + shift[0], (h - 1) / 2 + shift[1]),
    )
    image = _draw(rng, [(affine.apply(p, m), wt) for p, wt in bones], (h, w))
    absent = rng.random(len(_NAMES)) < absent_p  # drawn always: a stable stream
    lms = np.full((len(_NAMES), 2), np.nan, np.float32)
    polygons = {}
    for k, (name, kind) in enumerate(_ITEMS):
        v = affine.apply(items[name], m).astype(np.float32)
        # An annotator cannot place what lies outside the image.
        out = (v < -0.5).any() or (v[:, 0] > w - 0.5).any() or (v[:, 1] > h - 0.5).any()
        if name != BALL and (absent[k] or out):
            continue
        lms[k] = item_centroid(kind, v)
        if kind != "landmark":
            polygons[name] = v
    return image, lms, polygons, (spacing, spacing)


def pelvis_phantom_dataset(
    n: int = 200,
    *,
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    absent_p: float = 0.1,
    splits: Sequence[tuple[str, float]] = (("train", 0.7), ("val", 0.15), ("test", 0.15)),
) -> Dataset:
    """`n` images held in memory, split in consecutive blocks like `phantom_dataset`."""
    names = block_splits(n, splits, "pelvis_phantom_dataset")
    if not 0 <= absent_p <= 1:
        raise ValueError(f"pelvis_phantom_dataset: absent_p must be in [0, 1], got {absent_p}")
    records = []
    for i in range(n):
        image, lms, polygons, sp = render_pelvis_phantom(seed, i, size=size, absent_p=absent_p)
        split = names[i]
        meta = {"name": f"pelvis_phantom_{i:04d}", "seed": seed, "index": i}
        records.append(
            Record(image, lms, None, sp, SPACING_SOURCE, polygons=polygons, split=split, meta=meta)
        )
    return Dataset(landmark_set=PELVIS_PHANTOM_ITEMS, records=records, name="pelvis_phantom")


def _read(path, options) -> Dataset:
    del path  # made, not read
    return pelvis_phantom_dataset(options.phantom_size, seed=options.seed)


register_format(
    "pelvis_phantom",
    read=_read,
    detect=None,
    description="synthetic AP pelvis with landmarks, outlines and patches in memory (no files)",
    layout=None,
)
