"""Multi-scale test-time augmentation: exact mapping back, composition, the flag."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from lmjax import cli, tta
from lmjax.data.types import LandmarkSet
from lmjax.evaluate import with_flip_tta

H = W = 65  # odd: the centre (32, 32) is a pixel centre


def _dots(points: list[tuple[int, int]], batch: int = 2) -> np.ndarray:
    """Images `[B, H, W, K]`: channel k is 0 with one pixel of 1 at `points[k]` (x, y)."""
    images = np.zeros((batch, H, W, len(points)), np.float32)
    for k, (x, y) in enumerate(points):
        images[:, y, x, k] = 1.0
    return images


def _argmax(images: np.ndarray):
    """A model that finds every dot exactly: the pixel of each channel's maximum."""
    b, _, w, k = images.shape
    flat = images.reshape(b, -1, k).argmax(axis=1)
    coords = np.stack([flat % w, flat // w], axis=-1).astype(np.float32)
    return coords, images.reshape(b, -1, k).max(axis=1)


def _centroid(images: np.ndarray):
    """Intensity-weighted centroid of each channel (above 0.05 of its peak)."""
    b, h, w, k = images.shape
    ys, xs = np.mgrid[:h, :w]
    mass = np.where(images > 0.05 * images.max(axis=(1, 2), keepdims=True), images, 0.0)
    total = mass.sum(axis=(1, 2))
    x = (mass * xs[None, :, :, None]).sum(axis=(1, 2)) / total
    y = (mass * ys[None, :, :, None]).sum(axis=(1, 2)) / total
    return np.stack([x, y], axis=-1).astype(np.float32), np.ones((b, k), np.float32)


def test_scale_one_alone_is_the_plain_prediction():
    assert tta.check_scales((1.0,)) == () and tta.check_scales(None) == ()
    assert tta.with_scale_tta(_argmax, (1.0,)) is _argmax
    assert tta.with_scale_tta(_argmax, ()) is _argmax


def test_scales_are_parsed_and_checked():
    assert tta.check_scales("0.9, 1.1,1") == (0.9, 1.1)
    assert tta.check_scales([1.1, 1.1, 0.9]) == (1.1, 0.9)
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(ValueError, match="positive finite"):
            tta.check_scales([bad])


def test_an_exact_model_maps_back_exactly():
    # Dots at c + 2m (c = 32) land on pixel centres at scale 1/2, and at scale 2 a dot
    # on a pixel centre stays a single maximum, so the argmax reads them exactly.
    points = [(20, 40), (36, 28)]
    images = _dots(points)
    for s in (0.5, 2.0):
        coords, conf = _argmax(tta.zoom_about_centre(images, s))
        c = np.float32(32.0)
        assert np.array_equal(coords, c + s * (np.float32(points) - c)[None].repeat(2, 0))
        np.testing.assert_array_equal(tta.unzoom(coords, s, (H, W)), [points] * 2)
        np.testing.assert_array_equal(conf, 1.0)
    coords, conf = tta.with_scale_tta(_argmax, (0.5, 2.0))(images)
    np.testing.assert_array_equal(coords, [points] * 2)
    np.testing.assert_array_equal(conf, 1.0)


def test_smooth_landmarks_map_back_at_any_scale():
    ys, xs = np.mgrid[:H, :W]
    points = [(24.3, 35.8), (40.6, 30.2)]
    blob = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0**2)) for x, y in points]
    images = np.stack(blob, axis=-1)[None].astype(np.float32)
    for s in (0.9, 1.1, 1.37):
        coords, _ = _centroid(tta.zoom_about_centre(images, s))
        np.testing.assert_allclose(tta.unzoom(coords, s, (H, W))[0], points, atol=0.02)
    coords, _ = tta.with_scale_tta(_centroid, (0.9, 1.1))(images)
    np.testing.assert_allclose(coords[0], points, atol=0.02)


def test_zooming_out_fills_with_the_image_minimum():
    images = np.full((1, H, W, 1), 5.0, np.float32)
    images[0, 30, 30, 0] = 2.0
    out = tta.zoom_about_centre(images, 0.5)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out[0, 0, 0, 0] == 2.0 and out[0, 32, 32, 0] == 5.0


def test_readings_with_extra_axes_are_augmented_each_alone():
    """`read_with`: every reading (an ensemble's members) gets the augmentation its
    own prediction would, from shared forward passes."""
    lset = LandmarkSet(name="pairs", names=("l", "r"), flip_pairs=((0, 1),))
    config = ml_collections.ConfigDict({"train": {"flip_tta": True, "tta_scales": (0.5,)}})
    wrap = tta.wrapper(config, lset)
    assert tta.wrapper(ml_collections.ConfigDict({"train": {"flip_tta": False}}), lset) is None
    rng = np.random.default_rng(0)
    images = rng.random((2, H, W, 2)).astype(np.float32)
    shift = np.float32([[[1.0, 0.0]]])

    def read(images):
        coords, conf = _argmax(images)
        return {"a": (coords, conf, None), "b": (coords + shift, conf * 0.5, None)}

    both = tta.read_with(read, wrap)(images)
    for name in ("a", "b"):
        alone = wrap(lambda im, n=name: read(im)[n][:2])(images)
        np.testing.assert_allclose(both[name][0], alone[0], rtol=1e-6)
        np.testing.assert_allclose(both[name][1], alone[1], rtol=1e-6)
        assert both[name][2] is None

    # Flip TTA on [B, M, K, 2] is flip TTA of each of the M readings.
    def stacked(images):
        (ca, fa, _), (cb, fb, _) = read(images)["a"], read(images)["b"]
        return np.stack([ca, cb], axis=1), np.stack([fa, fb], axis=1)

    perm = lset.flip_permutation()
    coords, _ = with_flip_tta(stacked, perm)(images)
    np.testing.assert_allclose(
        coords[:, 1], with_flip_tta(lambda im: read(im)["b"][:2], perm)(images)[0]
    )


@pytest.mark.parametrize("value", ["0", "-0.5,1.1", "nan", "x"])
def test_predict_refuses_bad_scales_in_one_line(value, tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.run(
            [
                "lmjax",
                "predict",
                f"--workdir={tmp_path / 'run'}",
                f"--output_dir={tmp_path / 'out'}",
                f"--tta_scales={value}",
                str(tmp_path / "image.png"),
            ]
        )
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.startswith("lmjax predict: error: --tta_scales needs positive finite factors")
    assert err.count("\n") == 1
