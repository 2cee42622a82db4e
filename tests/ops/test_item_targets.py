"""Outline and patch rendering against skimage / NumPy references, under jax.jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.draw import polygon as sk_polygon

from lmjax.ops import apply_affine, item_targets
from lmjax.ops.item_targets import (
    check_item_geometry,
    item_boxes,
    mm_to_pixels,
    polygon_masks,
    polyline_masks,
)

H, W = 40, 48

render_polygon = jax.jit(functools.partial(polygon_masks, shape=(H, W)))
render_polyline = jax.jit(functools.partial(polyline_masks, shape=(H, W)))


def _sk_polygon(c):
    c = np.asarray(c, np.float64)
    out = np.zeros((H, W), bool)
    rr, cc = sk_polygon(c[:, 1], c[:, 0], (H, W))
    out[rr, cc] = True
    return out


def _np_distance(c):
    """Brute-force distance from every pixel centre to the polyline, float64."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    best = np.full((H, W), np.inf)
    for a, b in zip(c[:-1], c[1:], strict=True):
        ab = b - a
        len2 = ab @ ab
        t = np.zeros_like(xs) if len2 == 0 else ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / len2
        t = np.clip(t, 0, 1)
        best = np.minimum(best, np.hypot(xs - a[0] - t * ab[0], ys - a[1] - t * ab[1]))
    return best


def _star(rng, cx, cy, r, n):
    """A simple (non-self-intersecting) star-shaped polygon."""
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.4 * r, r, n)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], -1).astype(np.float32)


def _ones(*shape):
    return np.ones(shape, bool)


@pytest.mark.parametrize("integer", [False, True])
def test_simple_polygons_match_skimage_exactly(integer):
    rng = np.random.default_rng(0)
    for _ in range(6):
        c = _star(rng, 24, 20, 18, int(rng.integers(3, 10)))
        c = np.round(c) if integer else c
        m = np.asarray(render_polygon(c[None, None], _ones(1, 1, len(c))))[0, ..., 0]
        np.testing.assert_array_equal(m > 0, _sk_polygon(c))


def test_boundary_pixels_are_inside_as_in_skimage():
    square = np.array([[2, 2], [10, 2], [10, 8], [2, 8]], np.float32)
    m = np.asarray(render_polygon(square[None, None], _ones(1, 1, 4)))[0, ..., 0]
    assert m.sum() == 9 * 7 and m[2:9, 2:11].all()
    np.testing.assert_array_equal(m > 0, _sk_polygon(square))


def test_arbitrary_polygons_agree_inside_and_differ_on_few_boundary_pixels():
    # Self-intersecting polygons with integer vertices: skimage leaves some pixel
    # centres that sit exactly where two edges cross outside, this renderer puts
    # every on-edge centre inside. Away from the edges both agree exactly.
    rng = np.random.default_rng(1)
    total = 0
    for trial in range(12):
        n = int(rng.integers(3, 9))
        c = rng.uniform([-5, -5], [W + 5, H + 5], size=(n, 2)).astype(np.float32)
        c = np.round(c) if trial % 2 else c
        m = np.asarray(render_polygon(c[None, None], _ones(1, 1, n)))[0, ..., 0] > 0
        diff = m != _sk_polygon(c)
        near = _np_distance(np.concatenate([c, c[:1]]).astype(np.float64)) < 1e-3
        assert not (diff & ~near).any()
        total += diff.sum()
    assert total <= 4


def test_polylines_match_brute_force_distance():
    rng = np.random.default_rng(2)
    for _ in range(6):
        n = int(rng.integers(2, 8))
        c = rng.uniform(-3, 45, (n, 2)).astype(np.float32)
        width = float(rng.uniform(0.5, 6.0))
        d = _np_distance(c.astype(np.float64))
        m = np.asarray(render_polyline(c[None, None], _ones(1, 1, n), width=width))[0, ..., 0]
        ambiguous = np.abs(d - width / 2) < 1e-4
        np.testing.assert_array_equal((m > 0)[~ambiguous], (d <= width / 2)[~ambiguous])


def test_soft_polyline_is_a_coverage_ramp():
    c = np.array([[5.0, 10.0], [40.0, 10.0]], np.float32)
    soft = np.asarray(
        polyline_masks(c[None, None], _ones(1, 1, 2), shape=(H, W), width=2.0, soft=True)
    )[0, ..., 0]
    expected = np.clip(1.5 - _np_distance(c.astype(np.float64)), 0, 1)
    np.testing.assert_allclose(soft, expected, atol=1e-5)


def test_padded_and_middle_invalid_vertices_change_nothing():
    rng = np.random.default_rng(3)
    poly = _star(rng, 24, 20, 15, 6)
    pad = np.concatenate([poly, np.full((4, 2), 7.0, np.float32)])
    valid = np.array([True] * 6 + [False] * 4)
    gap = np.insert(poly, 3, [np.nan, np.nan], axis=0)
    gap_valid = np.array([True] * 3 + [False] + [True] * 3)
    ref = _sk_polygon(poly)
    for v, ok in [(pad, valid), (gap, gap_valid)]:
        m = np.asarray(render_polygon(v[None, None], ok[None, None]))[0, ..., 0]
        np.testing.assert_array_equal(m > 0, ref)
        line = render_polyline(v[None, None], ok[None, None], width=3.0)
        np.testing.assert_array_equal(
            line, render_polyline(poly[None, None], _ones(1, 1, 6), width=3.0)
        )


def test_affine_moved_geometry_renders_the_moved_polygon():
    rng = np.random.default_rng(4)
    poly = _star(rng, 20, 18, 10, 7)
    theta = 0.4
    mat = np.array(
        [
            [1.2 * np.cos(theta), -np.sin(theta), 6.0],
            [np.sin(theta), 1.1 * np.cos(theta), 2.0],
            [0, 0, 1],
        ],
        np.float32,
    )
    moved = np.asarray(jax.jit(apply_affine)(poly[None], mat[None]))[0]
    m = np.asarray(render_polygon(moved[None, None], _ones(1, 1, 7)))[0, ..., 0]
    np.testing.assert_array_equal(m > 0, _sk_polygon(moved))
    assert abs(m.sum() - _sk_polygon(poly).sum() * abs(np.linalg.det(mat[:2, :2]))) < 0.2 * m.sum()


def test_invisible_degenerate_and_missing_items_render_empty_with_nan_boxes():
    v = np.array(
        [
            [[5, 5], [30, 5], [20, 30], [0, 0]],  # ok (padded)
            [[5, 5], [30, 5], [20, 30], [0, 0]],  # invisible
            [[9, 9], [9, 9], [9, 9], [0, 0]],  # zero length / fewer than 3 distinct
            [[np.nan, np.nan]] * 4,  # missing
        ],
        np.float32,
    )[None]
    valid = np.array([[1, 1, 1, 0]] * 4, bool)[None]
    visible = np.array([[True, False, True, True]])
    for render in (render_polygon, functools.partial(render_polyline, width=2.0)):
        m = np.asarray(render(v, valid, visible=visible))
        assert m.shape == (1, H, W, 4) and m.dtype == np.float32
        assert m[..., 0].sum() > 0 and not np.isnan(m).any()
        assert m[..., 1:].sum() == 0
    boxes = np.asarray(jax.jit(item_boxes)(v, valid, visible=visible))
    assert boxes.shape == (1, 4, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes[0, 0], [5, 5, 30, 30])
    assert np.isnan(boxes[0, 1]).all() and np.isnan(boxes[0, 3]).all()
    np.testing.assert_array_equal(boxes[0, 2], [9, 9, 9, 9])


def test_boxes_bound_the_rendered_masks():
    rng = np.random.default_rng(5)
    b, k, n = 2, 3, 5
    v = rng.uniform(4, 36, (b, k, n, 2)).astype(np.float32)
    valid = np.ones((b, k, n), bool)
    valid[0, 1, 3:] = False
    width = np.array([1.0, 2.0, 4.0], np.float32)
    masks = np.asarray(render_polyline(v, valid, width=width))
    boxes = np.asarray(item_boxes(v, valid, pad=width / 2))
    for i in range(b):
        for j in range(k):
            rows, cols = np.nonzero(masks[i, ..., j])
            x0, y0, x1, y1 = boxes[i, j]
            # Every switched-on centre is inside; each side is within a pixel
            # (plus round-cap slack) of the outermost one.
            assert x0 <= cols.min() and cols.max() <= x1 and y0 <= rows.min() and rows.max() <= y1
            slack = 1.0 + 0.5
            assert cols.min() - x0 < slack and x1 - cols.max() < slack
            assert rows.min() - y0 < slack and y1 - rows.max() < slack


def test_landmark_boxes_clip_to_the_image():
    pts = np.array([[[10.0, 12.0], [1.0, 38.5], [100.0, 5.0], [np.nan, 3.0]]], np.float32)
    boxes = np.asarray(item_boxes(pts, _ones(1, 4), pad=2.0, shape=(H, W)))
    np.testing.assert_array_equal(boxes[0, 0], [8, 10, 12, 14])
    np.testing.assert_array_equal(boxes[0, 1], [0, 36.5, 3, H - 1])
    assert np.isnan(boxes[0, 2]).all() and np.isnan(boxes[0, 3]).all()


def test_batched_bf16_and_vmap():
    rng = np.random.default_rng(6)
    v = np.stack([_star(rng, 20, 20, 12, 5) for _ in range(6)]).reshape(2, 3, 5, 2)
    m = polygon_masks(v, _ones(2, 3, 5), shape=(H, W), dtype=jnp.bfloat16)
    assert m.shape == (2, H, W, 3) and m.dtype == jnp.bfloat16
    per = jax.vmap(lambda a, b: polygon_masks(a[None], b[None], shape=(H, W))[0])(v, _ones(2, 3, 5))
    np.testing.assert_array_equal(np.asarray(m, np.float32), per)


def test_validator_messages():
    check_item_geometry("patch", [[0, 0], [4, 0], [0, 3], [np.nan, np.nan]], name="ok")
    check_item_geometry("outline", np.full((3, 2), np.nan), name="missing")
    check_item_geometry("landmark", [3.0, 4.0], name="lm")
    cases = [
        ("outline", [[1, 1], [1, 1], [1, 1]], "outline 'ilium': zero length"),
        ("outline", [[1, 1]], "outline 'ilium': zero length"),
        ("patch", [[0, 0], [1, 1], [0, 0]], "patch 'ilium': 2 distinct points"),
        ("patch", [[0, 0], [1, 1], [2, 2]], "patch 'ilium': zero area"),
        ("patch", [[0, 0], [1, np.nan], [2, 2]], "one finite and one NaN"),
        ("landmark", [[0, 0], [1, 1]], "landmark 'ilium': expected one point"),
        ("circle", [[0, 0]], "unknown kind 'circle'"),
    ]
    for kind, v, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            check_item_geometry(kind, v, name="ilium")
        assert "\n" not in str(err.value) and "ilium" in str(err.value)


def test_mm_to_pixels():
    np.testing.assert_allclose(mm_to_pixels(2.0, (0.5, 0.25)), [4.0, 8.0])
    np.testing.assert_allclose(mm_to_pixels([2.0, 1.0], (0.5, 0.5)).mean(-1), [4.0, 2.0])
    with pytest.raises(ValueError, match="spacing"):
        mm_to_pixels(2.0, (0.0, 0.5))
    assert item_targets.KINDS == ("landmark", "outline", "patch")


def test_collinear_patch_renders_empty():
    line = np.array([[2, 2], [10, 10], [20, 20]], np.float32)
    assert float(jnp.sum(render_polygon(line[None, None], _ones(1, 1, 3)))) == 0
