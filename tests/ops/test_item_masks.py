"""Mixed-kind item masks and boxes against per-kind references and skimage."""

import numpy as np
import pytest
from skimage import draw

from lmjax.ops.item_masks import disc_masks, item_boxes_by_kind, item_masks, kind_ids
from lmjax.ops.item_targets import polygon_masks, polyline_masks

SHAPE = (24, 28)


def _items():
    v = np.full((1, 3, 5, 2), np.nan, np.float32)
    v[0, 0, 0] = [9.3, 11.6]  # landmark
    v[0, 1, :3] = [[2.0, 3.0], [20.0, 4.5], [22.0, 18.0]]  # outline
    v[0, 2, :5] = [[4.0, 6.0], [15.0, 5.0], [17.0, 16.0], [9.0, 20.0], [3.0, 14.0]]  # patch
    return v, np.isfinite(v).all(-1), kind_ids(["landmark", "outline", "patch"])


def test_disc_matches_skimage_disk():
    centre, radius = (11.6, 9.3), 3.7  # (row, col); skimage counts d < r, never == r here
    ref = np.zeros(SHAPE, bool)
    ref[draw.disk(centre, radius, shape=SHAPE)] = True
    got = disc_masks(np.array([[[centre[1], centre[0]]]]), shape=SHAPE, radius=radius)
    np.testing.assert_array_equal(np.asarray(got[0, ..., 0]) > 0, ref)


def test_each_channel_is_its_kinds_renderer():
    v, ok, kinds = _items()
    got = np.asarray(item_masks(v, ok, kinds, shape=SHAPE, radius=2.5, width=2.0))
    disc = disc_masks(v[:, :1, 0], shape=SHAPE, radius=2.5)
    line = polyline_masks(v[:, 1:2], ok[:, 1:2], shape=SHAPE, width=2.0)
    fill = polygon_masks(v[:, 2:3], ok[:, 2:3], shape=SHAPE)
    np.testing.assert_array_equal(got[..., 0], np.asarray(disc)[..., 0])
    np.testing.assert_array_equal(got[..., 1], np.asarray(line)[..., 0])
    np.testing.assert_array_equal(got[..., 2], np.asarray(fill)[..., 0])
    ref = np.zeros(SHAPE, bool)
    ref[draw.polygon(v[0, 2, :, 1], v[0, 2, :, 0], shape=SHAPE)] = True
    np.testing.assert_array_equal(got[0, ..., 2] > 0, ref)


def test_kinds_per_example_pick_the_renderer_per_channel():
    v, ok, kinds = _items()
    swapped = np.asarray(kinds)[None, [2, 1, 0]]  # per-example kinds, [B, K]
    got = np.asarray(item_masks(v, ok, swapped, shape=SHAPE, radius=2.5, width=2.0))
    # A "patch" of one vertex encloses nothing; a "landmark" reads vertex 0 only.
    assert got[..., 0].sum() == 0
    np.testing.assert_array_equal(
        got[..., 2], np.asarray(disc_masks(v[:, 2:3, 0], shape=SHAPE, radius=2.5))[..., 0]
    )


def test_boxes_bound_what_is_drawn():
    v, ok, kinds = _items()
    masks = np.asarray(item_masks(v, ok, kinds, shape=SHAPE, radius=2.5, width=2.0))
    boxes = np.asarray(item_boxes_by_kind(v, ok, kinds, radius=2.5, width=2.0))
    for k in range(3):
        ys, xs = np.nonzero(masks[0, ..., k])
        x0, y0, x1, y1 = boxes[0, k]
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        # tight: within a pixel of the drawn pixels
        assert xs.min() - x0 < 1 and x1 - xs.max() < 1 and ys.min() - y0 < 1 and y1 - ys.max() < 1
    np.testing.assert_allclose(
        boxes[0, 0], [9.3 - 2.5, 11.6 - 2.5, 9.3 + 2.5, 11.6 + 2.5], rtol=1e-6
    )


def test_invisible_items_render_empty_and_have_no_box():
    v, ok, kinds = _items()
    visible = np.array([[True, False, True]])
    masks = np.asarray(item_masks(v, ok, kinds, shape=SHAPE, radius=2, width=2, visible=visible))
    boxes = np.asarray(item_boxes_by_kind(v, ok, kinds, radius=2, width=2, visible=visible))
    assert masks[..., 1].sum() == 0 and masks[..., 0].sum() > 0
    assert np.isnan(boxes[0, 1]).all() and np.isfinite(boxes[0, [0, 2]]).all()


@pytest.mark.parametrize("soft", [False, True])
def test_soft_discs_cover_about_the_disc_area(soft):
    got = disc_masks(np.array([[[12.3, 10.8]]]), shape=SHAPE, radius=4.0, soft=soft)
    assert abs(float(got.sum()) - np.pi * 16) < (2.0 if soft else 5.0)
