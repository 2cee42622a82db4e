"""The metrics on the real ISBI 2015 annotations against the dataset's reference figures."""

from __future__ import annotations

import numpy as np
import pytest

from lmjax import metrics
from lmjax.data.isbi2015 import load_isbi2015


@pytest.fixture(scope="module")
def isbi(shared_data):
    return load_isbi2015(shared_data / "isbi2015")


def _spacing(ds):
    return np.array([r.spacing for r in ds.records], np.float64)


def test_mean_shape_baseline_matches_reference(isbi):
    """Mean of the 150 senior training annotations, predicted for every test1 image."""
    train, test = isbi.split("train"), isbi.split("test1")
    mean_shape = train.landmarks().mean(axis=0)
    pred = np.broadcast_to(mean_shape, test.landmarks().shape)
    errors, unit = metrics.radial_errors(pred, test.landmarks(), _spacing(test))
    s = metrics.summarize(errors, unit=unit)
    assert unit == "mm" and s["n"] == 150 * 19 and s["missed"] == 0
    assert s["mre"] == pytest.approx(9.69, abs=0.005)
    assert s[metrics.sdr_key(2)] == pytest.approx(4.2, abs=0.05)


def test_junior_against_senior_matches_reference(shared_data):
    root = shared_data / "isbi2015"
    senior = load_isbi2015(root, ground_truth="senior", splits=("test1",))
    junior = load_isbi2015(root, ground_truth="junior", splits=("test1",))
    errors, unit = metrics.radial_errors(junior.landmarks(), senior.landmarks(), _spacing(senior))
    s = metrics.summarize(errors, unit=unit)
    # Reference: test1 MRE 2.36 mm, SDR 55.5 / 63.9 / 71.1 / 81.5 %.
    assert s["mre"] == pytest.approx(2.36, abs=0.01)
    for t, ref in zip((2, 2.5, 3, 4), (55.5, 63.9, 71.1, 81.5), strict=True):
        assert s[metrics.sdr_key(t)] == pytest.approx(ref, abs=0.1)
    table = metrics.per_landmark(errors, senior.landmark_set.names, unit=unit)
    assert len(table) == 19 and table[0]["landmark"] == "sella"


def test_unknown_spacing_reports_pixels(isbi):
    test = isbi.split("test1")
    errors, unit = metrics.radial_errors(test.landmarks() + 3.0, test.landmarks(), None)
    assert unit == "px"
    np.testing.assert_allclose(errors, np.hypot(3.0, 3.0), rtol=1e-6)
