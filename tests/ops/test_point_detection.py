"""CenterNet-style targets, losses and decoding (`lmjax.ops.point_detection`), against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.ops import point_detection as pd

NAN4 = [np.nan] * 4
# Two examples, four classes: class 3 absent in example 0 (NaN), class 2 invalid in 1.
BOXES = np.array(
    [
        [[10.0, 12.0, 20.3, 30.0], [40.2, 5.0, 50.0, 15.7], [30.0, 40.0, 45.5, 52.0], NAN4],
        [[3.4, 50.0, 9.0, 57.0], [20.0, 20.0, 41.0, 29.0], [1.0, 1.0, 5.0, 5.0], [44, 30, 52, 44]],
    ],
    np.float32,
)
VALID = np.array([[True, True, True, True], [True, True, False, True]])


def _np_targets(boxes, valid, shape, scale, min_sigma=1.0):
    """NumPy transcription: a Gaussian at the sub-pixel centre, 1 at the nearest pixel."""
    h, w = shape
    out = np.zeros((*boxes.shape[:2], h, w), np.float64)
    for b, c in np.ndindex(*boxes.shape[:2]):
        box = boxes[b, c].astype(np.float64)
        if not valid[b, c] or not np.all(np.isfinite(box)):
            continue
        cx, cy = ((box[:2] + box[2:]) / 2 + 0.5) * scale - 0.5
        sigma = max(min_sigma, min(box[2] - box[0], box[3] - box[1]) * scale / 6)
        x0 = np.clip(np.floor(cx + 0.5), 0, w - 1)
        y0 = np.clip(np.floor(cy + 0.5), 0, h - 1)
        yy, xx = np.mgrid[:h, :w]
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2 - (x0 - cx) ** 2 - (y0 - cy) ** 2
        out[b, c] = np.exp(-d2 / (2 * sigma**2))
    return out.transpose(0, 2, 3, 1)


def _logit(p):
    p = jnp.clip(p, 1e-6, 1 - 1e-6)
    return jnp.log(p) - jnp.log1p(-p)


@pytest.mark.parametrize("scale, shape", [(1.0, (64, 64)), (0.5, (32, 32)), (0.25, (16, 20))])
def test_center_targets_match_numpy_and_peak_at_one(scale, shape):
    got = np.asarray(pd.center_targets(BOXES, VALID, shape, scale))
    want = _np_targets(BOXES, VALID, shape, scale)
    assert got.shape == (2, *shape, 4)
    np.testing.assert_allclose(got, want, atol=2e-6)
    ok = VALID & np.all(np.isfinite(BOXES), -1)
    peak = got.reshape(2, -1, 4).max(1)
    np.testing.assert_array_equal(peak, np.where(ok, 1.0, 0.0))  # exactly 1: focal positives
    centre = (((BOXES[..., :2] + BOXES[..., 2:]) / 2 + 0.5) * scale - 0.5)[0, 0]
    iy, ix = np.unravel_index(got[0, ..., 0].argmax(), shape)
    assert (ix, iy) == tuple(np.floor(centre + 0.5).astype(int))


def test_center_targets_invalid_and_nan_boxes_are_zero_and_sigma_floor():
    got = np.asarray(pd.center_targets(BOXES, VALID, (64, 64), 1.0, min_sigma=2.0))
    assert np.all(got[0, ..., 3] == 0) and np.all(got[1, ..., 2] == 0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _np_targets(BOXES, VALID, (64, 64), 1.0, 2.0), atol=2e-6)


def _np_focal(logits, target, alpha=2.0, beta=4.0):
    """CenterNet's `_neg_loss`, per example, in float64."""
    out = []
    for x, gt in zip(np.asarray(logits, np.float64), np.asarray(target, np.float64), strict=True):
        pred = 1 / (1 + np.exp(-x))
        pos = gt == 1
        pos_loss = (np.log(pred) * (1 - pred) ** alpha)[pos].sum()
        neg_loss = (np.log(1 - pred) * pred**alpha * (1 - gt) ** beta)[~pos].sum()
        n = pos.sum()
        out.append(-neg_loss if n == 0 else -(pos_loss + neg_loss) / n)
    return np.array(out)


def test_focal_loss_matches_a_numpy_transcription():
    target = np.asarray(pd.center_targets(BOXES, VALID, (32, 32), 0.5))
    target = np.concatenate([target, np.zeros_like(target[:1])])  # an example with no object
    logits = np.asarray(jax.random.normal(jax.random.key(0), target.shape)) * 3 - 2
    got = np.asarray(pd.focal_loss(logits, target))
    np.testing.assert_allclose(got, _np_focal(logits, target), rtol=1e-5)
    got = np.asarray(pd.focal_loss(logits, target, alpha=1.5, beta=2.0))
    np.testing.assert_allclose(got, _np_focal(logits, target, 1.5, 2.0), rtol=1e-5)
    # Its minimum is 1 at the peaks and 0 elsewhere (not the Gaussian): that costs ~nothing.
    best = np.where(target >= 1, 13.8, -13.8).astype(np.float32)
    assert np.all(np.asarray(pd.focal_loss(best, target)) < 1e-6)


def _size_map_at_truth(boxes, valid, shape, scale):
    """A size map holding each valid box's log (w, h) on the 2 x 2 pixels around its centre."""
    size = np.zeros((boxes.shape[0], *shape, 2), np.float32)
    for b, c in np.ndindex(*boxes.shape[:2]):
        if valid[b, c] and np.all(np.isfinite(boxes[b, c])):
            cx, cy = ((boxes[b, c, :2] + boxes[b, c, 2:]) / 2 + 0.5) * scale - 0.5
            x0, y0 = int(np.floor(cx)), int(np.floor(cy))
            size[b, y0 : y0 + 2, x0 : x0 + 2] = np.log(boxes[b, c, 2:] - boxes[b, c, :2])
    return size


def test_size_loss_is_zero_at_the_truth_and_l1_off_it():
    size = _size_map_at_truth(BOXES, VALID, (64, 64), 1.0)
    np.testing.assert_allclose(pd.size_loss(size, BOXES, VALID, 1.0), 0.0, atol=1e-6)
    off = size + np.array([0.3, -0.1], np.float32) * (size != 0)
    np.testing.assert_allclose(pd.size_loss(off, BOXES, VALID, 1.0), 0.2, rtol=1e-5)
    none = np.asarray(pd.size_loss(size, BOXES, np.zeros_like(VALID), 1.0))
    np.testing.assert_array_equal(none, 0.0)


@pytest.mark.parametrize("scale, shape", [(1.0, (64, 64)), (0.5, (32, 32))])
def test_decode_recovers_boxes_from_rendered_targets(scale, shape):
    heat = _logit(pd.center_targets(BOXES, VALID, shape, scale))
    wh = np.array([7.5, 11.0], np.float32)
    size = jnp.broadcast_to(jnp.log(wh), (2, *shape, 2))
    boxes, scores, found = jax.jit(pd.decode, static_argnums=2)(heat, size, scale)
    ok = VALID & np.all(np.isfinite(BOXES), -1)
    np.testing.assert_array_equal(found, ok)
    assert np.all(np.asarray(scores)[ok] > 0.99) and np.all(np.asarray(scores)[~ok] < 1e-3)
    assert np.all(np.isnan(np.asarray(boxes)[~ok]))
    got_centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    want_centre = (BOXES[..., :2] + BOXES[..., 2:]) / 2
    err = np.linalg.norm(np.asarray(got_centre - want_centre)[ok], axis=-1)
    assert err.max() < 0.05, err
    np.testing.assert_allclose(
        np.asarray(boxes[..., 2:] - boxes[..., :2])[ok], np.broadcast_to(wh, (6, 2)), rtol=1e-5
    )
    # Without refinement the centre stays on the peak pixel: off by up to half a map pixel.
    coarse, _, _ = pd.decode(heat, size, scale, refine=False)
    coarse_err = np.abs(np.asarray((coarse[..., :2] + coarse[..., 2:]) / 2 - want_centre)[ok])
    assert coarse_err.max() <= 0.5 / scale + 1e-4 and coarse_err.max() > 0.1


def test_decode_thresholds_per_class_and_border_peaks():
    target = pd.center_targets(BOXES, VALID, (64, 64), 1.0) * 0.5  # every peak at 0.5
    size = jnp.zeros((2, 64, 64, 2))
    _, scores, found = pd.decode(
        _logit(target), size, 1.0, threshold=jnp.array([0.4, 0.6, 0.4, 0.4])
    )
    np.testing.assert_allclose(np.asarray(scores)[VALID & ~np.isnan(BOXES[..., 0])], 0.5, rtol=1e-4)
    assert not np.asarray(found)[:, 1].any() and np.asarray(found)[:, 0].all()
    # A peak on the border pixel: no neighbour beyond it, no offset, no NaN.
    edge = np.array([[[-3.0, 10.0, 1.0, 14.0]]], np.float32)
    boxes, _, found = pd.decode(
        _logit(pd.center_targets(edge, [[True]], (16, 16), 1.0)), size[:1, :16, :16], 1.0
    )
    assert bool(found[0, 0])
    np.testing.assert_allclose(boxes[0, 0], [-0.5, 11.5, 0.5, 12.5], atol=1e-5)


def test_detector_loss_combines_terms_and_has_finite_gradients():
    shape = (32, 32)
    key1, key2 = jax.random.split(jax.random.key(1))
    outputs = dict(
        heat=jax.random.normal(key1, (2, *shape, 4)) - 3,
        size=jax.random.normal(key2, (2, *shape, 2)) + 2,
    )

    def total(out):
        loss, _ = pd.detector_loss(out, BOXES, VALID, scale=0.5, size_weight=0.1)
        return loss.sum()

    loss, terms = jax.jit(lambda o: pd.detector_loss(o, BOXES, VALID, scale=0.5))(outputs)
    np.testing.assert_allclose(loss, terms["heat"] + 0.1 * terms["size"], rtol=1e-6)
    np.testing.assert_array_equal(terms["num_objects"], [3, 3])
    assert loss.shape == (2,) and np.all(np.asarray(terms["size"]) > 0)
    grads = jax.jit(jax.grad(total))(outputs)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["size"]).sum()) > 0 and float(jnp.abs(grads["heat"]).sum()) > 0
