"""The procedural phantom: determinism, contracts, and that images match landmarks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lmjax.data import affine
from lmjax.data.phantom import (
    MAX_VALUE,
    PHANTOM_LANDMARKS,
    SPACING_SOURCE,
    phantom_dataset,
    phantom_landmark_set,
    render_phantom,
)
from lmjax.data.types import Dataset, LandmarkSet

LMS = PHANTOM_LANDMARKS
HEADS = [LMS.names.index("femoral_head_right"), LMS.names.index("femoral_head_left")]


@pytest.fixture(scope="module")
def renders() -> list[tuple]:
    """40 phantoms of one seed, rendered once for the statistical checks."""
    return [render_phantom(7, i) for i in range(40)]


def _disk_mean(image: np.ndarray, point: np.ndarray, radius: float = 3.0) -> float:
    yy, xx = np.ogrid[: image.shape[0], : image.shape[1]]
    return float(image[(xx - point[0]) ** 2 + (yy - point[1]) ** 2 <= radius**2].mean())


def _assert_same(a: tuple, b: tuple) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # NaN == NaN here, bit for bit otherwise


def test_landmark_set_declares_pairs_and_regions():
    assert phantom_landmark_set() is LMS
    assert isinstance(LMS, LandmarkSet) and 12 <= LMS.num_landmarks <= 18
    assert 3 <= LMS.num_regions <= 6 and LMS.regions is not None
    assert len(LMS.flip_pairs) >= 6
    for left, right in LMS.flip_pairs:
        assert LMS.names[left].endswith("_left") and LMS.names[right].endswith("_right")
        assert LMS.names[left][: -len("left")] == LMS.names[right][: -len("right")]
    paired = {k for pair in LMS.flip_pairs for k in pair}
    for k, name in enumerate(LMS.names):
        region = LMS.region_names[LMS.regions[k]]
        side = name.rsplit("_", 1)[-1]
        # A lateral landmark belongs to a bone of its own side, a midline one to a midline bone.
        if side in ("left", "right"):
            assert k in paired and region.endswith("_" + side), (name, region)
        else:
            assert not region.endswith(("_left", "_right")), (name, region)
    perm = LMS.flip_permutation()
    np.testing.assert_array_equal(perm[perm], np.arange(LMS.num_landmarks))


@pytest.mark.parametrize("size", [(256, 256), (288, 256), (96, 128)])
def test_render_shapes_dtypes_and_range(size):
    image, lms, mask, spacing = render_phantom(0, 3, image_size=size)
    assert image.shape == size and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= MAX_VALUE
    np.testing.assert_array_equal(image, np.round(image))  # 12-bit-like integer levels
    assert image.std() > 100  # not a blank frame
    assert lms.shape == (LMS.num_landmarks, 2) and lms.dtype == np.float32
    assert mask.shape == size and mask.dtype == np.int32
    assert set(np.unique(mask)) <= set(range(LMS.num_regions + 1))
    assert len(set(np.unique(mask)) - {0}) >= 4  # most bones are in the frame
    assert len(spacing) == 2 and all(isinstance(s, float) and s > 0 for s in spacing)


def test_spacing_follows_the_field_of_view():
    small = render_phantom(0, 0)[3]
    large = render_phantom(0, 0, image_size=(512, 512))[3]
    assert 1.0 < small[0] < 2.5 and small[0] == small[1]
    assert large[0] == pytest.approx(small[0] / 2)  # same anatomy, twice the pixels


def test_deterministic_and_order_independent():
    _assert_same(render_phantom(5, 2), render_phantom(5, 2))
    assert not np.array_equal(render_phantom(5, 2)[0], render_phantom(6, 2)[0])
    assert not np.array_equal(render_phantom(5, 2)[0], render_phantom(5, 3)[0])
    # Rendering in reverse order, or inside a dataset, gives the same images.
    backwards = [render_phantom(5, i) for i in reversed(range(4))][::-1]
    ds = phantom_dataset(4, seed=5, splits=(("train", 1.0),))
    for i, (image, lms, mask, spacing) in enumerate(backwards):
        _assert_same((image, lms, mask, spacing), render_phantom(5, i))
        rec = ds[i]
        _assert_same((rec.image, rec.landmarks, rec.region_mask), (image, lms, mask))
        assert rec.spacing == spacing


def test_missing_rate_changes_only_the_annotations():
    plain, dropped = render_phantom(1, 4, missing_rate=0.0), render_phantom(1, 4, missing_rate=1.0)
    _assert_same((plain[0], plain[2], plain[3]), (dropped[0], dropped[2], dropped[3]))
    assert np.isnan(dropped[1]).any(axis=1).sum() >= 1
    for i in range(20):
        assert np.isnan(render_phantom(1, i, missing_rate=1.0)[1][:, 0]).any()
    # NaN comes in whole rows only.
    lms = dropped[1]
    np.testing.assert_array_equal(np.isnan(lms[:, 0]), np.isnan(lms[:, 1]))


def test_landmarks_vary_and_mostly_stay_in_frame(renders):
    lms = np.stack([r[1] for r in renders])
    visible = np.isfinite(lms).all(axis=2)
    assert visible.mean() > 0.95  # missing landmarks are exercised but rare by default
    h, w = renders[0][0].shape
    x, y = lms[..., 0], lms[..., 1]
    inside = visible & (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    np.testing.assert_array_equal(inside, visible)  # out of frame means missing
    spread = np.nanstd(lms, axis=0)  # [K, 2]
    assert (spread > 3.0).all(), spread  # a model cannot memorise one position


def test_visible_landmarks_lie_on_their_bone(renders):
    for i, (_, lms, mask, _) in enumerate(renders):
        for k in np.flatnonzero(np.isfinite(lms[:, 0])):
            label = LMS.regions[k] + 1
            dist = ndimage.distance_transform_edt(mask != label)
            x, y = np.round(lms[k]).astype(int)
            assert dist[y, x] <= 2.0, (i, LMS.names[k], dist[y, x])


def test_image_content_marks_the_landmarks(renders):
    rng = np.random.default_rng(0)
    tips = [k for k in range(LMS.num_landmarks) if k not in HEADS]
    for i, (image, lms, mask, _) in enumerate(renders):
        # Bone is brighter than soft tissue.
        assert image[mask > 0].mean() > image[mask == 0].mean() + 200
        # Femoral heads (overlapping the acetabulum) are brighter than anywhere 20 px away.
        angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        ring = 20 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        for k in HEADS:
            if np.isfinite(lms[k, 0]):
                around = max(_disk_mean(image, lms[k] + d) for d in ring)
                assert _disk_mean(image, lms[k]) > around, (i, LMS.names[k])
        # Tips and corners sit on bone outlines: strong edges, unlike random points.
        smooth = ndimage.gaussian_filter(image, 1.5)
        edges = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
        at_tips = np.mean([_disk_mean(edges, lms[k]) for k in tips if np.isfinite(lms[k, 0])])
        h, w = image.shape
        at_random = np.mean([_disk_mean(edges, p) for p in rng.uniform(8, (w - 8, h - 8), (30, 2))])
        assert at_tips > 1.4 * at_random, i


def _symmetry_axis(lms: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean right-to-left unit vector, pair midpoints along it, and mean pair width."""
    pairs = [(a, b) for a, b in LMS.flip_pairs if np.isfinite(lms[[a, b]]).all()]
    vec = np.array([lms[a] - lms[b] for a, b in pairs])
    u = vec.sum(axis=0) / np.linalg.norm(vec.sum(axis=0))
    mids = np.array([(lms[a] + lms[b]) / 2 for a, b in pairs]) @ u
    return u, mids, float(np.linalg.norm(vec, axis=1).mean())


def test_anatomy_is_mirror_symmetric(renders):
    sacral = [LMS.names.index("sacral_promontory"), LMS.names.index("coccyx_tip")]
    for i, (image, lms, _, _) in enumerate(renders):
        u, mids, width = _symmetry_axis(lms)
        # Pair midpoints and midline landmarks lie near one axis perpendicular to the pairs.
        assert np.ptp(mids) < 0.12 * width, (i, mids, width)
        for k in sacral:
            if np.isfinite(lms[k, 0]):
                assert abs(lms[k] @ u - mids.mean()) < 0.1 * width, (i, LMS.names[k])
        # Radiological convention: the patient's left is on the image right (pose <= 15 deg).
        assert u[0] > np.cos(np.radians(25)), (i, u)
        # A horizontal flip with the declared pairs swapped keeps that convention.
        flipped = affine.apply(lms, affine.hflip(image.shape[1]))[LMS.flip_permutation()]
        assert _symmetry_axis(flipped)[0][0] > np.cos(np.radians(25))


def test_dataset_records_and_splits():
    ds = phantom_dataset(20, seed=3, image_size=(64, 80))
    assert isinstance(ds, Dataset) and len(ds) == 20 and ds.landmark_set is LMS
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [14, 3, 3]
    assert [r.split for r in ds.records] == ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    for i, rec in enumerate(ds.records):
        assert rec.meta["name"] == f"phantom_{i:04d}" and rec.name == f"phantom_{i:04d}"
        assert isinstance(rec.image, np.ndarray) and rec.image.shape == (64, 80)
        assert rec.region_mask.shape == (64, 80) and rec.spacing_source == SPACING_SOURCE
        assert rec.spacing is not None and min(rec.spacing) > 0
        np.testing.assert_array_equal(rec.visible, np.isfinite(rec.landmarks).all(axis=1))
    assert ds.landmarks().shape == (20, LMS.num_landmarks, 2)
    custom = phantom_dataset(10, splits=(("a", 0.5), ("b", 0.0), ("c", 0.5)))
    assert [r.split for r in custom.records] == ["a"] * 5 + ["c"] * 5
    with pytest.raises(ValueError, match="fractions"):
        phantom_dataset(4, splits=(("train", 0.7), ("val", 0.2)))
