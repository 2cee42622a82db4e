"""The shape plausibility check on synthetic shapes: a moved landmark is flagged and
its neighbours are not, similarity invariance, missing landmarks, the threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax import shape_check

K = 10
NAMES = tuple(f"l{k}" for k in range(K))


def _shapes(rng, n: int, noise: float = 1.5) -> np.ndarray:
    """`[n, K, 2]` pixel shapes: one template, noise, random rotation, scale and shift."""
    base = np.random.default_rng(123).uniform(0, 100, (K, 2))
    out = []
    for _ in range(n):
        th, s, t = rng.normal(0, 0.15), rng.uniform(0.7, 1.3), rng.normal(300, 40, 2)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        out.append((base + rng.normal(0, noise, (K, 2))) @ rot.T * s + t)
    return np.array(out)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    train = _shapes(rng, 300)
    train[rng.random(train.shape[:2]) < 0.05] = np.nan  # some landmarks not annotated
    return shape_check.fit(train, None, NAMES)


def test_threshold_flags_about_one_percent_of_training_landmarks(model):
    assert model.threshold >= np.sqrt(shape_check.chi2_2_quantile(0.99)) - 1e-9
    assert model.train_flag_rate <= 0.011
    assert model.n_shapes == 300


def test_a_moved_landmark_is_flagged_and_the_others_are_not(model):
    rng = np.random.default_rng(1)
    test = _shapes(rng, 60)
    clean, clean_flags = shape_check.score(model, test)
    assert np.isfinite(clean).all() and clean_flags.mean() < 0.03
    moved = test.copy()
    moved[:, 3] += [20.0, -15.0]  # 25 px: far beyond the 1.5 px noise
    score, flags = shape_check.score(model, moved)
    assert flags[:, 3].all()
    others = np.delete(flags, 3, axis=1)
    assert others.mean() < 0.03  # the neighbours keep their clean rate
    assert (np.delete(score, 3, axis=1) < 2 * model.threshold).all()


def test_scores_do_not_depend_on_position_rotation_and_scale(model):
    rng = np.random.default_rng(2)
    test = _shapes(rng, 5)
    test[:, 7] += 12.0
    th = 0.4
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = test @ rot.T * 2.5 + [1000.0, -50.0]
    np.testing.assert_allclose(
        shape_check.score(model, moved)[0], shape_check.score(model, test)[0], rtol=1e-6
    )


def test_missing_landmarks_score_nan_and_the_rest_still_work(model):
    rng = np.random.default_rng(3)
    test = _shapes(rng, 20)
    test[:, 3] += [20.0, -15.0]
    test[:, 5] = np.nan
    test[0, :8] = np.nan  # image 0 keeps 2 landmarks: too few to say anything
    score, flags = shape_check.score(model, test)
    assert np.isnan(score[:, 5]).all() and not flags[:, 5].any()
    assert np.isnan(score[0]).all() and not flags[0].any()
    assert flags[1:, 3].all()
    assert np.delete(flags[1:], [3, 5], axis=1).mean() < 0.05


def test_spacing_in_mm_undoes_anisotropic_pixels():
    rng = np.random.default_rng(4)
    mm = _shapes(rng, 200)
    spacing = np.array([0.2, 0.1])  # (row_mm, col_mm)
    px = mm / spacing[::-1]  # x in columns of 0.1 mm, y in rows of 0.2 mm
    model = shape_check.fit(px, np.broadcast_to(spacing, (200, 2)), NAMES)
    test = _shapes(rng, 10) / spacing[::-1]
    _, flags = shape_check.score(model, test, np.broadcast_to(spacing, (10, 2)))
    assert flags.mean() < 0.05
    # The same pixels read as isotropic look distorted, and more is flagged.
    stretched, _ = shape_check.score(model, test, None)
    assert np.nanmean(stretched) > np.nanmean(shape_check.score(model, test, [spacing])[0])


def test_json_round_trip(model, tmp_path):
    path = shape_check.save(model, tmp_path)
    json.loads(path.read_text())  # plain JSON, no NaN tokens needed
    again = shape_check.load(tmp_path)
    test = _shapes(np.random.default_rng(5), 4)
    np.testing.assert_allclose(shape_check.score(again, test)[0], shape_check.score(model, test)[0])
    assert shape_check.load(tmp_path / "none") is None


def test_too_few_landmarks_or_shapes_are_refused():
    with pytest.raises(ValueError, match="at least 3 landmarks"):
        shape_check.fit(np.zeros((5, 2, 2)), None, ("a", "b"))
    with pytest.raises(ValueError, match="3 shapes"):
        shape_check.fit(_shapes(np.random.default_rng(6), 2), None, NAMES)
