"""The eight measurements of the ISBI 2015 cephalometric challenge, with its classes.

Source of the definitions and thresholds: C.-W. Wang et al., "A benchmark for
comparison of dental radiography analysis algorithms", Medical Image Analysis 31
(2016) 63-76, Table 2 (the eight measurements of the classification task, defined
on landmarks L1..L19 and their types C1..C4). The table defines, with L numbers
as in `ISBI2015_LANDMARKS` (L1 sella ... L19 articulare):

    ANB   angle L5 L2 L6, used signed as SNA - SNB    C1 3.2-5.7   C2 > 5.7    C3 < 3.2
    SNB   angle L1 L2 L6                              C1 74.6-78.7 C2 < 74.6   C3 > 78.7
    SNA   angle L1 L2 L5                              C1 79.4-83.2 C2 > 83.2   C3 < 79.4
    ODI   angle(L5L6, L8L10) + angle(L17L18, L4L3)    C1 74.5 +- 6.07, i.e. 68.4-80.5;
                                                      C2 > 80.5    C3 < 68.4
    APDI  angle(L3L4, L2L7) + angle(L2L7, L5L6)
          + angle(L3L4, L17L18)                       C1 81.4 +- 3.8, i.e. 77.6-85.2;
                                                      C2 < 77.6    C3 > 85.2
    FHI   |L1L10| / |L2L8|                            C1 0.65-0.75 C2 > 0.75   C3 < 0.65
    FMA   angle(L1L2, L10L9)                          C1 26.8-31.4 C2 > 31.4   C3 < 26.8
    MW    |L12L11|, positive when x(L12) > x(L11)     C1 2-4.5 mm  C2 = 0 mm   C3 < 0 mm
                                                      C4 > 4.5 mm

Choices where the table leaves room (each repeated at its function):
  * Normal ranges are closed at both ends; the other classes are open.
  * The signed parts of ODI and APDI follow Kim's definitions (Kim 1974, 1978), which
    the challenge adopts: the palatal plane angle to FH is positive when the plane
    tilts down anteriorly, the AB-to-facial-plane angle negative when A lies ahead
    of B. "Anterior" is the side nasion lies on, seen from sella, so a mirrored
    cephalogram gives the same values.
  * FMA is, as the challenge table writes it, the angle between S-N (L1L2) and
    Go-Gn (L10L9), not Tweed's Frankfort-mandibular plane angle; the thresholds
    were set for the challenge's definition, so it is kept.
  * MW is the Euclidean incisor distance with the sign of the anteroposterior offset,
    as in the table (not a projection on the occlusal plane). The table's classes
    leave 0 < MW < 2 mm unassigned and name only MW = 0 edge to edge: here C2 is
    0 <= MW < 2 mm, the reduced overjet between normal and cross bite. Incisal tips
    without an anteroposterior offset give MW = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
from lmjax.measurements import geometry as g
from lmjax.measurements.base import ClassBins, FnResult, Interval, MeasurementDef, three_classes

REFERENCE = (
    "Wang C-W et al., A benchmark for comparison of dental radiography analysis "
    "algorithms, Medical Image Analysis 31 (2016) 63-76, Table 2"
)
REFERENCE_KIM = "Kim YH, Angle Orthod 1974 (ODI); Kim YH, Vietas JJ, Am J Orthod 1978 (APDI)"
_S, _N, _OR, _PO = "sella", "nasion", "orbitale", "porion"
_A, _B, _POG, _ME = "subspinale", "supramentale", "pogonion", "menton"
_GN, _GO, _LI, _UI = "gnathion", "gonion", "lower_incisal_incision", "upper_incisal_incision"
_PNS, _ANS = "posterior_nasal_spine", "anterior_nasal_spine"


def _facing(p: Mapping[str, np.ndarray], r: g.Reasons) -> np.ndarray:
    """+1 where the face looks to image right (nasion right of sella), -1 where left."""
    dx = p[_N][:, 0] - p[_S][:, 0]
    r.require(np.abs(dx) > g.EPS, "degenerate geometry: sella and nasion share a column")
    return np.sign(dx)


def _at_nasion(p: Mapping[str, np.ndarray], other: str, r: g.Reasons) -> np.ndarray:
    ns, no = p[_S] - p[_N], p[other] - p[_N]
    r.require(g.nonzero(ns), "degenerate geometry: sella and nasion coincide")
    r.require(g.nonzero(no), f"degenerate geometry: {other} and nasion coincide")
    return g.angle_between(ns, no)


def _palatal_tilt(p: Mapping[str, np.ndarray], facing: np.ndarray, r: g.Reasons) -> np.ndarray:
    """Palatal plane to FH (Kim): positive when PNS->ANS tilts down anteriorly."""
    fh, pp = p[_OR] - p[_PO], p[_ANS] - p[_PNS]
    r.require(g.nonzero(fh), "degenerate geometry: porion and orbitale coincide")
    r.require(g.nonzero(pp), "degenerate geometry: PNS and ANS coincide")
    # signed_angle is clockwise-positive on screen, i.e. downward for a face looking
    # right; a mirrored face turns the other way, hence the facing sign.
    return facing * g.signed_angle(fh, pp)


def sna(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p[_S]))
    return r.finish(_at_nasion(p, _A, r))


def snb(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p[_S]))
    return r.finish(_at_nasion(p, _B, r))


def anb(p: Mapping[str, np.ndarray]) -> FnResult:
    """SNA - SNB: signed, negative when B lies ahead of A (further from S-N)."""
    r = g.Reasons(len(p[_S]))
    return r.finish(_at_nasion(p, _A, r) - _at_nasion(p, _B, r))


def odi(p: Mapping[str, np.ndarray]) -> FnResult:
    """Overbite depth indicator: AB-plane to mandibular plane (Go-Me) + palatal tilt to FH."""
    r = g.Reasons(len(p[_S]))
    f = _facing(p, r)
    ab, mp = p[_A] - p[_B], p[_GO] - p[_ME]
    r.require(g.nonzero(ab), "degenerate geometry: A and B coincide")
    r.require(g.nonzero(mp), "degenerate geometry: gonion and menton coincide")
    return r.finish(g.angle_between(mp, ab) + _palatal_tilt(p, f, r))


def apdi(p: Mapping[str, np.ndarray]) -> FnResult:
    """Anteroposterior dysplasia indicator: facial angle + AB-facial angle + palatal tilt."""
    r = g.Reasons(len(p[_S]))
    f = _facing(p, r)
    fh_back, facial, ab = p[_PO] - p[_OR], p[_POG] - p[_N], p[_B] - p[_A]
    r.require(g.nonzero(fh_back), "degenerate geometry: porion and orbitale coincide")
    r.require(g.nonzero(facial), "degenerate geometry: nasion and pogonion coincide")
    r.require(g.nonzero(ab), "degenerate geometry: A and B coincide")
    facial_angle = g.angle_between(fh_back, facial)
    # A->B turning clockwise (face right) onto N->Pog means B lies behind A: negative.
    ab_facial = f * g.signed_angle(ab, facial)
    return r.finish(facial_angle + ab_facial + _palatal_tilt(p, f, r))


def fhi(p: Mapping[str, np.ndarray]) -> FnResult:
    """Facial height index: posterior (S-Go) over anterior (N-Me) face height."""
    r = g.Reasons(len(p[_S]))
    anterior = g.length(p[_ME] - p[_N])
    r.require(anterior > g.EPS, "degenerate geometry: nasion and menton coincide")
    return r.finish(g.length(p[_GO] - p[_S]) / np.where(anterior > g.EPS, anterior, 1.0))


def fma(p: Mapping[str, np.ndarray]) -> FnResult:
    """The challenge's FMA: angle between S->N and Go->Gn."""
    r = g.Reasons(len(p[_S]))
    sn, gogn = p[_N] - p[_S], p[_GN] - p[_GO]
    r.require(g.nonzero(sn), "degenerate geometry: sella and nasion coincide")
    r.require(g.nonzero(gogn), "degenerate geometry: gonion and gnathion coincide")
    return r.finish(g.angle_between(sn, gogn))


def mw(p: Mapping[str, np.ndarray]) -> FnResult:
    """Modified Wits: |UI - LI|, positive when the upper incisal tip is anterior."""
    r = g.Reasons(len(p[_S]))
    f = _facing(p, r)
    d = p[_UI] - p[_LI]
    ahead = f * d[:, 0]
    sign = np.where(np.abs(ahead) > g.EPS, np.sign(ahead), 0.0)
    return r.finish(sign * g.length(d))


_MANDIBLE = ("normal mandible", "retrognathic mandible", "prognathic mandible")
ANB_CLASSES = three_classes(
    "C1", "C3", "C2", 3.2, 5.7, ("skeletal Class I", "skeletal Class III", "skeletal Class II")
)
SNB_CLASSES = three_classes("C1", "C2", "C3", 74.6, 78.7, _MANDIBLE)
SNA_CLASSES = three_classes(
    "C1", "C3", "C2", 79.4, 83.2, ("normal maxilla", "retrognathic maxilla", "prognathic maxilla")
)
ODI_CLASSES = three_classes(
    "C1", "C3", "C2", 68.4, 80.5, ("normal", "open bite tendency", "deep bite tendency")
)
APDI_CLASSES = three_classes(
    "C1", "C2", "C3", 77.6, 85.2, ("normal", "Class II tendency", "Class III tendency")
)
FHI_CLASSES = three_classes(
    "C1", "C3", "C2", 0.65, 0.75, ("normal", "long face tendency", "short face tendency")
)
FMA_CLASSES = three_classes(
    "C1", "C3", "C2", 26.8, 31.4, ("normal", "low angle tendency", "high angle tendency")
)
MW_CLASSES = ClassBins(
    (
        Interval("C1", 2.0, 4.5, True, True, "normal"),
        Interval("C2", 0.0, 2.0, True, False, "edge to edge (0 <= MW < 2 mm, see module doc)"),
        Interval("C3", -math.inf, 0.0, False, False, "anterior cross bite"),
        Interval("C4", 4.5, math.inf, False, False, "large overjet"),
    )
)

# name, unit, roles, function, classes, what it measures
_TABLE = (
    ("ANB", "deg", (_S, _N, _A, _B), anb, ANB_CLASSES, "SNA - SNB"),
    ("SNB", "deg", (_S, _N, _B), snb, SNB_CLASSES, "angle S-N-B"),
    ("SNA", "deg", (_S, _N, _A), sna, SNA_CLASSES, "angle S-N-A"),
    (
        "ODI",
        "deg",
        (_S, _N, _A, _B, _ME, _GO, _PO, _OR, _PNS, _ANS),
        odi,
        ODI_CLASSES,
        "overbite depth indicator: AB-MP angle + PP-FH angle",
    ),
    (
        "APDI",
        "deg",
        (_S, _N, _A, _B, _POG, _PO, _OR, _PNS, _ANS),
        apdi,
        APDI_CLASSES,
        "anteroposterior dysplasia indicator: FH-NPog + NPog-AB + FH-PP angles",
    ),
    ("FHI", "ratio", (_S, _N, _ME, _GO), fhi, FHI_CLASSES, "facial height index S-Go / N-Me"),
    ("FMA", "deg", (_S, _N, _GO, _GN), fma, FMA_CLASSES, "angle between S-N and Go-Gn"),
    ("MW", "mm", (_S, _N, _LI, _UI), mw, MW_CLASSES, "modified Wits: signed incisor distance"),
)


def isbi2015_definitions(names: Mapping[str, str] | None = None) -> list[MeasurementDef]:
    """The eight challenge measurements.

    Args:
      names: canonical ISBI landmark name (as in `ISBI2015_LANDMARKS`) -> the name
        in the landmark set at hand, e.g. {"sella": "l1", ...}; None for the
        canonical names.
    """
    names = dict(names or {})
    unknown = set(names) - set(ISBI2015_LANDMARKS.names)
    if unknown:
        raise ValueError(f"not ISBI 2015 landmark names: {sorted(unknown)}")
    ref = REFERENCE
    return [
        MeasurementDef(
            name=name,
            unit=unit,
            points={role: names.get(role, role) for role in roles},
            fn=fn,
            classes=classes,
            reference=ref + ("; signs: " + REFERENCE_KIM if name in ("ODI", "APDI") else ""),
            description=desc,
        )
        for name, unit, roles, fn, classes, desc in _TABLE
    ]
