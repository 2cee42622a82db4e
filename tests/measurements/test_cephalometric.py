"""The ISBI 2015 measurements on hand-built cephalograms with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmjax.data.isbi2015 import ISBI2015_LANDMARKS
from lmjax.measurements.base import evaluate
from lmjax.measurements.cephalometric import isbi2015_definitions

NAMES = ISBI2015_LANDMARKS.names
DEFS = {d.name: d for d in isbi2015_definitions()}
SPACING = (0.1, 0.1)
# Senior annotation of ISBI image 001 (pixels), a realistic face looking right.
CASE_001 = np.array(
    [[835, 996], [1473, 1029], [1289, 1279], [604, 1228], [1375, 1654], [1386, 2019],
     [1333, 2200], [1263, 2272], [1305, 2252], [694, 1805], [1460, 1870], [1450, 1864],
     [1588, 1753], [1569, 2013], [1514, 1620], [1382, 2310], [944, 1506], [1436, 1569],
     [664, 1340]],
    np.float64,
)  # fmt: skip


def polar(center, r, deg):
    """A point at distance r and image angle deg (0 = +x, 90 = down) from center."""
    t = math.radians(deg)
    return (center[0] + r * math.cos(t), center[1] + r * math.sin(t))


def ceph(**points):
    lm = np.full((1, len(NAMES), 2), np.nan)
    for name, xy in points.items():
        lm[0, NAMES.index(name)] = xy
    return lm


def measure(name, lm, spacing=SPACING):
    ev = evaluate(DEFS[name], lm, NAMES, spacing)
    return ev.values[0], ev.classes[0], ev.reasons[0]


N0 = (1000.0, 1000.0)
S0 = polar(N0, 700, 180)  # sella straight behind nasion: S-N horizontal, face right


@pytest.mark.parametrize(
    "sna, snb, classes",
    [
        (82.0, 78.0, ("C1", "C1", "C1")),
        (80.0, 85.0, ("C1", "C3", "C3")),
        (86.0, 76.0, ("C2", "C1", "C2")),
    ],
)
def test_sna_snb_anb(sna, snb, classes):
    # A and B below nasion at the given angles from N->S (180 deg in the image).
    lm = ceph(
        sella=S0,
        nasion=N0,
        subspinale=polar(N0, 600, 180 - sna),
        supramentale=polar(N0, 900, 180 - snb),
    )
    got = [measure(n, lm) for n in ("SNA", "SNB", "ANB")]
    assert [v for v, _, _ in got] == pytest.approx([sna, snb, sna - snb])
    assert tuple(c for _, c, _ in got) == classes


def test_anb_is_negative_when_b_lies_ahead_of_a():
    lm = ceph(sella=S0, nasion=N0, subspinale=polar(N0, 600, 100), supramentale=polar(N0, 900, 95))
    value, cls, _ = measure("ANB", lm)
    assert value == pytest.approx(-5.0) and cls == "C3"


def _odi_case(alpha, beta):
    """AB vertical, Me->Go at alpha from B->A, palatal plane tilted beta (down positive)."""
    b = (1350.0, 2000.0)
    me = (1300.0, 2250.0)
    pns = (950.0, 1500.0)
    return ceph(
        sella=S0, nasion=N0, porion=(600.0, 1250.0), orbitale=(1300.0, 1250.0),
        subspinale=(b[0], b[1] - 300), supramentale=b, menton=me,
        gonion=polar(me, 600, -90 - alpha), posterior_nasal_spine=pns,
        anterior_nasal_spine=polar(pns, 500, beta),
    )  # fmt: skip


@pytest.mark.parametrize(
    "alpha, beta, cls", [(75, 3, "C1"), (75, -10, "C3"), (78, 4, "C2"), (70, -1.6, "C1")]
)
def test_odi(alpha, beta, cls):
    value, got_cls, reason = measure("ODI", _odi_case(alpha, beta))
    assert value == pytest.approx(alpha + beta) and got_cls == cls and reason is None


def _apdi_case(facial, delta, beta):
    """Facial angle `facial`, AB `delta` off the facial plane (B ahead positive), PP tilt beta."""
    n = (1450.0, 1000.0)
    a = (1400.0, 1650.0)
    pns = (950.0, 1500.0)
    return ceph(
        sella=(800.0, 1000.0), nasion=n, porion=(600.0, 1250.0), orbitale=(1300.0, 1250.0),
        pogonion=polar(n, 1200, 180 - facial), subspinale=a,
        supramentale=polar(a, 350, 180 - facial - delta),
        posterior_nasal_spine=pns, anterior_nasal_spine=polar(pns, 500, beta),
    )  # fmt: skip


@pytest.mark.parametrize(
    "facial, delta, beta, cls",
    [(87, -5, 2, "C1"), (84, -9, 1, "C2"), (92, 3, -1, "C3"), (88, 0, 0, "C3")],
)
def test_apdi(facial, delta, beta, cls):
    value, got_cls, _ = measure("APDI", _apdi_case(facial, delta, beta))
    assert value == pytest.approx(facial + delta + beta) and got_cls == cls


def test_fhi_fma_mw():
    go = (700.0, 1700.0)
    lm = ceph(
        sella=(700.0, 1000.0), nasion=(1400.0, 1000.0), gonion=go, menton=(1400.0, 2000.0),
        gnathion=polar(go, 500, 30), upper_incisal_incision=(1450.0, 1860.0),
        lower_incisal_incision=(1420.0, 1900.0),
    )  # fmt: skip
    assert measure("FHI", lm)[:2] == (pytest.approx(0.7), "C1")  # 700 / 1000
    assert measure("FMA", lm)[:2] == (pytest.approx(30.0), "C1")
    assert measure("MW", lm)[:2] == (pytest.approx(5.0), "C4")  # 50 px at 0.1 mm, upper ahead


@pytest.mark.parametrize(
    "upper, value, cls",
    [((1390.0, 1860.0), -5.0, "C3"), ((1420.0, 1860.0), 0.0, "C2"), ((1432.0, 1884.0), 2.0, "C1"),
     ((1435.0, 1880.0), 2.5, "C1"), ((1426.0, 1892.0), 1.0, "C2")],
)  # fmt: skip
def test_mw_sign_and_classes(upper, value, cls):
    lm = ceph(sella=(700.0, 1000.0), nasion=(1400.0, 1000.0), upper_incisal_incision=upper,
              lower_incisal_incision=(1420.0, 1900.0))  # fmt: skip
    got, got_cls, _ = measure("MW", lm)
    assert got == pytest.approx(value) and got_cls == cls


def test_all_eight_on_a_mirrored_face_are_unchanged():
    lm = CASE_001[None]
    mirrored = lm.copy()
    mirrored[..., 0] = 1934.0 - mirrored[..., 0]
    for name in DEFS:
        a, b = measure(name, lm), measure(name, mirrored)
        assert a[0] == pytest.approx(b[0], abs=1e-9), name
        assert a[1] == b[1], name


def test_case_001_values_are_plausible():
    got = {name: measure(name, CASE_001[None])[0] for name in DEFS}
    assert 75 < got["SNA"] < 90 and 70 < got["SNB"] < 90 and -10 < got["ANB"] < 10
    assert 50 < got["ODI"] < 90 and 65 < got["APDI"] < 105 and 0.5 < got["FHI"] < 0.9
    assert 15 < got["FMA"] < 45 and -8 < got["MW"] < 10


def test_degenerate_and_missing():
    lm = CASE_001[None].copy()
    lm[0, NAMES.index("supramentale")] = lm[0, NAMES.index("subspinale")]
    assert measure("ODI", lm)[2] == "degenerate geometry: A and B coincide"
    assert measure("APDI", lm)[2] == "degenerate geometry: A and B coincide"
    assert measure("ANB", lm)[0] == pytest.approx(0.0)  # A = B is a valid ANB of 0
    lm = CASE_001[None].copy()
    lm[0, NAMES.index("sella")] = lm[0, NAMES.index("nasion")]
    for name in ("SNA", "SNB", "ANB", "FMA"):
        v, c, r = measure(name, lm)
        assert np.isnan(v) and c is None and r == "degenerate geometry: sella and nasion coincide"
    lm = CASE_001[None].copy()
    lm[0, NAMES.index("sella"), 0] = lm[0, NAMES.index("nasion"), 0]  # same column
    assert measure("MW", lm)[2] == "degenerate geometry: sella and nasion share a column"
    lm = CASE_001[None].copy()
    lm[0, NAMES.index("gonion")] = np.nan
    for name in ("ODI", "FHI", "FMA"):
        v, c, r = measure(name, lm)
        assert np.isnan(v) and c is None and r == "missing landmark: gonion"
    assert measure("SNA", lm)[2] is None


def test_collinear_sella_nasion_a():
    lm = ceph(sella=S0, nasion=N0, subspinale=polar(N0, 300, 0.0))  # A straight ahead of N
    assert measure("SNA", lm)[:2] == (pytest.approx(180.0), "C2")


BOUNDARIES = {
    "ANB": [(3.2, "C1"), (5.7, "C1"), (3.19, "C3"), (5.71, "C2")],
    "SNB": [(74.6, "C1"), (78.7, "C1"), (74.59, "C2"), (78.71, "C3")],
    "SNA": [(79.4, "C1"), (83.2, "C1"), (79.39, "C3"), (83.21, "C2")],
    "ODI": [(68.4, "C1"), (80.5, "C1"), (68.39, "C3"), (80.51, "C2")],
    "APDI": [(77.6, "C1"), (85.2, "C1"), (77.59, "C2"), (85.21, "C3")],
    "FHI": [(0.65, "C1"), (0.75, "C1"), (0.6499, "C3"), (0.7501, "C2")],
    "FMA": [(26.8, "C1"), (31.4, "C1"), (26.79, "C3"), (31.41, "C2")],
    "MW": [(2.0, "C1"), (4.5, "C1"), (4.51, "C4"), (1.99, "C2"), (0.0, "C2"), (-0.01, "C3")],
}


@pytest.mark.parametrize("name", list(BOUNDARIES))
def test_class_boundaries(name):
    values, labels = zip(*BOUNDARIES[name], strict=True)
    assert DEFS[name].classify(np.array(values)).tolist() == list(labels)


def test_sna_on_its_boundary_by_geometry():
    lm = ceph(sella=S0, nasion=N0, subspinale=polar(N0, 600, 180 - 83.2))
    assert measure("SNA", lm)[1] == "C1"


def test_renamed_landmarks():
    numbered = {n: f"l{i + 1}" for i, n in enumerate(NAMES)}
    defs = isbi2015_definitions(numbered)
    assert defs[0].points == {
        "sella": "l1",
        "nasion": "l2",
        "subspinale": "l5",
        "supramentale": "l6",
    }
    with pytest.raises(ValueError, match="not ISBI 2015 landmark names"):
        isbi2015_definitions({"sela": "l1"})
