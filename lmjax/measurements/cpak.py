"""Knee alignment on full-leg radiographs: mLDFA, mMPTA, aHKA, JLO and the CPAK type.

Source: the lower-limb paper (shared/papers/002, sections I-A and II-A; eight
landmarks per leg): mLDFA is the lateral angle between the femoral mechanical
axis (femoral head centre -> knee centre) and the tangent to the femoral condyles;
mMPTA the medial angle between the tibial mechanical axis (ankle midpoint -> knee
centre) and the tangent to the tibial plateaus; aHKA = MPTA - LDFA (eq. 1),
JLO = MPTA + LDFA (eq. 2). Neutral aHKA is -2 <= aHKA <= 2, varus below, valgus
above; neutral JLO is 177 <= JLO <= 183, apex distal below, apex proximal above
(the paper states the inequalities). The nine types follow MacDessi et al., Bone
Joint J 2021 (the paper's ref. 12): rows by JLO (apex distal, neutral, apex
proximal), columns by aHKA (varus, neutral, valgus):

    apex distal    I    II    III
    neutral        IV   V     VI
    apex proximal  VII  VIII  IX

Medial and lateral are anatomical: each leg's condyle and plateau points are named
medial/lateral, so the angles are the same on a mirrored image and the side only
names the leg. Sets that label points by image side map them with `image_sides`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lmjax.measurements import geometry as g
from lmjax.measurements.base import FnResult, MeasurementDef, three_classes

REFERENCE = (
    "Lower-limb paper (shared/papers/002), sections I-A and II-A, eqs. (1)-(2); "
    "MacDessi SJ et al., Bone Joint J 103-B(2) (2021) 329-337 (CPAK types)"
)
ROLES = (
    "femoral_head",
    "femoral_condyle_medial",
    "femoral_condyle_lateral",
    "tibial_plateau_medial",
    "tibial_plateau_lateral",
    "knee_centre",
    "ankle_medial",
    "ankle_lateral",
)
AHKA_CLASSES = three_classes("neutral", "varus", "valgus", -2.0, 2.0)
JLO_CLASSES = three_classes("neutral", "apex_distal", "apex_proximal", 177.0, 183.0)
CPAK_TYPES = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")
_COLUMNS = {"varus": 0, "neutral": 1, "valgus": 2}
_ROWS = {"apex_distal": 0, "neutral": 1, "apex_proximal": 2}


def _ldfa(p: Mapping[str, np.ndarray], r: g.Reasons) -> np.ndarray:
    axis = p["femoral_head"] - p["knee_centre"]  # from the knee up the femur
    joint = p["femoral_condyle_lateral"] - p["femoral_condyle_medial"]  # towards lateral
    r.require(g.nonzero(axis), "degenerate geometry: zero-length femoral mechanical axis")
    r.require(g.nonzero(joint), "degenerate geometry: femoral condyle points coincide")
    return g.angle_between(axis, joint)


def _mpta(p: Mapping[str, np.ndarray], r: g.Reasons) -> np.ndarray:
    ankle = 0.5 * (p["ankle_medial"] + p["ankle_lateral"])
    axis = ankle - p["knee_centre"]  # from the knee down the tibia
    joint = p["tibial_plateau_medial"] - p["tibial_plateau_lateral"]  # towards medial
    r.require(g.nonzero(axis), "degenerate geometry: zero-length tibial mechanical axis")
    r.require(g.nonzero(joint), "degenerate geometry: tibial plateau points coincide")
    return g.angle_between(axis, joint)


def mldfa(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p["knee_centre"]))
    return r.finish(_ldfa(p, r))


def mmpta(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p["knee_centre"]))
    return r.finish(_mpta(p, r))


def ahka(p: Mapping[str, np.ndarray]) -> FnResult:
    """Arithmetic HKA = MPTA - LDFA; negative is varus."""
    r = g.Reasons(len(p["knee_centre"]))
    return r.finish(_mpta(p, r) - _ldfa(p, r))


def jlo(p: Mapping[str, np.ndarray]) -> FnResult:
    """Joint line obliquity = MPTA + LDFA; below 180 the joint line's apex is distal."""
    r = g.Reasons(len(p["knee_centre"]))
    return r.finish(_mpta(p, r) + _ldfa(p, r))


def cpak_type(ahka_deg: np.ndarray, jlo_deg: np.ndarray) -> np.ndarray:
    """CPAK type number 1..9 (float, NaN where either angle is missing)."""
    cols = AHKA_CLASSES.classify(ahka_deg)
    rows = JLO_CLASSES.classify(jlo_deg)
    out = np.full(np.shape(ahka_deg), np.nan)
    for i, (c, r) in enumerate(zip(cols, rows, strict=True)):
        if c is not None and r is not None:
            out[i] = 3 * _ROWS[r] + _COLUMNS[c] + 1
    return out


def cpak(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p["knee_centre"]))
    mpta, ldfa = _mpta(p, r), _ldfa(p, r)
    return r.finish(cpak_type(mpta - ldfa, mpta + ldfa))


class CpakClasses:
    """Type number 1..9 -> "I".."IX"."""

    labels = CPAK_TYPES

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = np.full(np.shape(values), None, dtype=object)
        ok = np.isfinite(values)
        out[ok] = [CPAK_TYPES[int(v) - 1] for v in np.asarray(values)[ok]]
        return out


def image_sides(side: str, *, radiological: bool = True) -> dict[str, str]:
    """Which image side is medial and which lateral for the patient's `side` leg.

    In the radiological convention (AP view displayed as facing the patient) the
    patient's right is on the image left, so the right leg's lateral side is the
    image left. Returns {"medial": "left"|"right", "lateral": ...} in image sides.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    lateral_on_image_left = (side == "right") == radiological
    lat = "left" if lateral_on_image_left else "right"
    return {"lateral": lat, "medial": "right" if lat == "left" else "left"}


def cpak_definitions(side: str, names: Mapping[str, str] | None = None) -> list[MeasurementDef]:
    """mLDFA, mMPTA, aHKA, JLO and CPAK of the patient's `side` leg.

    Args:
      side: "left" or "right" (the patient's side); it suffixes the measurement names
        and, by default, the landmark names ("knee_centre_right", ...).
      names: role (see `ROLES`) -> the landmark name in the set, overriding
        f"{role}_{side}".
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    names = dict(names or {})
    points = {role: names.get(role, f"{role}_{side}") for role in ROLES}
    femur, tibia = ROLES[:3] + ROLES[5:6], ROLES[3:]  # a missing ankle spares the LDFA
    table = (
        ("mLDFA", "deg", femur, mldfa, None, "lateral distal femoral angle (mechanical)"),
        ("mMPTA", "deg", tibia, mmpta, None, "medial proximal tibial angle (mechanical)"),
        ("aHKA", "deg", ROLES, ahka, AHKA_CLASSES, "arithmetic hip-knee-ankle angle MPTA - LDFA"),
        ("JLO", "deg", ROLES, jlo, JLO_CLASSES, "joint line obliquity MPTA + LDFA"),
        ("CPAK", "type", ROLES, cpak, CpakClasses(), "CPAK type 1..9 (I..IX)"),
    )
    return [
        MeasurementDef(
            f"{name}_{side}",
            unit,
            {role: points[role] for role in roles},
            fn,
            cls,
            REFERENCE,
            f"{desc}, {side} leg",
        )
        for name, unit, roles, fn, cls, desc in table
    ]
