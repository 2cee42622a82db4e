"""Coordinate extractors against NumPy references, under jax.jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lmjax.ops import extractors

H, W = 32, 40


def _log_gaussians(coords, sigma):
    """float32 `[B, H, W, K]` log-heatmaps: -d^2 / (2 sigma^2)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    c = np.asarray(coords, np.float64)
    d2 = (xs[None, :, :, None] - c[:, None, None, :, 0]) ** 2
    d2 += (ys[None, :, :, None] - c[:, None, None, :, 1]) ** 2
    return (-d2 / (2 * sigma**2)).astype(np.float32)


def test_hard_argmax_exact_batched():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, H, W, 3)).astype(np.float32)
    coords, conf = jax.jit(extractors.hard_argmax)(maps)
    assert coords.shape == (2, 3, 2) and coords.dtype == jnp.float32 and conf.shape == (2, 3)
    for b in range(2):
        for k in range(3):
            row, col = np.unravel_index(np.argmax(maps[b, ..., k]), (H, W))
            np.testing.assert_array_equal(coords[b, k], [col, row])
            assert conf[b, k] == maps[b, ..., k].max()


def test_soft_argmax_recovers_subpixel():
    truth = np.array([[[12.3, 7.8], [25.6, 20.1]], [[30.2, 11.7], [8.9, 24.4]]], np.float32)
    logits = _log_gaussians(truth, sigma=1.5)
    coords, conf = jax.jit(extractors.soft_argmax)(logits)
    np.testing.assert_allclose(coords, truth, atol=0.05)
    # Confidence is the peak of the spatial softmax.
    probs = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    probs /= probs.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(conf, probs.max(axis=(1, 2)), rtol=1e-5)
    # A sharp Gaussian with a low temperature gives the same result.
    sharp, _ = extractors.soft_argmax(logits * 4.0, temperature=4.0)
    np.testing.assert_allclose(sharp, truth, atol=0.05)


def test_local_soft_argmax_ignores_distant_peak():
    truth = np.array([[[12.3, 7.8]]], np.float32)
    logits = _log_gaussians(truth, sigma=1.0)
    distractor = _log_gaussians(np.array([[[33.0, 26.0]]]), sigma=1.0) - 0.5
    logits = np.maximum(logits, distractor)
    global_xy, _ = jax.jit(extractors.soft_argmax)(logits)
    local = jax.jit(functools.partial(extractors.local_soft_argmax, window=7))
    local_xy, conf = local(logits)
    assert np.abs(global_xy - truth).max() > 1.0
    np.testing.assert_allclose(local_xy, truth, atol=0.05)
    assert conf[0, 0] == pytest.approx(logits.max())


def test_local_soft_argmax_matches_numpy_window_batched():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(2, H, W, 3)).astype(np.float32)
    maps[0, 0, 5, 0] = 9.0  # maximum on the top border
    maps[1, H - 1, W - 1, 2] = 9.0  # maximum in the bottom-right corner
    coords, _ = jax.jit(functools.partial(extractors.local_soft_argmax, window=5))(maps)
    for b in range(2):
        for k in range(3):
            m = maps[b, ..., k].astype(np.float64)
            row, col = np.unravel_index(np.argmax(m), (H, W))
            r0, r1 = max(row - 2, 0), min(row + 3, H)
            c0, c1 = max(col - 2, 0), min(col + 3, W)
            patch = np.exp(m[r0:r1, c0:c1] - m.max())
            patch /= patch.sum()
            ys, xs = np.mgrid[r0:r1, c0:c1]
            expected = [(patch * xs).sum(), (patch * ys).sum()]
            np.testing.assert_allclose(coords[b, k], expected, atol=1e-4)
    # Border maxima stay within half a window of the maximum, on the inside.
    assert coords[0, 0, 1] >= 0.0 and abs(coords[0, 0, 0] - 5) <= 2
    assert W - 3 <= coords[1, 2, 0] <= W - 1 and H - 3 <= coords[1, 2, 1] <= H - 1


def test_local_soft_argmax_symmetric_border_peak():
    # A peak on the left border, symmetric in y: x may only move inward, y stays.
    logits = _log_gaussians(np.array([[[0.0, 10.0]]]), sigma=1.0)
    coords, _ = extractors.local_soft_argmax(logits, window=7)
    assert coords[0, 0, 1] == pytest.approx(10.0, abs=1e-4)
    assert 0.0 < coords[0, 0, 0] < 1.0


def test_local_soft_argmax_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        extractors.local_soft_argmax(np.zeros((1, 8, 8, 1)), window=4)


def test_sigmoid_argmax():
    logits = np.full((2, H, W, 2), -5.0, np.float32)
    logits[0, 3, 17, 0] = 2.0
    logits[1, 30, 1, 1] = 0.5
    coords, conf = jax.jit(extractors.sigmoid_argmax)(logits)
    np.testing.assert_array_equal(coords[0, 0], [17, 3])
    np.testing.assert_array_equal(coords[1, 1], [1, 30])
    assert conf[0, 0] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert conf[0, 1] == pytest.approx(1 / (1 + np.exp(5.0)))


def test_probability_centroid_and_zero_mass():
    rng = np.random.default_rng(4)
    probs = rng.uniform(size=(2, H, W, 3)).astype(np.float32) ** 4
    probs[1, ..., 2] = 0.0
    coords, conf = jax.jit(extractors.probability_centroid)(probs)
    ys, xs = np.mgrid[0:H, 0:W]
    for b in range(2):
        for k in range(2):
            p = probs[b, ..., k].astype(np.float64)
            expected = [(p * xs).sum() / p.sum(), (p * ys).sum() / p.sum()]
            np.testing.assert_allclose(coords[b, k], expected, rtol=1e-5)
            assert conf[b, k] == pytest.approx(p.max())
    assert np.isnan(np.asarray(coords[1, 2])).all() and conf[1, 2] == 0.0
    grad = jax.grad(lambda p: jnp.nansum(extractors.probability_centroid(p)[0]))(probs)
    assert np.isfinite(np.asarray(grad)).all()


def _peaked_maps():
    logits = _log_gaussians(np.array([[[6.3, 5.6], [9.2, 3.9]]]), sigma=1.5)
    return jnp.asarray(logits[:, :12, :14])


@pytest.mark.parametrize(
    "extract",
    [
        functools.partial(extractors.soft_argmax, temperature=0.7),
        functools.partial(extractors.local_soft_argmax, window=5),
        lambda m: extractors.probability_centroid(jnp.exp(m)),
    ],
    ids=["soft_argmax", "local_soft_argmax", "probability_centroid"],
)
def test_gradients(extract):
    maps = _peaked_maps()
    f = lambda m: extract(m)[0]
    check_grads(f, (maps,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)
    check_grads(jax.jit(f), (maps,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)


def test_arbitrary_leading_axes_and_vmap():
    maps = jnp.asarray(_log_gaussians(np.array([[[12.3, 7.8]]]), sigma=1.5))
    single, _ = extractors.local_soft_argmax(maps[0])
    assert single.shape == (1, 2)
    stacked = jnp.stack([maps, maps])  # [2, 1, H, W, 1]
    out, conf = jax.vmap(extractors.soft_argmax)(stacked)
    assert out.shape == (2, 1, 1, 2) and conf.shape == (2, 1, 1)
