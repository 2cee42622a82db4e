"""Host-side centroid methods against scikit-image regionprops references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from skimage import measure, morphology

from lmjax.ops import centroids

H, W = 32, 40


def _blob_maps(seed: int, b: int = 2, k: int = 3) -> np.ndarray:
    """float32 `[B, H, W, K]`: a few Gaussian blobs of different sizes, exact zeros between."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W]
    maps = np.zeros((b, H, W, k))
    for i in range(b):
        for j in range(k):
            for _ in range(rng.integers(1, 4)):
                cx, cy = rng.uniform([2, 2], [W - 3, H - 3])
                s, a = rng.uniform(1.0, 3.5), rng.uniform(0.3, 1.0)
                maps[i, ..., j] += a * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))
    maps = np.clip(maps, 0.0, 1.0)
    maps[maps < 0.05] = 0.0
    return maps.astype(np.float32)


def _largest(mask: np.ndarray, intensity: np.ndarray | None = None):
    """Reference: regionprops of the largest-area region; ((x, y), n_regions) or (None, 0)."""
    props = measure.regionprops(measure.label(mask, connectivity=2), intensity_image=intensity)
    if not props:
        return None, 0
    best = max(props, key=lambda r: r.area)  # first of the largest, in label order
    row, col = best.centroid_weighted if intensity is not None else best.centroid
    return (col, row), len(props)


def _reference(p: np.ndarray, method: int):
    p = p.astype(np.float64)
    if method == 1:
        ys, xs = np.mgrid[0:H, 0:W]
        return ((p * xs).sum() / p.sum(), (p * ys).sum() / p.sum()), None
    if method == 2:
        return _largest(p > 0, p)
    if method == 3:
        return _largest(p > (p.min() + p.max()) / 2, p)
    if method == 4:
        return _largest(morphology.opening(p > 0.5, morphology.disk(2), mode="ignore"))
    return _largest(p == p.max())


@pytest.mark.parametrize("method", [1, 2, 3, 4, 5])
def test_methods_agree_with_regionprops(method):
    # Gain 1.6 saturates blob tops at 1: several Method 4 components and
    # Method 5 clusters of tied maxima.
    for seed, gain in [(0, 1.0), (1, 1.0), (0, 1.6), (1, 1.6)]:
        probs = np.clip(_blob_maps(seed) * gain, 0.0, 1.0)
        result = centroids.extract_centroids(probs, method)
        assert result.coords.shape == (2, 3, 2) and result.coords.dtype == np.float32
        for field in ("confidence", "n_components", "missed", "false_positives"):
            assert getattr(result, field).shape == (2, 3)
        for b in range(2):
            for k in range(3):
                expected, count = _reference(probs[b, ..., k], method)
                if expected is None:
                    assert result.missed[b, k] and np.isnan(result.coords[b, k]).all()
                    continue
                np.testing.assert_allclose(result.coords[b, k], expected, atol=1e-4)
                assert not result.missed[b, k]
                if count is not None:
                    assert result.n_components[b, k] == count
                fp = max(count - 1, 0) if method == 4 else 0
                assert result.false_positives[b, k] == fp


def test_multiple_components_are_counted():
    probs = _blob_maps(0)
    counts = [centroids.extract_centroids(_blob_maps(s), 2).n_components for s in range(4)]
    assert max(int(c.max()) for c in counts) > 1
    # Names and numbers select the same method; device arrays are accepted.
    by_name = centroids.extract_centroids(jnp.asarray(probs), "midpoint")
    by_number = centroids.extract_centroids(probs, 3)
    np.testing.assert_array_equal(by_name.coords, by_number.coords)


def test_method4_missed_and_false_positives():
    probs = np.zeros((1, H, W, 3), np.float32)
    probs[0, 4:11, 4:11, 0] = 0.9  # 7 x 7 blob
    probs[0, 20:26, 28:34, 0] = 0.8  # 6 x 6 blob: a false positive
    probs[0, 2:4, 30:32, 0] = 0.95  # 2 x 2 speck: removed by the opening
    probs[0, ..., 1] = 0.4  # nothing above 0.5: missed
    probs[0, 12:18, 15:25, 2] = 0.7  # one clean detection
    res = centroids.extract_centroids(probs, 4)
    np.testing.assert_array_equal(res.n_components[0], [2, 0, 1])
    np.testing.assert_array_equal(res.false_positives[0], [1, 0, 0])
    np.testing.assert_array_equal(res.missed[0], [False, True, False])
    np.testing.assert_allclose(res.coords[0, 0], [7.0, 7.0])
    np.testing.assert_allclose(res.coords[0, 2], [19.5, 14.5])
    assert np.isnan(res.coords[0, 1]).all() and res.confidence[0, 1] == 0.0
    assert res.confidence[0, 0] == pytest.approx(0.9)
    # Without the opening (single-pixel masks) the speck counts too.
    raw = centroids.extract_centroids(probs, 4, opening_radius=0)
    assert raw.n_components[0, 0] == 3 and raw.false_positives[0, 0] == 2


def test_method4_opening_keeps_blob_on_border():
    probs = np.zeros((1, H, W, 1), np.float32)
    probs[0, 0:5, 0:5, 0] = 1.0
    res = centroids.extract_centroids(probs, 4)
    expected = morphology.opening(probs[0, ..., 0] > 0.5, morphology.disk(2), mode="ignore")
    rows, cols = np.nonzero(expected)
    np.testing.assert_allclose(res.coords[0, 0], [cols.mean(), rows.mean()])


def test_method5_max_clusters_and_ties():
    probs = np.full((1, H, W, 3), 0.1, np.float32)
    probs[0, 5:7, 5:8, 0] = 0.9  # 6 maximal pixels
    probs[0, 20, 30, 0] = 0.9  # 1 maximal pixel elsewhere
    probs[0, 9, 11, 1] = 0.7  # unique maximum
    probs[0, 25, 3, 2] = 0.8  # two single-pixel maxima: the first in row-major order wins
    probs[0, 4, 36, 2] = 0.8
    res = centroids.extract_centroids(probs, "max_cluster")
    np.testing.assert_allclose(res.coords[0, 0], [6.0, 5.5])
    np.testing.assert_allclose(res.coords[0, 1], [11.0, 9.0])
    np.testing.assert_allclose(res.coords[0, 2], [36.0, 4.0])
    np.testing.assert_array_equal(res.n_components[0], [2, 1, 2])
    np.testing.assert_array_equal(res.false_positives[0], [0, 0, 0])
    np.testing.assert_allclose(res.confidence[0], [0.9, 0.7, 0.8])


def test_empty_and_flat_channels_are_missed():
    probs = np.zeros((2, H, W, 1), np.float32)
    probs[1] = 0.3  # flat: no location to find for Method 3
    for method in (1, 2, 3, 4, 5):
        res = centroids.extract_centroids(probs, method)
        assert res.missed[0, 0] and np.isnan(res.coords[0, 0]).all()
        assert res.confidence[0, 0] == 0.0
    assert centroids.extract_centroids(probs, 3).missed[1, 0]
    np.testing.assert_allclose(
        centroids.extract_centroids(probs, 1).coords[1, 0], [(W - 1) / 2, (H - 1) / 2]
    )


def test_regionprops_centroids():
    rng = np.random.default_rng(5)
    masks = (_blob_maps(2) > 0.3).astype(np.float32)
    masks[0, ..., 0] = rng.uniform(size=(H, W)) > 0.7  # many small regions
    res = centroids.regionprops_centroids(masks)
    for b in range(2):
        for k in range(3):
            expected, count = _largest(masks[b, ..., k] > 0.5)
            assert res.n_components[b, k] == count
            assert res.false_positives[b, k] == max(count - 1, 0)
            if expected is None:
                assert res.missed[b, k]
            else:
                np.testing.assert_allclose(res.coords[b, k], expected, atol=1e-4)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown centroid method"):
        centroids.extract_centroids(np.zeros((1, 4, 4, 1)), 6)
    with pytest.raises(ValueError, match="non-finite"):
        centroids.extract_centroids(np.full((1, 4, 4, 1), np.nan), 1)
    with pytest.raises(ValueError, match=r"\[B, H, W, K\]"):
        centroids.extract_centroids(np.zeros((4, 4, 1)), 1)
