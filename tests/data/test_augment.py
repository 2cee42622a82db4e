"""Augmentation building blocks: configs, one-resample warps, elastic fields, photometrics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lmjax.data import affine
from lmjax.data import augment_presets as presets
from lmjax.data.augment import (
    AugmentConfig,
    ElasticField,
    coarse_dropout,
    photometric,
    random_elastic,
    sample_geometry,
    warp,
)
from lmjax.data.augment_presets import AUGMENT_PRESETS


def blob_image(hw, centres, sigma=2.0):
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    img = np.zeros(hw, np.float64)
    for x, y in centres:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img.astype(np.float32)


def centroid(img, x, y, radius=7):
    """Intensity-weighted centroid of `img` in a square window around (x, y)."""
    x0, y0 = int(round(x)), int(round(y))
    win = img[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()


def test_defaults_are_off():
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    geo = sample_geometry(cfg, rng, (32, 48))
    np.testing.assert_array_equal(geo.matrix, np.eye(3))
    assert not geo.flipped and geo.field is None
    img = np.random.default_rng(1).random((32, 48)).astype(np.float32)
    np.testing.assert_array_equal(photometric(img, cfg, rng), img)


def test_lower_limb_preset_is_paper_002():
    # "randomly (p = 0.5) applied affine transformations (rotation (+-10 deg),
    # scaling (+-0.1), and translation (+-0.1))"
    c = AUGMENT_PRESETS["lower_limb"]
    assert c.p_affine == 0.5 and (c.p_rotation, c.p_scale, c.p_translation) == (1.0, 1.0, 1.0)
    assert c.rotation == 10.0 and c.scale == (0.9, 1.1) and c.translation == 0.1
    assert not c.flips and c.p_shear == 0 and c.p_elastic == 0
    assert all(getattr(c, f"p_{k}") == 0 for k in ("brightness", "contrast", "gamma", "dropout"))


def test_pelvis_preset_is_paper_000():
    # "rotation, translation, shearing and scaling but not reflection"
    c = AUGMENT_PRESETS["pelvis"]
    assert c.p_rotation > 0 and c.p_translation > 0 and c.p_shear > 0 and c.p_scale > 0
    assert c.rotation > 0 and c.translation > 0 and c.shear > 0 and c.scale[0] < 1 < c.scale[1]
    assert c.p_flip == 0 and c.p_flip_paired == 0
    assert c.resolved_for(((0, 1),)).p_flip == 0  # never, even for bilateral sets
    assert all(getattr(c, f"p_{k}") == 0 for k in ("brightness", "contrast", "gamma", "dropout"))


def test_fluoroscopy_preset_is_paper_004_table_1():
    # RandZoom 1.0-1.3, RandRotate (-0.17, 0.17) rad, RandAdjustContrast gamma in
    # (0.7, 1.5), "each with a probability of 0.5"; MONAI draws gamma uniformly.
    c = AUGMENT_PRESETS["fluoroscopy"]
    assert c.p_affine == 1.0 and (c.p_scale, c.p_rotation, c.p_gamma) == (0.5, 0.5, 0.5)
    assert c.scale == (1.0, 1.3) and math.isclose(math.radians(c.rotation), 0.17)
    assert c.gamma == (0.7, 1.5) and c.gamma_sampling == "uniform"
    assert c.p_translation == 0 and c.p_shear == 0 and not c.flips
    draws = np.array([c.gamma_draw(u) for u in np.linspace(0, 1, 9)])
    np.testing.assert_allclose(np.diff(draws), 0.1)  # uniform: equal steps


def test_medsapiens_preset_is_paper_003():
    # "random flips, photometric distortions, and coarse dropout"
    c = AUGMENT_PRESETS["medsapiens"]
    assert c.p_flip == 0 and c.p_flip_paired == 0.5
    assert c.p_brightness == 0.5 and math.isclose(c.brightness, 32 / 255)
    assert c.p_contrast == 0.5 and c.contrast == (0.5, 1.5)
    assert c.p_dropout == 0.5 and c.dropout_holes == (1, 1) and c.dropout_size == (0.2, 0.4)
    assert c.p_rotation == 0 and c.p_scale == 0 and c.p_translation == 0


def test_default_preset_is_lmjax_own_and_never_flips():
    c = AUGMENT_PRESETS["default"]
    assert c.p_affine == 0.5 and c.rotation == 10.0 and c.scale == (0.9, 1.1)
    assert c.translation == 0.1 and not c.flips and c.p_flip_paired == 0
    assert not c.resolved_for(((0, 1),)).flips


def test_log_uniform_gamma_is_symmetric_in_log():
    c = AugmentConfig(p_gamma=1.0, gamma=(0.5, 2.0))
    assert math.isclose(c.gamma_draw(0.5), 1.0) and math.isclose(c.gamma_draw(0.0), 0.5)
    with pytest.raises(ValueError, match="gamma_sampling"):
        AugmentConfig(gamma_sampling="normal")


def test_from_dict():
    cfg = presets.from_dict({"preset": "lower_limb", "p_flip": 0.5, "gamma": [0.8, 1.2]})
    assert cfg.p_flip == 0.5 and cfg.gamma == (0.8, 1.2) and cfg.rotation == 10.0
    with pytest.raises(ValueError, match="unknown augmentation options"):
        AugmentConfig.from_dict({"rotaton": 5})
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        presets.from_dict({"preset": "knee"})
    with pytest.raises(ValueError, match="not a probability"):
        AugmentConfig(p_flip=1.5)


def test_warp_follows_xy_convention():
    img = np.zeros((20, 30), np.float32)
    img[5, 7] = 1.0  # x = 7, y = 5
    out = warp(img, affine.translate(3, 1), (20, 30))
    assert out[6, 10] == pytest.approx(1.0)
    out = warp(img, affine.hflip(30), (20, 30))
    assert out[5, 30 - 1 - 7] == pytest.approx(1.0)


def test_affine_warp_moves_blobs_with_their_points():
    centres = np.array([[20.0, 25.0], [45.0, 30.0], [30.0, 50.0]])
    img = blob_image((70, 64), centres)
    m = affine.compose(
        affine.rotate(0.4, center=(32, 35)),
        affine.scale(1.1, center=(32, 35)),
        affine.shear(0.15),
        affine.translate(2.3, -1.7),
    )
    out = warp(img, m, (70, 64))
    for p in affine.apply(centres, m):
        np.testing.assert_allclose(centroid(out, *p), p, atol=0.1)


def test_elastic_inverse_and_single_resample():
    rng = np.random.default_rng(3)
    field = random_elastic(rng, (80, 80), alpha=3.0, grid=4)
    p = rng.uniform(10, 70, size=(6, 2))
    q, ok = field.invert(p)
    assert ok
    np.testing.assert_allclose(q + field.at(q), p, atol=1e-3)
    dx, dy = field.dense()
    # The dense grid and the point evaluation are the same spline.
    np.testing.assert_allclose(
        field.at(np.array([[13.0, 41.0]]))[0], [dx[41, 13], dy[41, 13]], atol=1e-4
    )
    centres = np.array([[25.0, 25.0], [55.0, 30.0], [40.0, 55.0]])
    img = blob_image((80, 80), centres)
    m = affine.rotate(0.2, center=(40, 40))
    out = warp(img, m, (80, 80), field=field)
    moved, ok = field.invert(affine.apply(centres, m))
    assert ok
    for p in moved:
        np.testing.assert_allclose(centroid(out, *p), p, atol=0.25)


def test_folding_field_reports_non_convergence():
    coef = np.zeros((2, 3, 3))
    coef[0, :, 1] = 200.0  # a huge bump: q + d(q) is not invertible
    coef[0, :, 0] = -200.0
    _, ok = ElasticField(coef=coef, out_hw=(40, 40)).invert(np.array([[20.0, 20.0]]))
    assert not ok


def test_nearest_warp_keeps_labels():
    mask = np.zeros((40, 40), np.int32)
    mask[10:20, 5:15], mask[25:35, 20:38] = 1, 2
    out = warp(mask, affine.rotate(0.3, center=(20, 20)), (40, 40), order=0)
    assert out.dtype == np.int32 and set(np.unique(out)) <= {0, 1, 2}


@pytest.mark.parametrize(
    "name,update",
    [
        ("brightness", dict(p_brightness=1.0, brightness=0.3)),
        ("contrast", dict(p_contrast=1.0, contrast=(0.5, 1.5))),
        ("gamma", dict(p_gamma=1.0, gamma=(0.5, 2.0))),
        ("noise", dict(p_noise=1.0, noise_std=(0.05, 0.2))),
        ("blur", dict(p_blur=1.0, blur_sigma=(1.0, 2.0))),
        ("dropout", dict(p_dropout=1.0)),
    ],
)
def test_photometric_keeps_shape_dtype_range(name, update):
    img = np.random.default_rng(0).random((48, 40)).astype(np.float32)
    cfg = dataclasses.replace(AugmentConfig(), **update)
    for seed in range(5):
        out = photometric(img, cfg, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.float32, name
        assert out.min() >= 0.0 and out.max() <= 1.0, name
        assert not np.array_equal(out, img), name


def test_coarse_dropout_zeroes_boxes():
    img = np.ones((50, 60), np.float32)
    for seed in range(5):
        out = coarse_dropout(img, np.random.default_rng(seed), holes=(1, 1), size=(0.1, 0.2))
        rows, cols = np.nonzero(out == 0)
        box = out[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        # One hole: the zeros are exactly one box of the requested size.
        assert (box == 0).all() and rows.size == box.size
        assert 5 <= box.shape[0] <= 10 and 6 <= box.shape[1] <= 12
        assert (out[out != 0] == 1).all()
    assert img.min() == 1.0  # the input is left alone
    out = coarse_dropout(img, np.random.default_rng(0), holes=(3, 3), size=(0.1, 0.1))
    assert 0 < (out == 0).sum() <= 3 * 5 * 6


def test_medsapiens_flips_only_with_pairs():
    from lmjax.data.augment_presets import resolve_augment

    assert resolve_augment("medsapiens", ((0, 1),)).p_flip == 0.5
    assert resolve_augment("medsapiens", ()).p_flip == 0.0
    assert resolve_augment({"preset": "medsapiens", "rotation": 3.0}, ((0, 1),)).p_flip == 0.5
    assert resolve_augment({"preset": "lower_limb"}).p_affine == 0.5
    assert resolve_augment(None) is None


def test_robust_preset_is_default_plus_photometric_steps():
    robust, default = AUGMENT_PRESETS["robust"], AUGMENT_PRESETS["default"]
    for name in ("p_affine", "rotation", "scale", "translation", "p_flip", "p_elastic"):
        assert getattr(robust, name) == getattr(default, name), name
    assert (robust.p_gamma, robust.gamma) == (0.5, (0.7, 1.5))
    assert (robust.p_contrast, robust.contrast) == (0.5, (0.75, 1.25))
    assert (robust.p_noise, robust.noise_std, robust.p_blur) == (0.25, (0.0, 0.03), 0.25)
