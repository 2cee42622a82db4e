"""Losses against NumPy references under jit, masking of missing landmarks, gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lmjax.ops import losses as L

B, H, W, K = 2, 6, 5, 3
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(B, H, W, K)).astype(np.float32)
PROBS = (1 / (1 + np.exp(-RNG.normal(size=(B, H, W, K))))).astype(np.float32)
VIS = np.array([[True, False, True], [True, True, True]])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _masked_mean(per_k, vis):
    return np.array([per_k[b][vis[b]].mean() if vis[b].any() else 0.0 for b in range(len(vis))])


def _nan_channels(target, vis):
    t = np.array(target, np.float32)
    for b, k in zip(*np.nonzero(~vis), strict=True):
        t[b, ..., k] = np.nan
    return t


# ---------------------------------------------------------------- NumPy references


def np_heatmap_mse(p, t, vis):
    return _masked_mean(((p - t) ** 2).mean(axis=(1, 2)), vis)


def np_dice(x, t, vis, smooth=1.0, from_logits=True):
    p = _sigmoid(x) if from_logits else x
    d = (2 * (p * t).sum((1, 2)) + smooth) / (p.sum((1, 2)) + t.sum((1, 2)) + smooth)
    return _masked_mean(1 - d, vis)


def np_bce(x, t, vis):
    p = _sigmoid(x.astype(np.float64))
    per = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return _masked_mean(per.mean((1, 2)), vis)


def np_kl(x, t, vis):
    b = x.shape[0]
    flat_x = x.reshape(b, -1, x.shape[-1]).astype(np.float64)
    log_q = flat_x - np.log(np.exp(flat_x).sum(1, keepdims=True))
    p = t.reshape(b, -1, t.shape[-1]) / t.reshape(b, -1, t.shape[-1]).sum(1, keepdims=True)
    kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q), 0).sum(1)
    return _masked_mean(kl, vis)


def np_ncc(pred, t, vis):
    b, k = pred.shape[0], pred.shape[-1]
    out = np.zeros((b, k))
    for i in range(b):
        for j in range(k):
            out[i, j] = 1 - np.corrcoef(pred[i, ..., j].ravel(), t[i, ..., j].ravel())[0, 1]
    return _masked_mean(out, vis)


def np_wing(d, w=10.0, eps=2.0):
    a = np.abs(d)
    return np.where(a < w, w * np.log(1 + a / eps), a - (w - w * np.log(1 + w / eps))).sum(-1)


def _jit(fn, **kw):
    return jax.jit(functools.partial(fn, **kw))


@pytest.mark.parametrize(
    "fn,ref,pred",
    [
        (L.heatmap_mse, np_heatmap_mse, PROBS[::-1]),
        (L.dice_loss, np_dice, LOGITS),
        (L.bce_loss, np_bce, LOGITS),
        (L.kl_heatmap_loss, np_kl, LOGITS),
        (L.heatmap_ncc_loss, np_ncc, LOGITS),
    ],
)
def test_heatmap_losses_match_numpy_and_mask_nan(fn, ref, pred):
    target = _nan_channels(PROBS, VIS)
    got = _jit(fn, visible=VIS)(pred, target)
    np.testing.assert_allclose(got, ref(pred, PROBS, VIS), rtol=1e-5, atol=1e-6)
    # Dropping the invisible channel gives the same loss for the first example.
    keep = VIS[0]
    alone = fn(pred[:1, ..., keep], PROBS[:1, ..., keep])
    np.testing.assert_allclose(got[0], alone[0], rtol=1e-6)
    grad = jax.grad(lambda p: fn(p, target, visible=VIS).sum())(pred)
    assert np.isfinite(grad).all()
    assert np.all(np.asarray(grad)[0, ..., 1] == 0)


def test_dice_from_probs_and_multiclass():
    got = _jit(L.dice_loss, from_logits=False, smooth=0.5)(PROBS, PROBS > 0.5)
    ref = np_dice(PROBS, (PROBS > 0.5).astype(np.float32), np.ones((B, K), bool), 0.5, False)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    onehot = np.eye(K, dtype=np.float32)[RNG.integers(0, K, size=(B, H, W))]
    soft = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    got = _jit(L.dice_loss, multiclass=True)(LOGITS, onehot)
    ref = np_dice(soft, onehot, np.ones((B, K), bool), 1.0, False)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_dice_empty_channels_with_zero_smooth_are_finite():
    zeros = np.zeros((1, 4, 4, 2), np.float32)
    np.testing.assert_allclose(L.dice_loss(zeros, zeros, from_logits=False, smooth=0.0), [0.0])


def test_dice_ce_sigmoid_and_multiclass():
    got = _jit(L.dice_ce_loss, visible=VIS)(LOGITS, _nan_channels(PROBS, VIS))
    np.testing.assert_allclose(
        got, np_dice(LOGITS, PROBS, VIS) + np_bce(LOGITS, PROBS, VIS), rtol=1e-5
    )
    onehot = np.eye(K, dtype=np.float32)[RNG.integers(0, K, size=(B, H, W))]
    x = LOGITS.astype(np.float64)
    log_soft = x - np.log(np.exp(x).sum(-1, keepdims=True))
    ce = -(onehot * log_soft).sum(-1).mean((1, 2))
    no_bg = np.array([[False, True, True]] * B)
    dice = np_dice(np.exp(log_soft), onehot, no_bg, 1.0, False)
    got = _jit(L.dice_ce_loss, multiclass=True, visible=no_bg)(LOGITS, onehot)
    np.testing.assert_allclose(got, dice + ce, rtol=1e-5)


def test_ncc_ignores_scale_and_offset_and_sees_sign():
    t = jnp.asarray(PROBS)
    np.testing.assert_allclose(L.heatmap_ncc_loss(3.0 * t + 0.5, t), 0.0, atol=1e-5)
    np.testing.assert_allclose(L.heatmap_ncc_loss(-t, t), 2.0, atol=1e-5)
    flat = L.heatmap_ncc_loss(jnp.ones_like(t), t)  # no variance: finite, uncorrelated
    np.testing.assert_allclose(flat, 1.0, atol=1e-5)
    assert L.get_loss("heatmap_ncc") is L.heatmap_ncc_loss


def test_kl_is_zero_at_target_and_masks_empty_target():
    target = np.zeros((1, 4, 4, 2), np.float32)
    target[0, 1, 2, 0] = 3.0
    target[0, 2, 2, 0] = 1.0
    logits = np.log(np.where(target > 0, target, 1e-30)).astype(np.float32)
    np.testing.assert_allclose(L.kl_heatmap_loss(logits, target), [0.0], atol=1e-5)


# ---------------------------------------------------------------- coordinates

PRED = RNG.normal(scale=6.0, size=(B, K, 2)).astype(np.float32)
GT = RNG.normal(scale=6.0, size=(B, K, 2)).astype(np.float32)
GT_NAN = GT.copy()
GT_NAN[~VIS] = np.nan


@pytest.mark.parametrize(
    "fn,ref",
    [
        (L.coord_l1, lambda d: np.abs(d).sum(-1)),
        (L.coord_l2, lambda d: np.sqrt((d**2).sum(-1))),
        (L.wing_loss, np_wing),
    ],
)
def test_coordinate_losses_match_numpy_and_mask_nan(fn, ref):
    expect = _masked_mean(ref((PRED - GT).astype(np.float64)), VIS)
    np.testing.assert_allclose(_jit(fn, visible=VIS)(PRED, GT_NAN), expect, rtol=1e-5)
    # visible=None masks the NaN targets by themselves.
    np.testing.assert_allclose(jax.jit(fn)(PRED, GT_NAN), expect, rtol=1e-5)
    dropped = fn(PRED[:1, VIS[0]], GT[:1, VIS[0]])
    np.testing.assert_allclose(fn(PRED, GT_NAN, visible=VIS)[0], dropped[0], rtol=1e-6)
    grad = jax.grad(lambda p: fn(p, GT_NAN, visible=VIS).sum())(PRED)
    assert np.isfinite(grad).all() and np.all(np.asarray(grad)[0, 1] == 0)


def test_coordinate_losses_no_visible_landmark_is_zero_with_finite_grad():
    gt = np.full((1, 2, 2), np.nan, np.float32)
    for fn in (L.coord_l1, L.coord_l2, L.wing_loss):
        np.testing.assert_array_equal(fn(PRED[:1, :2], gt), [0.0])
        assert np.isfinite(jax.grad(lambda p, fn=fn: fn(p, gt).sum())(PRED[:1, :2])).all()
    # Exact hit: the Euclidean distance has a finite (zero) gradient at 0.
    assert np.all(jax.grad(lambda p: L.coord_l2(p, GT).sum())(GT) == 0)


def test_wing_loss_is_continuous_at_w():
    below = L.wing_loss(np.array([[[9.9999, 0.0]]]), np.zeros((1, 1, 2)))
    above = L.wing_loss(np.array([[[10.0001, 0.0]]]), np.zeros((1, 1, 2)))
    np.testing.assert_allclose(below, above, atol=1e-3)


# ---------------------------------------------------------------- gradients

REGIONS = RNG.normal(size=(B, H, W, 3))
GT_VIS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    "fn,args",
    [
        (L.dice_loss, (LOGITS, PROBS)),
        (L.bce_loss, (LOGITS, PROBS)),
        (L.kl_heatmap_loss, (LOGITS, PROBS)),
        (L.heatmap_ncc_loss, (LOGITS, PROBS)),
        (L.wing_loss, (PRED * 3, GT)),  # both branches of the wing
        (L.coord_l2, (PRED, GT)),
        (
            functools.partial(L.soft_anatomical_consistency_loss, landmark_regions=[0, 1, -1]),
            (LOGITS, REGIONS, GT_VIS),
        ),
    ],
)
def test_check_grads(fn, args):
    with jax.enable_x64(True):
        args64 = [jnp.asarray(a, jnp.float64) for a in args]
        head, rest = args64[0], args64[1:]
        check_grads(lambda x: fn(x, *rest).sum(), (head,), order=1, modes=["rev"])


def test_soft_consistency_grad_reaches_regions():
    fn = functools.partial(L.soft_anatomical_consistency_loss, landmark_regions=[0, 1, -1])
    with jax.enable_x64(True):
        x, r = jnp.asarray(LOGITS, jnp.float64), jnp.asarray(REGIONS)
        check_grads(lambda r: fn(x, r, GT_VIS).sum(), (r,), order=1, modes=["rev"])


# ---------------------------------------------------------------- anatomical consistency


def _peak_logits(rows_cols, peak=5.0, h=4, w=4):
    """Heatmap logits `[1, h, w, K]`: -5 everywhere, `peak` at each (row, col), or none."""
    x = np.full((1, h, w, len(rows_cols)), -5.0, np.float32)
    for k, rc in enumerate(rows_cols):
        if rc is not None:
            x[0, rc[0], rc[1], k] = peak
    return x


def test_consistency_hand_cases():
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, :2] = 1  # region 0 in the top half
    labels[0, 2:] = 2  # region 1 in the bottom half
    scores = np.eye(3, dtype=np.float32)[labels] * 4.0  # the same map as region scores
    lm_regions = [0, 0, 1, 1]
    x = _peak_logits([(0, 1), (3, 3), None, (3, 0)])
    # inside -> 1, outside -> 0.5, not predicted -> 0, inside -> 1
    for regions in (labels, scores):
        loss = jax.jit(
            functools.partial(L.anatomical_consistency_loss, landmark_regions=lm_regions)
        )
        # gt all present: |1-1| + |0.5-1| + |0-1| + |1-1| over 4 landmarks
        np.testing.assert_allclose(loss(x, regions, np.ones((1, 4))), [(0 + 0.5 + 1 + 0) / 4])
        # gt absent for the 2nd and 4th: weight 2 on those errors
        gt = np.array([[1.0, 0.0, 1.0, 0.0]])
        np.testing.assert_allclose(loss(x, regions, gt), [(0 + 2 * 0.5 + 1 + 2 * 1) / 4])
    # A landmark that is not predicted and is absent costs nothing.
    none = _peak_logits([None])
    lone = L.anatomical_consistency_loss(none, labels, np.zeros((1, 1)), landmark_regions=[0])
    np.testing.assert_allclose(lone, [0.0])
    inside = _peak_logits([(0, 0)])
    lone = L.anatomical_consistency_loss(inside, labels, np.zeros((1, 1)), landmark_regions=[0])
    np.testing.assert_allclose(lone, [2.0])  # predicted inside but absent: 2 * |1 - 0|
    hard = functools.partial(L.anatomical_consistency_loss, landmark_regions=lm_regions)
    assert np.all(jax.grad(lambda h: hard(h, labels, np.ones((1, 4))).sum())(x) == 0)


def test_soft_consistency_approaches_hard_values():
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, :2] = 1
    labels[0, 2:] = 2
    x = _peak_logits([(0, 1), (3, 3), None], peak=40.0)
    x[x < 0] = -40.0
    got = L.soft_anatomical_consistency_loss(x, labels, np.ones((1, 3)), landmark_regions=[0, 0, 1])
    np.testing.assert_allclose(got, [(0 + 0.5 + 1) / 3], atol=1e-4)
    # Region probabilities given directly.
    probs = np.eye(3)[labels]
    got = L.soft_anatomical_consistency_loss(
        x, probs, np.ones((1, 3)), landmark_regions=[0, 0, 1], regions_from_logits=False
    )
    np.testing.assert_allclose(got, [(0 + 0.5 + 1) / 3], atol=1e-4)


# ---------------------------------------------------------------- deep supervision


def test_deep_supervision_weights_and_downsampling():
    target = RNG.random((B, 8, 8, K)).astype(np.float32)
    preds = [np.zeros((B, 8, 8, K)), np.zeros((B, 4, 4, K)), np.zeros((B, 2, 2, K))]
    size = lambda p, t: jnp.full(p.shape[0], float(p.shape[1])) + 0 * t.sum()
    got = L.deep_supervision(size, preds, target)
    np.testing.assert_allclose(got, (4 * 8 + 2 * 4 + 1 * 2) / 7 * np.ones(B))
    got = L.deep_supervision(size, preds, target, weights=[1.0, 0.0, 1.0])
    np.testing.assert_allclose(got, 5.0 * np.ones(B))
    # Area pooling: predicting the block means of the target gives zero loss.
    pooled = [target.reshape(B, s, 8 // s, s, 8 // s, K).mean((2, 4)) for s in (8, 4, 2)]
    got = jax.jit(functools.partial(L.deep_supervision, L.heatmap_mse, visible=VIS))(
        pooled, _nan_channels(target, VIS)
    )
    np.testing.assert_allclose(got, np.zeros(B), atol=1e-7)
    with pytest.raises(ValueError, match="2 weights for 3 predictions"):
        L.deep_supervision(size, preds, target, weights=[1.0, 1.0])


# ---------------------------------------------------------------- registry


def test_registry():
    assert L.get_loss("wing") is L.wing_loss
    with pytest.raises(ValueError, match=r"unknown loss 'nope'; known losses: .*dice_ce"):
        L.get_loss("nope")
    with pytest.raises(ValueError, match="already registered"):
        L.register_loss("dice")(lambda p, t: p)

    @L.register_loss("test_only_loss")
    def mine(pred, target, *, visible=None):
        return jnp.zeros(pred.shape[0])

    try:
        assert L.get_loss("test_only_loss") is mine
        assert "test_only_loss" in L.LOSSES
    finally:
        del L.LOSSES["test_only_loss"]
