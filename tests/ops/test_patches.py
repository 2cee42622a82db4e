"""Patch frames, extraction and the map back to the image, against SciPy and exact algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from lmjax.ops import patches


def _frames(centres, size, step, angle, scale):
    return jax.jit(patches.patch_frames, static_argnames="size")(
        centres, size=size, step=step, angle=angle, scale=scale
    )


@pytest.mark.parametrize("size", [16, 17])
def test_centre_sample_sits_on_the_centre(size):
    centres = np.array([[[10.25, 7.5], [0.0, 0.0]]], np.float32)
    frames = _frames(centres, size, 0.7, np.array([[0.3, -1.2]]), 1.1)
    half = (size - 1) / 2
    mid = np.broadcast_to(np.array([half, half], np.float32), centres.shape)
    np.testing.assert_allclose(patches.apply_frames(mid, frames), centres, atol=1e-5)


def test_subpixel_point_round_trips_through_patch_frame_near_the_border():
    rng = np.random.default_rng(0)
    # Landmarks at sub-pixel positions, some on and beyond the image border.
    points = np.array([[[0.37, 0.12], [511.9, 3.3], [-2.6, 200.01], [250.123, 399.77]]], np.float32)
    centres = points + rng.normal(0, 3, points.shape).astype(np.float32)
    frames = _frames(
        centres, 64, 0.4, rng.uniform(-0.3, 0.3, (1, 4)), rng.uniform(0.9, 1.1, (1, 4))
    )
    inside = patches.apply_frames(points, patches.invert_frames(frames))
    back = patches.apply_frames(inside, frames)
    np.testing.assert_allclose(np.asarray(back), points, atol=1e-4)
    # The inverse is the inverse: F^-1 F = I.
    eye = np.einsum("nkij,nkjl->nkil", patches.invert_frames(frames), frames)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-5)


def test_extraction_matches_scipy_bilinear_with_zero_outside():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 40, 50, 1)).astype(np.float32)
    centres = np.array([[[20.3, 10.7], [1.0, 38.5]], [[49.2, 0.4], [25.0, 20.0]]], np.float32)
    angle = np.array([[0.0, 0.4], [-0.7, 1.3]], np.float32)
    frames = _frames(centres, 9, 0.8, angle, 1.0)
    got = jax.jit(patches.extract_patches, static_argnames="size")(image, frames, size=9)
    assert got.shape == (2, 2, 9, 9, 1)
    grid = np.stack(np.meshgrid(np.arange(9), np.arange(9)), -1).astype(np.float32)  # (u, v)
    for n in range(2):
        for k in range(2):
            f = np.asarray(frames[n, k])
            xy = grid @ f[:2, :2].T + f[:2, 2]
            want = ndimage.map_coordinates(
                image[n, :, :, 0], [xy[..., 1], xy[..., 0]], order=1, mode="grid-constant", cval=0.0
            )
            # Outside pixels count as zeros inside the interpolation (SciPy's grid-constant).
            np.testing.assert_allclose(got[n, k, :, :, 0], want, atol=1e-5)


def test_a_bright_pixel_lands_where_the_inverse_frame_says():
    image = np.zeros((1, 64, 64, 1), np.float32)
    image[0, 30, 41, 0] = 1.0  # (x, y) = (41, 30)
    frames = _frames(np.array([[[38.0, 33.0]]], np.float32), 21, 1.0, 0.5, 1.0)
    got = np.asarray(patches.extract_patches(image, frames, size=21))[0, 0, :, :, 0]
    u, v = patches.apply_frames(np.array([[[41.0, 30.0]]]), patches.invert_frames(frames))[0, 0]
    peak = np.unravel_index(np.argmax(got), got.shape)
    assert abs(peak[1] - float(u)) <= 1 and abs(peak[0] - float(v)) <= 1


def test_gradient_flows_to_the_frame_centre():
    image = np.broadcast_to(np.arange(32, dtype=np.float32)[None, None, :, None], (1, 32, 32, 1))

    def mean_value(cx):
        frames = patches.patch_frames(jnp.stack([cx, jnp.float32(16.0)])[None, None], size=5)
        return patches.extract_patches(image, frames, size=5).mean()

    # The image is a ramp in x, so the mean of a patch grows 1:1 with its centre's x.
    np.testing.assert_allclose(jax.grad(mean_value)(np.float32(15.3)), 1.0, atol=1e-5)


def test_normalized_patches_have_zero_mean_unit_deviation():
    p = np.random.default_rng(2).normal(3, 5, (2, 3, 8, 8, 1)).astype(np.float32)
    out = np.asarray(patches.normalize_patches(p))
    np.testing.assert_allclose(out.mean(axis=(2, 3, 4)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(2, 3, 4)), 1, atol=1e-4)
