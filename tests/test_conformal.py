"""Split-conformal landmark radii: the finite-sample quantile, coverage on synthetic
errors within sampling error of nominal, missing landmarks and misses, bad alpha."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmjax import conformal


def _rayleigh_predictions(rng, n: int, sigmas, spacing_mm: float = 0.1):
    """`(pred, gt, spacing)`: errors of Rayleigh(sigma_k) mm in a random direction."""
    k = len(sigmas)
    gt = rng.uniform(100, 900, (n, k, 2))
    r = rng.rayleigh(np.asarray(sigmas, float), (n, k)) / spacing_mm  # in pixels
    theta = rng.uniform(0, 2 * np.pi, (n, k))
    pred = gt + np.stack([r * np.cos(theta), r * np.sin(theta)], -1)
    return pred, gt, np.full((n, 2), spacing_mm)


def test_radius_is_the_hand_computed_order_statistic():
    scores = np.array([5.0, 1, 9, 3, 7, 2, 10, 4, 8, 6])  # 1..10, shuffled
    # m = ceil(11 * 0.8) = 9: the 9th smallest; numpy's 'higher' at 9/10 would give 10.
    assert conformal.quantile_rank(10, 0.2) == 9
    assert conformal.conformal_radius(scores, 0.2) == 9.0
    assert conformal.conformal_radius(scores, 0.1) == 10.0  # m = ceil(9.9) = 10
    assert conformal.conformal_radius(scores, 0.5) == 6.0  # m = ceil(5.5) = 6
    # (19 + 1) * 0.9 is 18.000000000000004 in floating point; the rank is 18.
    assert conformal.quantile_rank(19, 0.1) == 18
    assert conformal.min_calibration(0.1) == 9 and conformal.min_calibration(0.2) == 4
    assert conformal.conformal_radius(scores[:8], 0.1) == math.inf  # m = 9 > 8
    assert conformal.conformal_radius(np.append(scores, np.nan), 0.2) == 9.0  # NaN left out


def test_coverage_of_rayleigh_errors_is_nominal_within_sampling_error():
    rng = np.random.default_rng(0)
    sigmas, alpha = (1.0, 2.0, 0.5), 0.1
    names = ("a", "b", "c")
    pred, gt, spacing = _rayleigh_predictions(rng, 200, sigmas)
    radii = conformal.calibrate(pred, gt, spacing, names, alpha)
    assert radii["unit"] == "mm" and radii["n"] == {"a": 200, "b": 200, "c": 200}
    assert radii["rank"]["a"] == math.ceil(201 * 0.9) == 181
    # The radius estimates the Rayleigh quantile sigma * sqrt(-2 ln alpha).
    for name, s in zip(names, sigmas, strict=True):
        assert radii["radius"][name] == pytest.approx(s * math.sqrt(-2 * math.log(alpha)), rel=0.15)
    json.dumps(radii, allow_nan=False)

    pred, gt, spacing = _rayleigh_predictions(rng, 20000, sigmas)
    cov = conformal.coverage(pred, gt, spacing, radii)
    assert cov["nominal"] == pytest.approx(0.9) and cov["n"] == 60000
    # Band: the test draws' binomial error plus the calibration set's own spread.
    assert cov["within_band"] and cov["band"][0] <= cov["coverage"] <= cov["band"][1]
    assert abs(cov["coverage"] - 0.9) < 0.04
    for name in names:
        lo, hi = cov["per_landmark"][name]["band"]
        assert lo <= cov["per_landmark"][name]["coverage"] <= hi
    assert cov["mean_radius"] == pytest.approx(np.mean(conformal.radii_array(radii)), abs=1e-3)
    assert "conformal radii: coverage" in conformal.format_coverage(cov)


def test_coverage_averaged_over_calibration_sets_is_m_over_n_plus_1():
    # The guarantee is marginal: E[F(radius)] = m / (n + 1) >= 1 - alpha, checked
    # with the exact Rayleigh CDF over 2000 calibration sets of 200.
    rng = np.random.default_rng(1)
    n, alpha, trials = 200, 0.1, 2000
    scores = rng.rayleigh(1.0, (trials, n))
    m = conformal.quantile_rank(n, alpha)
    radius = np.array([conformal.conformal_radius(s, alpha) for s in scores])
    achieved = 1 - np.exp(-(radius**2) / 2)
    se = achieved.std() / math.sqrt(trials)
    assert abs(achieved.mean() - m / (n + 1)) < 4 * se
    assert achieved.mean() >= 1 - alpha - 3 * se
    assert achieved.mean() <= 1 - alpha + 1 / (n + 1) + 3 * se


def test_missing_landmarks_are_left_out_and_misses_are_not_covered():
    rng = np.random.default_rng(2)
    pred, gt, spacing = _rayleigh_predictions(rng, 40, (1.0, 1.0))
    gt[:10, 0] = np.nan  # not annotated: left out of landmark a
    pred[:5, 1] = np.nan  # missed by the model: an infinite score for b
    radii = conformal.calibrate(pred, gt, spacing, ("a", "b"), 0.2)
    assert radii["n"] == {"a": 30, "b": 40} and radii["missed"] == {"a": 0, "b": 5}
    # b's 5 misses rank above every finite error; its radius is still the 33rd smallest.
    assert radii["rank"]["b"] == 33
    assert radii["radius"]["b"] is not None
    finite_b = np.sort(np.hypot(*((pred[5:, 1] - gt[5:, 1]) * 0.1).T))
    assert radii["radius"]["b"] == pytest.approx(finite_b[32], abs=1e-4)

    test_pred, test_gt, test_sp = _rayleigh_predictions(rng, 10, (1.0, 1.0))
    test_gt[:4, 0] = np.nan
    test_pred[:, 1] = np.nan  # every b missed
    cov = conformal.coverage(test_pred, test_gt, test_sp, radii)
    assert cov["per_landmark"]["a"]["n"] == 6 and cov["per_landmark"]["b"]["n"] == 10
    assert cov["per_landmark"]["b"]["coverage"] == 0.0
    assert cov["n"] == 16


def test_too_few_calibration_errors_give_an_unbounded_radius_and_say_so():
    rng = np.random.default_rng(3)
    pred, gt, spacing = _rayleigh_predictions(rng, 5, (1.0,))
    radii = conformal.calibrate(pred, gt, spacing, ("a",), 0.1)
    assert radii["radius"] == {"a": None} and radii["unbounded"] == ["a"]
    assert "at least 9 calibration errors" in radii["note"]
    json.dumps(radii, allow_nan=False)
    cov = conformal.coverage(pred, gt, spacing, radii)
    assert cov["coverage"] == 1.0 and cov["unbounded"] == ["a"] and cov["mean_radius"] is None


def test_pixels_without_spacing_and_a_unit_mismatch():
    rng = np.random.default_rng(4)
    pred, gt, _ = _rayleigh_predictions(rng, 30, (1.0,))
    radii = conformal.calibrate(pred, gt, None, ("a",), 0.2)
    assert radii["unit"] == "px"
    with pytest.raises(ValueError, match="radii are in px"):
        conformal.coverage(pred, gt, np.full((30, 2), 0.1), radii)
    entry = conformal.coverage_entry(pred, gt, np.full((30, 2), 0.1), radii)
    assert "radii are in px" in entry["skipped"]
    assert "not measured" in conformal.format_coverage(entry)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_zero_one_is_refused(alpha):
    pred = np.zeros((10, 1, 2))
    with pytest.raises(ValueError, match="conformal.alpha must be between 0 and 1"):
        conformal.calibrate(pred, pred, None, ("a",), alpha)
