"""Hip coverage on AP pelvis radiographs: lateral centre-edge angle and acetabular index.

Source: the pelvis paper (shared/papers/000, Fig. 1, after Mitterer et al. 2022)
names the two parameters and their landmarks (medial and lateral sourcil, centre of
hip rotation); the definitions are the classical ones:

  * LCE, lateral centre-edge angle (Wiberg 1939): between the line from the femoral
    head centre perpendicular to the horizontal reference (pointing cranially) and
    the line from the head centre to the lateral edge of the sourcil. Positive when
    the edge lies lateral of the perpendicular (the head is covered), negative when
    medial of it.
  * AI, acetabular index (Tönnis): between the horizontal reference and the line
    from the medial to the lateral end of the sourcil. Positive when the lateral end
    lies cranial of the medial end (the roof rises laterally, steep in dysplasia),
    negative when it falls.

The horizontal reference is the inter-teardrop line or the line through both head
centres. Lateral, for each hip, points from the other side's reference point to
this side's, so both hips read alike on a mirrored image. Cranial is the normal of
the reference pointing up the image (radiographs are displayed head up); a
reference closer to vertical than to horizontal leaves it undefined and the angles
missing. No classes: the papers at hand give no thresholds for them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lmjax.measurements import geometry as g
from lmjax.measurements.base import FnResult, MeasurementDef

REFERENCE = (
    "Pelvis paper (shared/papers/000), Fig. 1 (after Mitterer et al. 2022); "
    "LCE: Wiberg 1939; AI: Tönnis 1976"
)
REFERENCES = ("teardrop", "heads")


def _frame(p: Mapping[str, np.ndarray], r: g.Reasons) -> tuple[np.ndarray, np.ndarray]:
    """Unit lateral and cranial directions `[N, 2]` from the horizontal reference."""
    across = p["ref_ipsi"] - p["ref_contra"]
    r.require(g.nonzero(across), "degenerate geometry: horizontal reference points coincide")
    lat = g.unit(across)
    r.require(
        np.abs(lat[:, 0]) > np.abs(lat[:, 1]),
        "degenerate geometry: horizontal reference is closer to vertical than horizontal",
    )
    n = np.stack([lat[:, 1], -lat[:, 0]], axis=-1)  # one of the two normals
    cranial = np.where((n[:, 1] < 0)[:, None], n, -n)  # y points down: up is negative y
    return lat, cranial


def lce(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p["head"]))
    lat, cranial = _frame(p, r)
    d = p["sourcil_lateral"] - p["head"]
    r.require(g.nonzero(d), "degenerate geometry: lateral sourcil and head centre coincide")
    return r.finish(np.degrees(np.arctan2(g.dot(d, lat), g.dot(d, cranial))))


def acetabular_index(p: Mapping[str, np.ndarray]) -> FnResult:
    r = g.Reasons(len(p["sourcil_lateral"]))
    lat, cranial = _frame(p, r)
    e = p["sourcil_lateral"] - p["sourcil_medial"]
    r.require(g.nonzero(e), "degenerate geometry: medial and lateral sourcil coincide")
    return r.finish(np.degrees(np.arctan2(g.dot(e, cranial), g.dot(e, lat))))


def hip_definitions(
    side: str,
    *,
    reference: str = "teardrop",
    names: Mapping[str, str] | None = None,
    include: tuple[str, ...] = ("LCE", "AI"),
) -> list[MeasurementDef]:
    """LCE and AI of the patient's `side` hip.

    Args:
      side: "left" or "right" (the patient's side).
      reference: "teardrop" (inter-teardrop line) or "heads" (line through both
        femoral head centres).
      names: canonical landmark name -> name in the set. Canonical names are
        f"{x}_{side}" for x in femoral_head_centre, sourcil_lateral, sourcil_medial,
        teardrop (the other side's with the other suffix).
      include: which of "LCE" and "AI" to return.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    names = dict(names or {})
    other = "left" if side == "right" else "right"
    ref = "femoral_head_centre" if reference == "heads" else "teardrop"

    def nm(x: str, s: str = side) -> str:
        return names.get(f"{x}_{s}", f"{x}_{s}")

    frame = {"ref_ipsi": nm(ref), "ref_contra": nm(ref, other)}
    ref_text = "inter-teardrop line" if reference == "teardrop" else "line through head centres"
    out = []
    if "LCE" in include:
        pts = {"head": nm("femoral_head_centre"), "sourcil_lateral": nm("sourcil_lateral")}
        desc = f"lateral centre-edge angle (Wiberg), {side} hip, reference: {ref_text}"
        out.append(MeasurementDef(f"LCE_{side}", "deg", pts | frame, lce, None, REFERENCE, desc))
    if "AI" in include:
        pts = {"sourcil_medial": nm("sourcil_medial"), "sourcil_lateral": nm("sourcil_lateral")}
        desc = f"acetabular index (Tönnis), {side} hip, reference: {ref_text}"
        out.append(
            MeasurementDef(
                f"AI_{side}", "deg", pts | frame, acetabular_index, None, REFERENCE, desc
            )
        )
    return out
