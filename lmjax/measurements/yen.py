"""The YEN angle and the sagittal (occlusion) class it gives.

Source: the cephalogram paper (shared/papers/001, section 4.3, equation 5): the
angle at M between M->S and M->G, where S is sella, M the midpoint of the anterior
maxilla and G the centre of the largest circle inside the symphysis at gnathion
(the YEN angle of Neela et al. 2009: the centre of the symphysis). Classes, from the same
section: Class I for 117 to 123 degrees (both ends inclusive here, "between 117
and 123"), Class II below 117 (prominent maxilla), Class III above 123 (prominent
mandible).

ISBI 2015 has neither M nor G, and the paper gives no approximation from other
landmarks, so no YEN is defined on ISBI 2015: substituting subspinale or gnathion
would be a different angle with the same thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lmjax.measurements import geometry as g
from lmjax.measurements.base import FnResult, MeasurementDef, three_classes

REFERENCE = (
    "Cephalogram paper (shared/papers/001), section 4.3, eq. (5) and its three classes; "
    "Neela PK et al., World J Orthod 2009 (the YEN angle)"
)
# Canonical landmark names of the three roles.
SELLA, MAXILLA, SYMPHYSIS = "sella", "anterior_maxilla_midpoint", "symphysis_centre"
YEN_CLASSES = three_classes(
    "I", "II", "III", 117.0, 123.0, ("normal occlusion", "prominent maxilla", "prominent mandible")
)


def yen(p: Mapping[str, np.ndarray]) -> FnResult:
    """Angle S-M-G in degrees, in [0, 180]; collinear points give 0 or 180, not a gap."""
    r = g.Reasons(len(p["S"]))
    ms, mg = p["S"] - p["M"], p["G"] - p["M"]
    r.require(g.nonzero(ms), "degenerate geometry: S and M coincide")
    r.require(g.nonzero(mg), "degenerate geometry: G and M coincide")
    return r.finish(g.angle_between(ms, mg))


def yen_definition(
    sella: str = SELLA, maxilla: str = MAXILLA, symphysis: str = SYMPHYSIS, name: str = "YEN"
) -> MeasurementDef:
    """YEN on any landmark set that has S, M and G; pass the set's names for them."""
    return MeasurementDef(
        name=name,
        unit="deg",
        points={"S": sella, "M": maxilla, "G": symphysis},
        fn=yen,
        classes=YEN_CLASSES,
        reference=REFERENCE,
        description="angle at M between M->S and M->G",
    )
