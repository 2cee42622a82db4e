"""Which measurements a landmark set supports: `definitions_for(landmark_set)`.

Every family of measurements names its landmarks canonically (ISBI 2015 names for
the cephalometric ones, "knee_centre_right" for CPAK, ...). A landmark set gets every
measurement whose landmarks it has, after translating canonical names to its own:
by the caller's `name_map`, by the set's own names, then by known aliases
(ISBI-ordered "l1".."l19" as in the Hamedan LabelMe files; the phantom's pelvis
names; S/M/G for YEN). A measurement with any landmark the set lacks is left out,
never computed from a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
from lmjax.data.phantom import PHANTOM_LANDMARKS
from lmjax.data.types import LandmarkSet
from lmjax.measurements.base import MeasurementDef
from lmjax.measurements.cephalometric import isbi2015_definitions
from lmjax.measurements.cpak import ROLES as CPAK_ROLES
from lmjax.measurements.cpak import cpak_definitions
from lmjax.measurements.hip import hip_definitions
from lmjax.measurements.yen import MAXILLA, SELLA, SYMPHYSIS, yen_definition

SIDES = ("right", "left")
HIP_LANDMARKS = ("femoral_head_centre", "sourcil_lateral", "sourcil_medial", "teardrop")


def numbered_isbi_names(prefix: str = "l") -> dict[str, str]:
    """Canonical ISBI name -> f"{prefix}{i}", i = 1..19 in the ISBI order."""
    return {name: f"{prefix}{i + 1}" for i, name in enumerate(ISBI2015_LANDMARKS.names)}


# Canonical name -> candidate names in other sets, tried in order.
ALIASES: dict[str, tuple[str, ...]] = {c: (a, a.upper()) for c, a in numbered_isbi_names().items()}
for _canonical, _alias in (
    (SELLA, "S"),  # sella is both an ISBI landmark ("l1") and YEN's S
    (MAXILLA, "M"),
    (SYMPHYSIS, "G"),
    # The phantom's lateral edge of the acetabular roof is the lateral end of the sourcil.
    *((f"femoral_head_centre_{s}", f"femoral_head_{s}") for s in SIDES),
    *((f"sourcil_lateral_{s}", f"acetabulum_lateral_{s}") for s in SIDES),
):
    ALIASES[_canonical] = ALIASES.get(_canonical, ()) + (_alias,)

# Landmark sets known by name, for callers that hold only the name.
KNOWN_SETS: dict[str, Callable[[], LandmarkSet]] = {
    "isbi2015": lambda: ISBI2015_LANDMARKS,
    "phantom": lambda: PHANTOM_LANDMARKS,
    "hamedan": lambda: LandmarkSet.numbered("hamedan", 19, prefix="l"),
}


def as_landmark_set(landmark_set: LandmarkSet | str) -> LandmarkSet:
    """The set itself, or the known set of that name."""
    if isinstance(landmark_set, LandmarkSet):
        return landmark_set
    if landmark_set not in KNOWN_SETS:
        raise KeyError(
            f"unknown landmark set {landmark_set!r}; known: {sorted(KNOWN_SETS)} "
            "(or pass a LandmarkSet)"
        )
    return KNOWN_SETS[landmark_set]()


def _resolver(names: tuple[str, ...], name_map: Mapping[str, str]) -> Callable[[str], str]:
    present = set(names)

    def resolve(canonical: str) -> str:
        if canonical in name_map:
            return name_map[canonical]
        if canonical in present:
            return canonical
        for alias in ALIASES.get(canonical, ()):
            if alias in present:
                return alias
        return canonical  # absent: the measurements needing it are filtered out

    return resolve


def definitions_for(
    landmark_set: LandmarkSet | str,
    name_map: Mapping[str, str] | None = None,
    *,
    hip_reference: str = "auto",
) -> list[MeasurementDef]:
    """Every measurement the landmark set has the landmarks for.

    Args:
      landmark_set: a `LandmarkSet`, or the name of a known one ("isbi2015",
        "phantom", "hamedan").
      name_map: canonical landmark name -> the set's name, for sets whose names
        neither match nor have a known alias.
      hip_reference: "teardrop", "heads", or "auto" (teardrops when the set has
        both, else the femoral head centres).

    Returns:
      Definitions in a fixed order: ISBI 2015, YEN, CPAK and hip (right, then left).
    """
    lset = as_landmark_set(landmark_set)
    resolve = _resolver(lset.names, dict(name_map or {}))
    defs = isbi2015_definitions({c: resolve(c) for c in ISBI2015_LANDMARKS.names})
    defs.append(yen_definition(resolve(SELLA), resolve(MAXILLA), resolve(SYMPHYSIS)))
    for side in SIDES:
        defs += cpak_definitions(side, {r: resolve(f"{r}_{side}") for r in CPAK_ROLES})
    present = set(lset.names)
    ref = hip_reference
    if ref == "auto":
        tears = {resolve(f"teardrop_{s}") for s in SIDES}
        ref = "teardrop" if tears <= present else "heads"
    for side in SIDES:
        hip_names = {f"{x}_{s}": resolve(f"{x}_{s}") for x in HIP_LANDMARKS for s in SIDES}
        defs += hip_definitions(side, reference=ref, names=hip_names)
    return [d for d in defs if set(d.points.values()) <= present]
