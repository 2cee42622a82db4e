"""Detection ops against NumPy references and hand-built assignment cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lmjax.ops import detection as det

EPS = 1e-7


def np_iou_terms(a, b, alpha=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1] + EPS
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1] + EPS
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    union = wa * ha + wb * hb - iw * ih + EPS
    iou = iw * ih / union
    cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
    ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    giou = iou - (cw * ch + EPS - union) / (cw * ch + EPS)
    ca, cb = (a[..., :2] + a[..., 2:]) / 2, (b[..., :2] + b[..., 2:]) / 2
    rho2 = ((ca - cb) ** 2).sum(-1)
    v = 4 / math.pi**2 * (np.arctan(wb / hb) - np.arctan(wa / ha)) ** 2
    alpha = v / (v - iou + 1 + EPS) if alpha is None else alpha
    return iou, giou, iou - rho2 / (cw**2 + ch**2 + EPS) - alpha * v


def random_boxes(rng, n, scale=20.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(1, scale, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_make_anchors_centres_and_strides():
    anchors, strides = det.make_anchors([(2, 3), (1, 1)], (8, 16))
    np.testing.assert_allclose(anchors[:3], [[4, 4], [12, 4], [20, 4]])
    np.testing.assert_allclose(anchors[3:6], [[4, 12], [12, 12], [20, 12]])
    np.testing.assert_allclose(anchors[6], [8, 8])
    np.testing.assert_allclose(strides, [8] * 6 + [16])


def test_dist_bbox_round_trip_and_clamp():
    rng = np.random.default_rng(0)
    anchors = rng.uniform(5, 50, (32, 2)).astype(np.float32)
    dist = rng.uniform(0, 14.9, (32, 4)).astype(np.float32)
    boxes = jax.jit(det.dist2bbox)(dist, anchors)
    ref = np.concatenate([anchors - dist[:, :2], anchors + dist[:, 2:]], -1)
    np.testing.assert_allclose(boxes, ref, rtol=1e-6)
    np.testing.assert_allclose(det.bbox2dist(anchors, boxes, 16), dist, atol=1e-4)
    far = np.array([[0.0, 0.0, 100.0, 3.0]], np.float32)
    got = det.bbox2dist(np.array([[2.0, 5.0]], np.float32), far, 16)
    np.testing.assert_allclose(got, [[2.0, 5.0, 14.99, 0.0]], atol=1e-6)


def test_dfl_decode_is_softmax_expectation():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 64)).astype(np.float32)
    got = jax.jit(det.dfl_decode)(logits)
    x = logits.reshape(3, 5, 4, 16)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, (p * np.arange(16)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize(
    "a, b, want",
    [
        ([1, 2, 5, 9], [1, 2, 5, 9], (1.0, 1.0, 1.0)),
        ([0, 0, 1, 1], [2, 0, 3, 1], (0.0, -1 / 3, -0.4)),  # disjoint, same shape
        ([0, 0, 4, 4], [1, 1, 3, 3], (0.25, 0.25, 0.25)),  # nested, same centre and aspect
    ],
)
def test_iou_family_hand_cases(a, b, want):
    a, b = np.float32(a), np.float32(b)
    for fn, w in zip((det.box_iou, det.giou, det.ciou), want, strict=True):
        np.testing.assert_allclose(float(fn(a, b)), w, atol=1e-5)


def test_iou_family_matches_numpy_and_broadcasts():
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 64), random_boxes(rng, 64)
    iou, g, c = np_iou_terms(a, b)
    np.testing.assert_allclose(jax.jit(det.box_iou)(a, b), iou, atol=1e-5)
    np.testing.assert_allclose(jax.jit(det.giou)(a, b), g, atol=1e-5)
    np.testing.assert_allclose(jax.jit(det.ciou)(a, b), c, atol=1e-5)
    np.testing.assert_allclose(det.ciou(a, b), det.ciou(b, a), atol=1e-6)
    pair = det.ciou(a[:5, None], b[None, :7])
    assert pair.shape == (5, 7)
    np.testing.assert_allclose(pair[2, 3], np_iou_terms(a[2], b[3])[2], rtol=1e-5)


def test_giou_ciou_dfl_gradients():
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 6), random_boxes(rng, 6)
    same_aspect = np.concatenate([b[:, :2] + 1.5, b[:, 2:] + rng.uniform(1, 3, (6, 1))], -1)
    same_aspect[:, 3] = same_aspect[:, 1] + (b[:, 3] - b[:, 1]) / (b[:, 2] - b[:, 0]) * (
        same_aspect[:, 2] - same_aspect[:, 0]
    )
    with jax.enable_x64(True):
        a, b = jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64)
        check_grads(det.giou, (a, b), order=1, modes=["rev"])
        # With equal aspect ratios v = 0 and dv = 0, so the alpha convention cannot matter.
        check_grads(det.ciou, (jnp.asarray(same_aspect, jnp.float64), b), order=1, modes=["rev"])
        logits = jnp.asarray(rng.normal(size=(5, 4, 16)), jnp.float64)
        target = jnp.asarray(rng.uniform(0.1, 14.9, (5, 4)), jnp.float64)
        check_grads(lambda x: det.dfl_loss(x, target), (logits,), order=1, modes=["rev"])


def test_ciou_gradient_treats_alpha_as_constant():
    rng = np.random.default_rng(7)
    a, b = random_boxes(rng, 6).astype(np.float64), random_boxes(rng, 6).astype(np.float64)
    with jax.enable_x64(True):
        got = np.asarray(jax.grad(lambda x: det.ciou(x, jnp.asarray(b)).sum())(jnp.asarray(a)))
    iou, _, _ = np_iou_terms(a, b)
    wa, ha = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1] + EPS
    wb, hb = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1] + EPS
    v = 4 / math.pi**2 * (np.arctan(wb / hb) - np.arctan(wa / ha)) ** 2
    alpha0 = v / (v - iou + 1 + EPS)  # frozen at the evaluation point
    fd = np.zeros_like(a)
    for j in range(4):
        step = np.zeros_like(a)
        step[:, j] = 1e-6
        up, down = np_iou_terms(a + step, b, alpha0)[2], np_iou_terms(a - step, b, alpha0)[2]
        fd[:, j] = (up - down) / 2e-6
    np.testing.assert_allclose(got, fd, atol=1e-6)
    assert np.abs(v).min() > 1e-4  # the aspect term is really exercised


def test_dfl_loss_two_bin_reference_and_layouts():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(7, 4, 16)).astype(np.float32)
    target = rng.uniform(0, 14.99, (7, 4)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tl = np.floor(target).astype(int)
    wl = tl + 1 - target
    pick = lambda i: np.take_along_axis(logp, i[..., None], -1)[..., 0]
    ref = -(wl * pick(tl) + (1 - wl) * pick(tl + 1)).mean(-1)
    np.testing.assert_allclose(jax.jit(det.dfl_loss)(logits, target), ref, rtol=1e-5)
    np.testing.assert_allclose(det.dfl_loss(logits.reshape(7, 64), target), ref, rtol=1e-5)
    # The loss is minimal at the two-bin distribution, whose expectation is the target.
    best = np.full((7, 4, 16), -30.0, np.float32)
    np.put_along_axis(best, tl[..., None], np.log(wl)[..., None], -1)
    np.put_along_axis(best, tl[..., None] + 1, np.log(1 - wl)[..., None], -1)
    assert (det.dfl_loss(best, target) <= det.dfl_loss(logits, target)).all()
    np.testing.assert_allclose(det.dfl_decode(best.reshape(7, 64)), target, atol=1e-4)


# --- task-aligned assignment on a 4x4 grid at stride 8 (centres 4, 12, 20, 28) ---

ANCHORS, _ = det.make_anchors([(4, 4)], (8,))


def assign(gt_boxes, pred_boxes=None, gt_valid=None, labels=None, **kw):
    gt_boxes = np.asarray(gt_boxes, np.float32)[None]
    m = gt_boxes.shape[1]
    if pred_boxes is None:  # every anchor predicts the first GT box
        pred_boxes = np.broadcast_to(gt_boxes[:, :1], (1, 16, 4))
    pred_boxes = np.asarray(pred_boxes, np.float32).reshape(1, 16, 4)
    scores = np.full((1, 16, 3), 0.5, np.float32)
    labels = np.arange(m)[None] % 3 if labels is None else np.asarray(labels)[None]
    valid = np.ones((1, m), bool) if gt_valid is None else np.asarray(gt_valid)[None]
    fn = jax.jit(det.task_aligned_assign, static_argnames=("topk", "min_box_side"))
    return fn(scores, pred_boxes, ANCHORS, labels, gt_boxes, valid, **kw)


def test_tiny_box_needs_min_box_side():
    box = [[5.0, 5.0, 11.0, 11.0]]  # 6 px, between anchor centres 4 and 12
    assert int(assign(box)["fg"].sum()) == 0
    out = assign(box, min_box_side=16.0)
    assert int(out["fg"].sum()) >= 1
    # Targets keep the real box, not the floored one.
    np.testing.assert_allclose(out["target_boxes"][out["fg"]], np.float32(box * 4), atol=0)


def test_anchor_claimed_by_two_gts_goes_to_higher_iou():
    gts = [[0.0, 0.0, 18.0, 18.0], [10.0, 10.0, 30.0, 30.0]]  # both contain anchor (12, 12)
    shared = 1 * 4 + 1
    for winner in (0, 1):
        pred = np.tile(np.float32([0, 0, 1, 1]), (16, 1))
        pred[shared] = gts[winner]
        out = assign(gts, pred)
        assert bool(out["fg"][0, shared])
        assert int(out["gt_index"][0, shared]) == winner
        assert int(out["target_labels"][0, shared]) == winner
        np.testing.assert_allclose(out["target_boxes"][0, shared], gts[winner])
        # Every other anchor of the loser is still its positive (all candidates, < topk).
        loser = 1 - winner
        assert int((out["gt_index"][0] == loser).sum()) == (4 if loser == 0 else 9) - 1


def test_topk_limits_positives_and_padding_assigns_nothing():
    big = [[0.0, 0.0, 32.0, 32.0]]  # all 16 anchors are candidates
    assert int(assign(big)["fg"].sum()) == 10
    assert int(assign(big, topk=3)["fg"].sum()) == 3
    none = assign(big, gt_valid=[False])
    assert int(none["fg"].sum()) == 0
    assert float(jnp.abs(none["target_scores"]).sum()) == 0
    assert (np.asarray(none["gt_index"]) == -1).all()
    padded = assign(big + [[0.0, 0.0, 32.0, 32.0]], gt_valid=[True, False], labels=[1, 2])
    for key, val in assign(big, labels=[1]).items():
        np.testing.assert_array_equal(padded[key], val)


def test_target_scores_max_equals_max_iou_per_gt():
    rng = np.random.default_rng(5)
    gts = np.float32([[1, 2, 19, 17], [9, 11, 31, 30]])
    centres = np.asarray(ANCHORS)
    pred = np.concatenate([centres - rng.uniform(3, 12, (16, 2)), centres + 6], -1)
    out = assign(gts, pred, labels=[0, 2])
    overlaps = np.maximum(np_iou_terms(gts[:, None], pred[None])[2], 0)  # [M, A]
    for m, label in enumerate((0, 2)):
        mine = np.asarray(out["gt_index"][0]) == m
        assert mine.any()
        got = np.asarray(out["target_scores"][0, mine, label]).max()
        np.testing.assert_allclose(got, overlaps[m, mine].max(), rtol=1e-4)
        assert (np.asarray(out["target_scores"][0, mine]).sum(-1) > 0).all()
    assert float(out["target_scores"][0, ~np.asarray(out["fg"][0])].sum()) == 0


# --- loss and decoding ---


def perfect_logits(anchors, strides, box, reg_max=16):
    """Box logits whose DFL expectation is `box` from every anchor (clamped distances)."""
    dist = np.asarray(det.bbox2dist(anchors / strides[:, None], box / strides[:, None], reg_max))
    tl = np.floor(dist).astype(int)
    wl = tl + 1 - dist
    logits = np.full(dist.shape + (reg_max,), -30.0, np.float32)
    np.put_along_axis(logits, tl[..., None], np.log(wl)[..., None], -1)
    np.put_along_axis(logits, tl[..., None] + 1, np.log(1 - wl + 1e-12)[..., None], -1)
    return logits.reshape(*dist.shape[:-1], 4 * reg_max)


def test_detection_loss_finite_gradient_and_lower_at_targets():
    anchors, strides = det.make_anchors([(8, 8)], (8,))
    anchors, strides = np.asarray(anchors), np.asarray(strides)
    gt = np.float32([[[18, 22, 38, 40], [0, 0, 0, 0]], [[30, 8, 52, 26], [0, 0, 0, 0]]])
    labels = np.int32([[1, 0], [2, 0]])
    valid = np.array([[True, False], [True, False]])
    rng = np.random.default_rng(6)
    box_logits = rng.normal(size=(2, 64, 64)).astype(np.float32)
    cls_logits = rng.normal(size=(2, 64, 3)).astype(np.float32)

    def loss_fn(box, cls):
        return det.detection_loss(box, cls, anchors, strides, labels, gt, valid)

    fn = jax.jit(jax.value_and_grad(loss_fn, (0, 1), has_aux=True))
    (loss, terms), grads = fn(box_logits, cls_logits)
    assert np.isfinite(float(loss)) and int(terms["num_fg"]) > 0
    for g in grads:
        assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0

    good_box = np.stack([perfect_logits(anchors, strides, gt[i, 0]) for i in range(2)])
    inside = (anchors > gt[:, :1, :2]).all(-1) & (anchors < gt[:, :1, 2:]).all(-1)  # [B, A]
    good_cls = np.full((2, 64, 3), -9.0, np.float32)
    for i in range(2):
        good_cls[i, inside[i], labels[i, 0]] = 9.0
    (good, good_terms), good_grads = fn(good_box, good_cls)
    assert all(np.isfinite(np.asarray(g)).all() for g in good_grads)
    assert int(good_terms["num_fg"]) == inside.sum()  # every candidate, all under topk
    assert float(good) < float(loss)
    assert float(good_terms["box"]) < 1e-4 and float(good_terms["cls"]) < 0.01
    # What remains is the DFL floor: the entropy of the two-bin target distributions.
    assert float(good_terms["dfl"]) < math.log(2) + 1e-3


def test_top1_per_class_thresholds_and_nan():
    scores = np.zeros((2, 5, 3), np.float32)
    scores[0, 3, 0], scores[0, 1, 1], scores[0, 4, 2] = 0.9, 0.3, 0.6
    scores[1, 2, 0] = 0.2
    boxes = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
    got_boxes, got_scores, found = jax.jit(det.top1_per_class)(
        scores, boxes, np.float32([0.5, 0.25, 0.7])
    )
    np.testing.assert_array_equal(found, [[True, True, False], [False, False, False]])
    np.testing.assert_allclose(got_scores[0], [0.9, 0.3, 0.6])
    np.testing.assert_array_equal(got_boxes[0, 0], boxes[0, 3])
    np.testing.assert_array_equal(got_boxes[0, 1], boxes[0, 1])
    assert np.isnan(np.asarray(got_boxes[0, 2])).all() and np.isnan(np.asarray(got_boxes[1])).all()
    _, _, found = det.top1_per_class(scores, boxes, 0.25)
    np.testing.assert_array_equal(found, [[True, True, True], [False, False, False]])
