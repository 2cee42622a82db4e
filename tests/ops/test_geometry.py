"""Device affine geometry against NumPy/SciPy references under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from lmjax.data import affine
from lmjax.ops.geometry import apply_affine, invert_affine, warp_image


def _matrix():
    return affine.compose(
        affine.rotate(0.3, (15, 10)),
        affine.scale(1.2, 0.9),
        affine.shear(0.1),
        affine.translate(2.5, -1.0),
    )


def test_apply_affine_matches_numpy_and_keeps_nan():
    m = _matrix()
    pts = np.array([[[1.0, 2.0], [np.nan, np.nan], [30.0, 5.5]]], np.float32)
    got = jax.jit(apply_affine)(pts, m[None].astype(np.float32))
    ref = affine.apply(pts[0], m)
    np.testing.assert_allclose(np.asarray(got[0]), ref, atol=1e-4)
    assert np.isnan(np.asarray(got[0, 1])).all()


def test_invert_affine_batched():
    ms = np.stack([_matrix(), affine.compose(affine.hflip(40), affine.translate(1, 2))])
    got = jax.jit(invert_affine)(jnp.asarray(ms, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), np.linalg.inv(ms), atol=1e-5)


def test_warp_image_matches_scipy():
    rng = np.random.default_rng(0)
    img = rng.random((2, 24, 32, 3)).astype(np.float32)
    m = _matrix()
    out = jax.jit(warp_image, static_argnames=("out_hw", "order"))(
        img, jnp.asarray(np.stack([m, m]), jnp.float32), out_hw=(20, 28), order=1
    )
    # scipy maps output (row, col) to input (row, col) with the inverse in (y, x) order.
    inv = np.linalg.inv(m)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    inv_rc = swap @ inv @ swap
    # Compare where the source point is a pixel inside the edge: the libraries
    # treat the rim beyond the edge differently.
    rr, cc = np.mgrid[:20, :28]
    src = affine.apply(np.stack([cc.ravel(), rr.ravel()], -1), inv).reshape(20, 28, 2)
    inside = (src[..., 0] >= 1) & (src[..., 0] <= 30) & (src[..., 1] >= 1) & (src[..., 1] <= 22)
    assert inside.mean() > 0.5
    for c in range(3):
        ref = ndimage.affine_transform(
            img[1, ..., c], inv_rc[:2, :2], inv_rc[:2, 2], output_shape=(20, 28), order=1, cval=0.0
        )
        np.testing.assert_allclose(np.asarray(out[1, ..., c])[inside], ref[inside], atol=1e-4)


def test_warped_dot_lands_on_the_mapped_landmark():
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    p = np.array([22.3, 17.6])
    img = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 2.0**2)).astype(np.float32)
    m = affine.compose(
        affine.rotate(0.4, (32, 24)), affine.scale(1.1, center=(32, 24)), affine.hflip(w)
    )
    out = np.asarray(warp_image(img[None, ..., None], jnp.asarray(m[None], jnp.float32), (h, w)))[
        0, ..., 0
    ]
    centre = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
    np.testing.assert_allclose(centre, affine.apply(p, m), atol=0.1)


def test_nearest_warp_keeps_labels():
    labels = np.zeros((1, 10, 10, 1), np.int32)
    labels[0, 2:5, 3:8] = 3
    out = warp_image(
        labels, jnp.asarray(affine.translate(1, 2)[None], jnp.float32), (10, 10), order=0
    )
    assert out.dtype == jnp.int32
    assert set(np.unique(np.asarray(out))) == {0, 3}
    np.testing.assert_array_equal(np.asarray(out)[0, 4:7, 4:9, 0], 3)
