"""Target rendering against NumPy references, under jax.jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lmjax.ops import targets

H, W = 32, 40


def _grid():
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    return xs, ys


def _np_gaussian(x, y, sigma):
    xs, ys = _grid()
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


def test_gaussian_values_at_known_offsets():
    coords = np.array([[[12.3, 7.8], [20.0, 16.0]]], np.float32)
    render = jax.jit(functools.partial(targets.gaussian_heatmaps, shape=(H, W), sigma=2.0))
    maps = np.asarray(render(coords))
    assert maps.shape == (1, H, W, 2) and maps.dtype == np.float32
    # Exactly 1 on a pixel centre, exp(-d^2 / 2 sigma^2) at known offsets.
    assert maps[0, 16, 20, 1] == pytest.approx(1.0)
    for dx, dy in [(1, 0), (0, 2), (3, 4), (-2, -1)]:
        expected = np.exp(-(dx * dx + dy * dy) / 8.0)
        assert maps[0, 16 + dy, 20 + dx, 1] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(maps[0, ..., 0], _np_gaussian(12.3, 7.8, 2.0), rtol=1e-5, atol=1e-7)


def test_gaussian_per_landmark_sigma_and_batch():
    rng = np.random.default_rng(0)
    coords = rng.uniform([0, 0], [W - 1, H - 1], size=(2, 3, 2)).astype(np.float32)
    sigma = np.array([1.0, 2.5, 4.0], np.float32)
    maps = jax.jit(lambda c, s: targets.gaussian_heatmaps(c, shape=(H, W), sigma=s))(coords, sigma)
    for b in range(2):
        for k in range(3):
            ref = _np_gaussian(*coords[b, k].astype(np.float64), sigma[k])
            np.testing.assert_allclose(maps[b, ..., k], ref, rtol=1e-4, atol=1e-6)


def test_gaussian_normalize_and_dtype():
    coords = np.array([[[0.0, 0.0], [15.2, 9.9]]], np.float32)
    maps = targets.gaussian_heatmaps(
        coords, shape=(H, W), sigma=3.0, normalize=True, dtype=jnp.bfloat16
    )
    assert maps.dtype == jnp.bfloat16
    sums = np.asarray(maps.astype(jnp.float32)).sum(axis=(1, 2))
    np.testing.assert_allclose(sums, 1.0, rtol=2e-2)


def test_invisible_and_missing_render_zeros():
    coords = np.array([[[10.0, 10.0], [np.nan, np.nan], [5.0, 5.0]]], np.float32)
    visible = np.array([[True, False, False]])
    for render in (
        functools.partial(targets.gaussian_heatmaps, sigma=2.0, normalize=True),
        functools.partial(targets.circle_masks, radius=7),
        functools.partial(targets.square_masks, side=20),
    ):
        maps = np.asarray(jax.jit(functools.partial(render, shape=(H, W)))(coords, visible=visible))
        assert np.isfinite(maps).all()
        assert maps[..., 0].sum() > 0 and not maps[..., 1:].any()
    # visible=None derives visibility from the coordinates.
    maps = targets.circle_masks(coords, shape=(H, W), radius=3)
    assert np.isfinite(np.asarray(maps)).all() and not np.asarray(maps[..., 1]).any()


def test_gaussian_gradient_wrt_coords():
    coords = jnp.array([[[12.3, 7.8], [20.4, 15.1]]], jnp.float32)
    f = lambda c: targets.gaussian_heatmaps(c, shape=(16, 24), sigma=jnp.array([2.0, 3.0]))
    check_grads(f, (coords,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)
    # A missing landmark contributes zero gradient, never NaN.
    missing = coords.at[0, 1].set(jnp.nan)
    grad = jax.grad(lambda c: jnp.sum(f(c) ** 2))(missing)
    assert np.isfinite(np.asarray(grad[0, 0])).all() and np.asarray(grad[0, 0]).any()


def _np_disc_count(x, y, r):
    xs, ys = _grid()
    return int(np.count_nonzero((xs - x) ** 2 + (ys - y) ** 2 <= r * r))


@pytest.mark.parametrize("radius", [7, 15])
def test_circle_pixel_counts(radius):
    coords = np.array([[[20.0, 16.0], [12.3, 7.8], [1.0, 30.0]]], np.float32)
    masks = jax.jit(lambda c: targets.circle_masks(c, shape=(H, W), radius=radius))(coords)
    masks = np.asarray(masks)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    for k in range(3):
        expected = _np_disc_count(*coords[0, k].astype(np.float64), radius)
        assert masks[0, ..., k].sum() == expected
    if radius == 7:  # fully inside: the lattice-point count of a disc of radius 7
        assert masks[0, ..., 0].sum() == 149


def test_circle_radius_zero_is_nearest_pixel_and_per_landmark_radius():
    coords = np.array([[[12.3, 7.8], [3.5, 4.5], [20.0, 16.0]]], np.float32)
    masks = np.asarray(
        targets.circle_masks(coords, shape=(H, W), radius=np.array([0.0, 0.0, 15.0]))
    )
    assert masks[..., 0].sum() == 1 and masks[0, 8, 12, 0] == 1
    assert masks[..., 1].sum() == 1 and masks[0, 5, 4, 1] == 1  # ties round up
    assert masks[..., 2].sum() == _np_disc_count(20.0, 16.0, 15.0)


def test_square_masks_inside_even_odd_and_clipped():
    coords = np.array([[[20.0, 16.0], [12.3, 7.8], [0.0, 31.0]]], np.float32)
    masks = np.asarray(jax.jit(lambda c: targets.square_masks(c, shape=(H, W), side=10))(coords))
    assert masks[0, ..., 0].sum() == 100 and masks[0, ..., 1].sum() == 100
    # Even side on a pixel centre: columns 16..25 and rows 12..21 (extra pixel after).
    rows, cols = np.nonzero(masks[0, ..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 21, 16, 25)
    # Off-centre landmark: the block whose centre is nearest (12.3 -> 7.5..16.5).
    rows, cols = np.nonzero(masks[0, ..., 1])
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (8, 17, 3, 12)
    # Corner landmark: clipped to 6 x 5 (columns 0..5, rows 27..31).
    assert masks[0, ..., 2].sum() == 30
    odd = np.asarray(targets.square_masks(coords[:, :1], shape=(H, W), side=5))
    rows, cols = np.nonzero(odd[0, ..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (14, 18, 18, 22)


def test_square_matches_numpy_reference_random():
    rng = np.random.default_rng(1)
    coords = rng.uniform(-3, 42, size=(2, 3, 2)).astype(np.float32)
    sides = np.array([1, 6, 20])
    masks = np.asarray(targets.square_masks(coords, shape=(H, W), side=sides))
    xs, ys = _grid()
    for b in range(2):
        for k in range(3):
            x, y = coords[b, k].astype(np.float64)
            s = sides[k]
            ref = (xs > x - s / 2) & (xs <= x + s / 2) & (ys > y - s / 2) & (ys <= y + s / 2)
            np.testing.assert_array_equal(masks[b, ..., k], ref)


def test_add_background():
    coords = np.array([[[10.0, 10.0], [14.0, 10.0]]], np.float32)
    masks = targets.circle_masks(coords, shape=(H, W), radius=3)
    full = np.asarray(jax.jit(targets.add_background)(masks))
    assert full.shape == (1, H, W, 3)
    np.testing.assert_array_equal(full[..., 2], 1 - np.asarray(masks).max(-1))
    np.testing.assert_array_equal(full[..., :2], masks)
    excl = np.asarray(jax.jit(functools.partial(targets.add_background, exclusive=True))(masks))
    np.testing.assert_array_equal(excl.sum(-1), 1.0)
    overlap = np.asarray(masks).min(-1) > 0
    assert overlap.any() and (excl[overlap][:, 0] == 1).all()
    np.testing.assert_array_equal(excl[..., 2], full[..., 2])


def test_vmap_and_unbatched():
    coords = np.array([[12.0, 7.0], [20.0, 16.0]], np.float32)
    single = targets.gaussian_heatmaps(coords, shape=(H, W), sigma=2.0)
    assert single.shape == (H, W, 2)
    batched = jax.vmap(lambda c: targets.circle_masks(c, shape=(H, W), radius=4))(coords[None])
    assert batched.shape == (1, H, W, 2)
