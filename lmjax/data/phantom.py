"""Procedural AP pelvis radiographs with known landmarks: the built-in `phantom` dataset.

Each image is drawn from a parametric anatomy (sacrum, L5, two hip bones, two
proximal femurs) built from superellipses and tapered capsules in millimetres.
Bones are projected like solids with a cortical shell, so edges are bright and
marrows darker; overlaps add up as in a real projection. The exposure model is
photon counting: `counts = N0 * heel * exp(-attenuation)`, blurred, with
Poisson-like noise, then log-transformed so bone is bright (MONOCHROME2).

Conventions:
  * Pixel values are float32 in [0, 4095] (12-bit-like integers), bone bright.
  * "left"/"right" are the patient's sides; radiological convention puts the
    patient's left on the image right, so `x(left) > x(right)` when unrotated.
  * Landmarks that fall outside the image are missing (NaN, not visible), since
    no annotator could have placed them; with probability `missing_rate` one more
    landmark per image is dropped to exercise missing-landmark handling.
  * Image `index` of `seed` depends only on `(seed, index)`: its RNG is
    `np.random.default_rng([seed, index])`, so generation order does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lmjax.data import affine
from lmjax.data.formats import register_format
from lmjax.data.types import Dataset, LandmarkSet, Record, Spacing

SPACING_SOURCE = "phantom"
MAX_VALUE = 4095.0
# Field of view across the shorter image side; about 1.56 mm/px at 256 px.
_FOV_MM = 400.0

# Draw order of the region label map: later bones win where projections overlap.
REGION_NAMES = tuple(
    "sacrum vertebra_l5 hip_bone_right hip_bone_left femur_right femur_left".split()
)
# Bilateral features, each a well-defined point of one primitive of a bone.
_BILATERAL = (
    ("iliac_crest", "hip_bone"),  # superolateral tip of the iliac wing
    ("acetabulum_lateral", "hip_bone"),  # lateral edge of the acetabular roof
    ("pubic_tubercle", "hip_bone"),  # superomedial corner of the pubic body
    ("ischial_tuberosity", "hip_bone"),  # inferior tip of the ischium
    ("femoral_head", "femur"),  # centre of the round head
    ("greater_trochanter", "femur"),  # superior tip of the trochanter
    ("lesser_trochanter", "femur"),  # medial tip of the trochanter
)
_LANDMARKS = (
    ("sacral_promontory", "sacrum"),  # top midpoint of the S1 block
    ("coccyx_tip", "sacrum"),  # inferior tip of the tapered sacrum and coccyx
    *((f"{f}_{side}", f"{bone}_{side}") for f, bone in _BILATERAL for side in ("right", "left")),
)
_NAMES = tuple(n for n, _ in _LANDMARKS)
PHANTOM_LANDMARKS = LandmarkSet(
    name="phantom",
    names=_NAMES,
    flip_pairs=tuple(
        (i, _NAMES.index(n[: -len("left")] + "right"))
        for i, n in enumerate(_NAMES)
        if n.endswith("_left")
    ),
    regions=tuple(REGION_NAMES.index(r) for _, r in _LANDMARKS),
    region_names=REGION_NAMES,
)

# A primitive is ("e", cx, cy, a, b, theta, p): superellipse with semi-axes a, b,
# axis a along angle theta, exponent p in {2, 4, 8}; or ("c", x0, y0, x1, y1, r0, r1):
# a capsule whose radius tapers linearly from r0 at (x0, y0) to r1 at (x1, y1).
Prim = tuple


def phantom_landmark_set() -> LandmarkSet:
    """The landmark set of the phantom: 16 pelvis landmarks, 7 left/right pairs."""
    return PHANTOM_LANDMARKS


def _transform(p: Prim, m: np.ndarray) -> Prim:
    """Maps a primitive through a similarity matrix (rotation, scale, shift, mirror)."""
    k = math.sqrt(abs(np.linalg.det(m[:2, :2])))
    if p[0] == "e":
        cx, cy = affine.apply(np.array([p[1:3]]), m)[0]
        d = m[:2, :2] @ [math.cos(p[5]), math.sin(p[5])]  # where the a axis points now
        return ("e", float(cx), float(cy), p[3] * k, p[4] * k, math.atan2(d[1], d[0]), p[6])
    (x0, y0), (x1, y1) = affine.apply(np.array([p[1:3], p[3:5]]), m)
    return ("c", float(x0), float(y0), float(x1), float(y1), p[5] * k, p[6] * k)


def _ell_point(p: Prim, u: float, v: float) -> tuple[float, float]:
    """The boundary point of superellipse `p` in local direction (u, v) (units of a, b)."""
    s = (abs(u) ** p[6] + abs(v) ** p[6]) ** (-1.0 / p[6])
    c, sn = math.cos(p[5]), math.sin(p[5])
    du, dv = u * s * p[3], v * s * p[4]
    return (p[1] + c * du - sn * dv, p[2] + sn * du + c * dv)


def _cap_tip(p: Prim) -> tuple[float, float]:
    """The end of capsule `p` beyond (x1, y1), along its axis."""
    dx, dy = p[3] - p[1], p[4] - p[2]
    n = math.hypot(dx, dy)
    return (p[3] + p[6] * dx / n, p[4] + p[6] * dy / n)


def _sacrum(rng: np.random.Generator) -> tuple[dict[str, list[Prim]], dict[str, tuple]]:
    """Sacrum with coccyx, and the L5 vertebra above it, on the midline."""
    j = lambda s: rng.normal(0.0, s)
    g = lambda s: 1.0 + rng.normal(0.0, s)
    cx = j(2.0)
    s1 = ("e", cx, -86 + j(3), 52 * g(0.06), 20 * g(0.06), j(0.04), 4)
    body = ("c", cx, -80.0, cx + j(3), -28 + j(4), 42 * g(0.06), 12 * g(0.08))
    coccyx = ("c", body[3], body[4], body[3] + j(3), body[4] + 26 * g(0.1), 7.0, 4 * g(0.1))
    l5 = ("e", cx + j(2), s1[2] - s1[4] - 24 * g(0.08), 30 * g(0.06), 16 * g(0.06), j(0.06), 8)
    l5_wings = ("e", l5[1], l5[2] + 2, 44 * g(0.06), 5 * g(0.1), l5[5], 2)
    bones = {"sacrum": [s1, body, coccyx], "vertebra_l5": [l5, l5_wings]}
    return bones, {"sacral_promontory": _ell_point(s1, 0, -1), "coccyx_tip": _cap_tip(coccyx)}


def _side(rng: np.random.Generator, side: str) -> tuple[dict[str, list[Prim]], dict[str, tuple]]:
    """One hip bone and proximal femur, built on the image-right (patient-left) side."""
    j = lambda s: rng.normal(0.0, s)
    g = lambda s: 1.0 + rng.normal(0.0, s)
    ilium = ("e", 86 + j(3), -80 + j(3), 60 * g(0.06), 40 * g(0.06), math.radians(-40 + j(4)), 2)
    ilium_body = ("c", 80 + j(2), -60 + j(2), 92 + j(2), -16 + j(2), 30 * g(0.06), 22 * g(0.06))
    acet = ("e", 92 + j(2), -14 + j(2), 28 * g(0.05), 24 * g(0.05), math.radians(-15 + j(5)), 2)
    sup_ramus = ("c", 80 + j(2), 10 + j(2), 22 + j(2), 32 + j(2), 12 * g(0.08), 9 * g(0.08))
    pubis = ("e", 17 + j(1.5), 44 + j(2), 12 * g(0.08), 16 * g(0.08), math.radians(j(5)), 8)
    inf_ramus = ("c", 18.0, 50.0, 60 + j(3), 82 + j(3), 8 * g(0.1), 9 * g(0.1))
    ischium = ("c", 86 + j(2), 14 + j(2), 68 + j(3), 84 + j(3), 15 * g(0.06), 11 * g(0.08))
    hx, hy = 90 + j(2), 0 + j(2)  # femoral head centre, the pivot of the femur
    r_head = 23 * g(0.05)
    head = ("e", hx, hy, r_head, r_head, 0.0, 2)
    neck = ("c", hx, hy, hx + 36 * g(0.08), hy + 24 * g(0.1), 15 * g(0.06), 17 * g(0.06))
    gt_c = (hx + 50 * g(0.05), hy + 16 + j(3))
    gt = ("e", *gt_c, 21 * g(0.08), 14 * g(0.08), math.radians(-100 + j(6)), 2)
    shaft = ("c", hx + 42 + j(2), hy + 30, hx + 14 + j(5), hy + 280, 15 * g(0.05), 13 * g(0.05))
    lt = ("e", hx + 24 + j(2), hy + 62 + j(4), 15 * g(0.1), 8 * g(0.1), math.radians(155 + j(8)), 2)
    # Abduction/adduction of the femur about its head moves the trochanters.
    rot = affine.rotate(math.radians(j(4)), center=(hx, hy))
    femur = [_transform(p, rot) for p in (head, neck, gt, shaft, lt)]
    hip = [ilium, ilium_body, acet, sup_ramus, pubis, inf_ramus, ischium]
    pts = {
        "iliac_crest": _ell_point(ilium, 1, 0),
        "acetabulum_lateral": _ell_point(acet, 1, 0),
        "pubic_tubercle": _ell_point(pubis, -1, -1),
        "ischial_tuberosity": _cap_tip(ischium),
        "femoral_head": femur[0][1:3],
        "greater_trochanter": _ell_point(femur[2], 1, 0),
        "lesser_trochanter": _ell_point(femur[4], 1, 0),
    }
    sign = 1.0 if side == "left" else -1.0
    mirror = np.diag([sign, 1.0, 1.0])
    bones = {f"hip_bone_{side}": hip, f"femur_{side}": femur}
    return (
        {name: [_transform(p, mirror) for p in prims] for name, prims in bones.items()},
        {f"{name}_{side}": (sign * x, y) for name, (x, y) in pts.items()},
    )


def _bbox(p: Prim, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Row/column bounds `(r0, r1, c0, c1)` of the pixels a primitive may cover."""
    if p[0] == "e":
        cx, cy, r = p[1], p[2], math.hypot(p[3], p[4]) if p[6] > 2 else max(p[3], p[4])
    else:
        cx, cy = (p[1] + p[3]) / 2, (p[2] + p[4]) / 2
        r = math.hypot(p[3] - p[1], p[4] - p[2]) / 2 + max(p[5], p[6])
    h, w = shape
    r0, r1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
    c0, c1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
    return r0, max(r0, r1), c0, max(c0, c1)


def _depth(p: Prim, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """`1 - rho^2`, rho the normalised radius: 1 on the axis, 0 on the outline."""
    if p[0] == "e":
        dx, dy = xs - np.float32(p[1]), ys - np.float32(p[2])
        c, s = np.float32(math.cos(p[5])), np.float32(math.sin(p[5]))
        qu = np.square((dx * c + dy * s) * np.float32(1 / p[3]))
        qv = np.square((dy * c - dx * s) * np.float32(1 / p[4]))
        if p[6] == 2:
            return 1 - (qu + qv)
        rho2 = np.square(qu) + np.square(qv)  # p = 4: rho^2 = sqrt(qu^2 + qv^2)
        if p[6] == 8:
            rho2 = np.sqrt(np.square(np.square(qu)) + np.square(np.square(qv)))
        return 1 - np.sqrt(rho2)
    x0, y0, x1, y1, r0, r1 = (np.float32(v) for v in p[1:])
    ax, ay = x1 - x0, y1 - y0
    dx, dy = xs - x0, ys - y0
    t = np.clip((dx * ax + dy * ay) * (1 / (ax * ax + ay * ay)), 0, 1)
    r = r0 + t * (r1 - r0)
    return 1 - (np.square(dx - t * ax) + np.square(dy - t * ay)) / np.square(r)


def _union_depth(prims: Sequence[Prim], shape: tuple[int, int]):
    """Max depth over primitives inside their joint bounding box, and that box."""
    boxes = [_bbox(p, shape) for p in prims]
    r0, r1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    c0, c1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    d = np.full((max(r1 - r0, 0), max(c1 - c0, 0)), -1.0, np.float32)
    for p, (a0, a1, b0, b1) in zip(prims, boxes, strict=True):
        if a1 > a0 and b1 > b0:
            ys = np.arange(a0, a1, dtype=np.float32)[:, None]
            xs = np.arange(b0, b1, dtype=np.float32)[None, :]
            view = d[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
            np.maximum(view, _depth(p, ys, xs), out=view)
    return d, (slice(r0, r1), slice(c0, c1))


def _anatomy(rng: np.random.Generator) -> tuple[dict[str, list[Prim]], np.ndarray]:
    """Bones by region name, and the `[K, 2]` landmarks, in canonical millimetres."""
    bones, pts = _sacrum(rng)
    for side in ("right", "left"):
        b, p = _side(rng, side)
        bones.update(b)
        pts.update(p)
    return bones, np.array([pts[n] for n in _NAMES])


def _attenuation(rng: np.random.Generator, bones: dict, m: np.ndarray, shape: tuple[int, int]):
    """Line integrals of attenuation `[H, W]` and the region label map, in pixels."""
    h, w = shape
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    # Soft tissue: abdomen and two thighs, with air beside the body and between thighs.
    soft = [("e", 0.0, -60.0, 180 * (1 + rng.normal(0, 0.06)), 230.0, 0.0, 2)]
    soft += [("c", s * 95.0, 40.0, s * 105.0, 420.0, 88.0, 75.0) for s in (-1, 1)]
    depth = np.max([_depth(_transform(p, m), ys, xs) for p in soft], axis=0)
    atten = np.sqrt(np.maximum(depth, 0)) * np.float32(rng.uniform(0.8, 1.3))
    # Bowel gas: darker blobs over the sacrum and iliac wings, as distractors.
    for _ in range(rng.integers(3, 12)):
        gas = ("e", *rng.uniform((-90, -160, 6, 6, 0), (90, -30, 22, 22, 3.2)), 2)
        d, win = _union_depth([_transform(gas, m)], shape)
        atten[win] -= np.float32(rng.uniform(0.05, 0.25)) * np.sqrt(np.maximum(d, 0))
    # scipy loads here, not at import: importing this module registers the format.
    from scipy import ndimage

    # Trabecular texture: band-limited noise that modulates marrow density.
    tex = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    tex = 1 + np.float32(rng.uniform(0.4, 0.9)) * tex
    mask = np.zeros(shape, np.int32)
    for r, name in enumerate(REGION_NAMES):
        d, win = _union_depth([_transform(p, m) for p in bones[name]], shape)
        # A solid with a cortical shell of relative thickness t: sqrt(D) is the full
        # chord, sqrt(D - c) the marrow chord, so the cortex shows as a bright rim.
        c = np.float32(1 - (1 - rng.uniform(0.1, 0.2)) ** 2)
        outer, inner = np.sqrt(np.maximum(d, 0)), np.sqrt(np.maximum(d - c, 0))
        dens = np.float32(rng.uniform(1.2, 1.6) * (0.7 if name in ("sacrum", "vertebra_l5") else 1))
        atten[win] += dens * ((outer - inner) + np.float32(0.35) * inner * tex[win])
        mask[win][d > 0] = r + 1
    return atten, mask


def _expose(rng: np.random.Generator, atten: np.ndarray) -> np.ndarray:
    """Detector image in [0, 4095]: heel effect, blur, quantum noise, log, window, gamma."""
    from scipy import ndimage

    h, w = atten.shape
    ang = rng.uniform(0, 2 * math.pi)
    ys, xs = np.ogrid[:h, :w]
    ramp = (xs / w - 0.5) * math.cos(ang) + (ys / h - 0.5) * math.sin(ang)
    heel = 1 + np.float32(rng.uniform(0, 0.3)) * ramp.astype(np.float32)
    n0 = np.float32(10 ** rng.uniform(2.8, 3.8))  # photons per pixel without the body
    counts = ndimage.gaussian_filter(n0 * heel * np.exp(-atten), rng.uniform(0.4, 1.3))
    # Poisson noise, Gaussian approximation: variance equals the count.
    counts += np.sqrt(counts) * rng.standard_normal((h, w), dtype=np.float32)
    value = np.log(n0) - np.log(np.maximum(counts, 1))
    lo, hi = rng.uniform(-0.4, 0.1), rng.uniform(3.2, 4.2)
    image = np.clip((value - lo) / (hi - lo), 0, 1) ** np.float32(rng.uniform(0.7, 1.4))
    return np.round(image * MAX_VALUE).astype(np.float32)


def render_phantom(
    seed: int, index: int, *, image_size: tuple[int, int] = (256, 256), missing_rate: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Spacing]:
    """Renders phantom `index` of `seed`.

    Args:
      seed: dataset seed.
      index: image index; with `seed` it fully determines the output.
      image_size: `(H, W)` in pixels.
      missing_rate: probability that one landmark of the image is dropped.

    Returns:
      image: float32 `[H, W]` in [0, 4095], bone bright.
      landmarks: float32 `[K, 2]` (x, y) pixels; NaN where missing or out of frame.
      region_mask: int32 `[H, W]`; 0 background, `r + 1` for `REGION_NAMES[r]`.
      spacing: `(row_mm, col_mm)`, square pixels.
    """
    rng = np.random.default_rng([seed, index])
    h, w = image_size
    bones, pts = _anatomy(rng)
    # Pose: detector spacing, patient size, rotation and position on the detector.
    spacing = _FOV_MM / min(h, w) * (1 + rng.uniform(-0.05, 0.05))
    k = (1 + rng.uniform(-0.15, 0.15)) / spacing
    shift = rng.normal(0, 0.03, 2) * (w, h)
    m = affine.compose(
        affine.translate(rng.normal(0, 6), 15 + rng.normal(0, 8)),  # anatomy centre to origin
        affine.scale(k),
        affine.rotate(math.radians(rng.uniform(-15, 15))),
        affine.translate((w - 1) / 2 + shift[0], (h - 1) / 2 + shift[1]),
    )
    atten, mask = _attenuation(rng, bones, m, (h, w))
    image = _expose(rng, atten)
    # Landmarks out of frame are missing; sometimes one annotation is missing too.
    lms = affine.apply(pts, m)
    out = (lms < -0.5).any(axis=1) | (lms[:, 0] > w - 0.5) | (lms[:, 1] > h - 0.5)
    lms[out] = np.nan
    drop, k_drop = rng.random(), rng.integers(len(_NAMES))  # drawn always: stable stream
    if drop < missing_rate:
        lms[k_drop] = np.nan
    return image, lms, mask, (float(spacing), float(spacing))


def block_splits(n: int, splits: Sequence[tuple[str, float]], who: str) -> list[str]:
    """The split name of each of `n` records: consecutive blocks of `round(n * f)`
    records in order, the last split the rest."""
    fracs = np.array([f for _, f in splits], np.float64)
    if n < 0 or not splits or (fracs < 0).any() or abs(fracs.sum() - 1) > 1e-6:
        raise ValueError(f"{who}: need n >= 0 and fractions summing to 1, got {splits}")
    bounds = np.round(np.cumsum(fracs) * n).astype(int)
    bounds[-1] = n
    return [splits[int(np.searchsorted(bounds, i, side="right"))][0] for i in range(n)]


def phantom_dataset(
    n: int = 200,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = (256, 256),
    splits: Sequence[tuple[str, float]] = (("train", 0.7), ("val", 0.15), ("test", 0.15)),
    missing_rate: float = 0.05,
) -> Dataset:
    """`n` phantoms held in memory, split in consecutive blocks by the given fractions.

    Record `i` is `render_phantom(seed, i)`; the splits take the first
    `round(n * f)` records in order, the last split the rest.
    """
    names = block_splits(n, splits, "phantom_dataset")
    records = []
    for i in range(n):
        image, lms, mask, sp = render_phantom(
            seed, i, image_size=image_size, missing_rate=missing_rate
        )
        split = names[i]
        meta = {"name": f"phantom_{i:04d}", "seed": seed, "index": i}
        # visible=None: Record derives it from the NaNs, the one source of truth here.
        records.append(Record(image, lms, None, sp, SPACING_SOURCE, mask, split=split, meta=meta))
    return Dataset(landmark_set=PHANTOM_LANDMARKS, records=records, name="phantom")


def _read(path, options) -> Dataset:
    del path  # made, not read
    return phantom_dataset(options.phantom_size, seed=options.seed)


register_format(
    "phantom",
    read=_read,
    detect=None,
    description="procedural pelvis radiographs held in memory (no files)",
    layout=None,
)
