"""The ISBI 2015 measurements on the two doctors' real annotations (train + test1)."""

from __future__ import annotations

import numpy as np
import pytest

from lmjax.data.isbi2015 import load_isbi2015
from lmjax.measurements import compare, measure_dataset

# Plausible population medians (a clinic's orthodontic patients, 6 to 60 years):
# wide enough for any real population, narrow enough to catch a wrong definition
# (a supplement instead of an angle, a sign flip, a ratio upside down).
MEDIAN_RANGES = {
    "SNA": (75, 90), "SNB": (72, 88), "ANB": (-2, 6), "ODI": (60, 85), "APDI": (75, 95),
    "FHI": (0.55, 0.80), "FMA": (20, 40), "MW": (-2, 6),
}  # fmt: skip


@pytest.fixture(scope="module")
def doctors(shared_data):
    out = {}
    for doctor in ("senior", "junior"):
        ds = load_isbi2015(shared_data / "isbi2015", ground_truth=doctor, splits=("train", "test1"))
        assert len(ds) == 300 and not ds.errors
        spacing = [r.spacing for r in ds.records]
        out[doctor] = measure_dataset(
            ds.landmarks(), spacing, ds.landmark_set, [r.name for r in ds.records]
        )
    return out


@pytest.mark.parametrize("doctor", ["senior", "junior"])
def test_population_ranges(doctors, doctor):
    for name, (lo, hi) in MEDIAN_RANGES.items():
        values = np.array([r["measurements"][name]["value"] for r in doctors[doctor]], float)
        assert np.isfinite(values).all(), name  # every landmark is annotated
        assert lo < np.median(values) < hi, (name, np.median(values))
        classes = {r["measurements"][name]["class"] for r in doctors[doctor]}
        assert None not in classes and len(classes) >= 3, name


def test_doctors_agree_well_above_chance(doctors):
    c = compare(doctors["junior"], doctors["senior"])
    assert c["images"] == 300 and not c["unpaired"]
    for name, cls in c["classifications"].items():
        assert cls["n"] == 300 and cls["missed"] == 0
        assert cls["accuracy"] > cls["chance"] + 0.2, name
        assert cls["kappa"] > 0.4 and cls["macro"]["f1"] > 0.55, name
    # Two doctors' landmarks differ by about 2 mm: their angles by a few degrees.
    m = c["measurements"]
    assert all(m[n]["median"] < 4.0 for n in ("ANB", "SNB", "SNA", "ODI", "APDI", "FMA"))
    assert m["FHI"]["median"] < 0.05 and m["MW"]["median"] < 1.5 and m["MW"]["unit"] == "mm"
