"""The synthetic AP pelvis: items, absence, determinism and image/geometry agreement."""

import numpy as np
import pytest

from lmjax.data import pelvis_phantom as pp
from lmjax.data.inspect import summarize
from lmjax.data.items import check_item, item_centroid


@pytest.fixture(scope="module")
def ds():
    return pp.pelvis_phantom_dataset(12, seed=3, size=(128, 128), absent_p=0.3)


def test_item_set_kinds_and_flip_pairs():
    s = pp.pelvis_phantom_item_set()
    kinds = s.item_kinds
    assert (kinds.count("landmark"), kinds.count("outline"), kinds.count("patch")) == (8, 6, 3)
    assert len(s.flip_pairs) == 7
    for a, b in s.flip_pairs:
        assert s.names[a].endswith("_left") and s.names[b].endswith("_right")
        assert s.names[a][:-5] == s.names[b][:-6] and kinds[a] == kinds[b]


def test_deterministic_per_seed():
    a = pp.render_pelvis_phantom(5, 2, size=(96, 96))
    b = pp.render_pelvis_phantom(5, 2, size=(96, 96))
    c = pp.render_pelvis_phantom(6, 2, size=(96, 96))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    assert not np.array_equal(a[0], c[0])


def test_polygons_are_valid_and_centroids_match(ds):
    s = ds.landmark_set
    for r in ds:
        for k, (name, kind) in enumerate(zip(s.names, s.item_kinds, strict=True)):
            if kind == "landmark":
                assert name not in r.polygons
                continue
            if not r.visible[k]:
                assert name not in r.polygons and np.isnan(r.landmarks[k]).all()
                continue
            v = check_item(kind, r.polygons[name], name=name, source=r.name)
            assert v.dtype == np.float32 and 8 <= len(v) <= 24
            np.testing.assert_allclose(r.landmarks[k], item_centroid(kind, v), atol=1e-4)


def test_absent_items_and_the_ball_stays(ds):
    s = ds.landmark_set
    ball = s.names.index(pp.BALL)
    assert all(r.visible[ball] and pp.BALL in r.polygons for r in ds)
    missing = np.stack([~r.visible for r in ds])
    assert missing.any() and not missing.all()
    for r in ds:
        assert np.isnan(r.landmarks[~r.visible]).all()
        assert np.isfinite(r.landmarks[r.visible]).all()
    full = pp.pelvis_phantom_dataset(3, absent_p=0.0)
    assert all(r.visible.all() for r in full)


def test_image_agrees_with_the_ball_geometry(ds):
    from lmjax.ops.item_targets import polygon_masks

    for r in ds.records[:4]:
        v = r.polygons[pp.BALL]
        mask = np.asarray(
            polygon_masks(v[None, None], np.ones((1, 1, len(v)), bool), shape=r.image.shape)
        )[0, :, :, 0].astype(bool)
        assert mask.sum() > 20
        assert r.image[mask].mean() > r.image[~mask].mean() + 1000


def test_spacing_splits_and_summary(ds):
    assert {r.spacing for r in ds} == {(2.5, 2.5)}
    assert {r.spacing_source for r in ds} == {"phantom"}
    assert [r.split for r in ds] == ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    summary = summarize(ds)
    assert summary["items"] == {"landmark": 8, "outline": 6, "patch": 3}
    assert not summary["errors"]


def test_registered_format():
    from lmjax.data.datasets import load_dataset

    out = load_dataset("unused", format="pelvis_phantom", phantom_size=2, seed=1)
    assert out.name == "pelvis_phantom" and len(out) == 2
