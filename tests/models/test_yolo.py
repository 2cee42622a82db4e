"""YOLO11 port: parameter counts and shapes of the full sizes (abstract only), a tiny
forward on CPU, and the blocks whose details decide whether weights would load."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models import build_model, count_params, list_models
from lmjax.models.yolo import dfl_decode, make_divisible
from lmjax.models.yolo_blocks import BN_EPSILON, BN_MOMENTUM, Attention, Conv, DWConv, psa_heads

# Ultralytics counts `model.parameters()`, which includes Detect's frozen arange(16)
# DFL conv (16 weights, no gradient); here DFL is an expectation, not a parameter, so
# our trainable count is theirs minus 16 (their "gradients" figure).
DFL_WEIGHTS = 16
TINY = dict(width=0.125, depth=0.33, max_channels=128)


def _rngs(seed: int) -> nnx.Rngs:
    """RBG keys: eager init compiles one sampler per kernel shape, and threefry's
    samplers are slow to compile on CPU."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@functools.cache
def _abstract(scale: str, nc: int, in_channels: int = 3) -> nnx.Module:
    return nnx.eval_shape(
        lambda: build_model(
            "yolo11",
            num_outputs=nc,
            input_size=640,
            in_channels=in_channels,
            rngs=nnx.Rngs(0),
            scale=scale,
        )
    )


@pytest.mark.parametrize(
    "scale, nc, reference",
    [("n", 90, 2_639_240), ("n", 80, 2_624_080), ("s", 80, 9_458_752)],
)
def test_parameter_counts_match_the_reference(scale, nc, reference):
    assert count_params(_abstract(scale, nc)) + DFL_WEIGHTS == reference


def test_bn_running_statistics_are_not_parameters():
    model = _abstract("n", 90)
    size = lambda state: sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    stats = size(nnx.state(model, nnx.BatchStat))  # running mean and var per BN channel
    bn_affine = sum(
        size(nnx.state(bn, nnx.Param))
        for _, bn in nnx.iter_graph(model)
        if isinstance(bn, nnx.BatchNorm)
    )
    assert stats == bn_affine > 0
    assert size(nnx.state(model)) == count_params(model) + stats
    assert "yolo11" in list_models()


def test_channels_of_scale_n_follow_the_description():
    model = _abstract("n", 90)
    m = model.model
    assert [make_divisible(c * 0.25) for c in (64, 128, 256, 512, 1024)] == [16, 32, 64, 128, 256]
    assert m[0].conv.kernel.shape == (3, 3, 3, 16)
    assert m[2].m[0].cv1.conv.kernel.shape == (3, 3, 16, 8)  # model.2.m.0.cv1 (8, 16, 3, 3)
    assert m[6].m[0].cv1.conv.kernel.shape == (1, 1, 64, 32)  # C3k inside C3k2(c3k=True)
    assert len(m[6].m[0].m) == 2
    assert m[9].cv1.conv.kernel.shape == (1, 1, 256, 128)
    assert m[10].m[0].attn.num_heads == 2 and m[10].m[0].attn.key_dim == 32
    assert m[10].m[0].attn.qkv.conv.kernel.shape == (1, 1, 128, 128 + 2 * 2 * 32)
    assert model.channels == (64, 128, 256)
    head = m[23]
    assert head.cv2[0][2].kernel.shape == (1, 1, 64, 64)  # c2 = 64 -> 4 * 16
    assert head.cv3[0][0][0].conv.kernel.shape == (3, 3, 1, 64)  # DW 3x3 on 64
    assert head.cv3[2][2].kernel.shape == (1, 1, 90, 90)  # c3 = 90 -> nc


def test_output_shapes_at_640():
    model = _abstract("n", 90)
    out = nnx.eval_shape(lambda m: m(jnp.zeros((2, 640, 640, 3))), model)
    a = 80 * 80 + 40 * 40 + 20 * 20
    assert a == 8400
    assert out["box_dist"].shape == (2, a, 64) and out["box_dist"].dtype == jnp.float32
    assert out["cls"].shape == (2, a, 90)
    assert out["anchors"].shape == (a, 2) and out["strides"].shape == (a,)


def test_tiny_forward_is_finite_and_anchors_are_cell_centres():
    nc = 5
    model = build_model(
        "yolo11", num_outputs=nc, input_size=128, in_channels=1, rngs=_rngs(0), **TINY
    )
    images = jax.random.normal(jax.random.key(1), (2, 128, 128, 1))
    model.eval()
    out = nnx.jit(lambda m, x: m(x))(model, images)
    a = 16 * 16 + 8 * 8 + 4 * 4
    assert out["box_dist"].shape == (2, a, 64) and out["cls"].shape == (2, a, nc)
    for key in ("box_dist", "cls"):
        assert bool(jnp.all(jnp.isfinite(out[key])))
    anchors, strides = np.asarray(out["anchors"]), np.asarray(out["strides"])
    np.testing.assert_array_equal(anchors[:2], [[4, 4], [12, 4]])  # row-major, stride 8
    np.testing.assert_array_equal(anchors[16], [4, 12])
    np.testing.assert_array_equal(anchors[256], [8, 8])  # first cell of stride 16
    np.testing.assert_array_equal(anchors[-1], [112, 112])
    assert np.all(strides[:256] == 8) and np.all(strides[-16:] == 32)
    boxes = np.asarray(dfl_decode(out))
    assert boxes.shape == (2, a, 4) and np.all(boxes[..., :2] <= boxes[..., 2:])
    # Biases start at 2.0 (box) and log(5 / nc / (640 / s)^2) (class).
    head = model.model[23]
    np.testing.assert_allclose(head.cv2[1][2].bias[...], 2.0)
    np.testing.assert_allclose(head.cv3[1][2].bias[...], math.log(5 / nc / 40**2), rtol=1e-6)
    # Training mode (batch statistics, the SPPF max pools): outputs and gradients from
    # one compiled program.
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        out = nnx.merge(graphdef, params, rest, copy=True)(images)
        return out["cls"].sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert bool(jnp.all(jnp.isfinite(out["cls"])))
    # Per-class top-1 decoding: the best anchor's box, NaN below the threshold.
    assert out["boxes"].shape == (2, nc, 4) and out["coords"].shape == (2, nc, 2)
    found = np.asarray(out["found"])
    np.testing.assert_array_equal(np.isfinite(np.asarray(out["boxes"])).all(-1), found)
    np.testing.assert_array_equal(found, np.asarray(out["scores"]) >= model.score_threshold)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_dwconv_groups_and_batch_norm_settings():
    rngs = _rngs(0)
    dw = DWConv(12, 18, 3, rngs=rngs)
    assert dw.conv.feature_group_count == math.gcd(12, 18) == 6
    assert dw.conv.kernel.shape == (3, 3, 2, 18)
    assert DWConv(16, 16, 3, rngs=rngs).conv.kernel.shape == (3, 3, 1, 16)
    conv = Conv(4, 8, 3, 2, rngs=rngs)
    assert conv.conv.bias is None and conv.conv.padding == ((1, 1), (1, 1))
    assert conv.bn.momentum == BN_MOMENTUM == 0.97 and conv.bn.epsilon == BN_EPSILON == 1e-3
    assert psa_heads(128) == 2 and psa_heads(8) == 1


def _attention_numpy(attn: Attention, x_nhwc: np.ndarray, per_head: bool = True) -> np.ndarray:
    """The description's attention transcribed in NCHW with NumPy; convs are the module's.

    `per_head=False` reads qkv as [all q, all k, all v] instead, the wrong grouping.
    """
    to_nchw = lambda y: np.asarray(y).transpose(0, 3, 1, 2)
    to_nhwc = lambda y: jnp.asarray(y.transpose(0, 2, 3, 1))
    b, h, w, c = x_nhwc.shape
    nh, kd, hd = attn.num_heads, attn.key_dim, attn.head_dim
    qkv = to_nchw(attn.qkv(jnp.asarray(x_nhwc))).reshape(b, -1, h * w)
    if per_head:
        qkv = qkv.reshape(b, nh, 2 * kd + hd, h * w)
        q, k, v = qkv[:, :, :kd], qkv[:, :, kd : 2 * kd], qkv[:, :, 2 * kd :]
    else:
        q, k = qkv[:, : nh * kd], qkv[:, nh * kd : 2 * nh * kd]
        q, k = q.reshape(b, nh, kd, -1), k.reshape(b, nh, kd, -1)
        v = qkv[:, 2 * nh * kd :].reshape(b, nh, hd, -1)
    logits = np.einsum("bndi,bndj->bnij", q * kd**-0.5, k)  # (q scale)^T k
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # softmax over keys
    out = np.einsum("bndj,bnij->bndi", v, p).reshape(b, c, h, w)  # v attn^T
    out = out + to_nchw(attn.pe(to_nhwc(v.reshape(b, c, h, w))))
    return to_nchw(attn.proj(to_nhwc(out))).transpose(0, 2, 3, 1)


def test_attention_matches_a_numpy_transcription_of_the_per_head_qkv_split():
    c = 128  # two heads of 64, key_dim 32
    attn = Attention(c, psa_heads(c), rngs=_rngs(3))
    # Random batch-norm statistics and affines, so every channel is distinct.
    keys = iter(jax.random.split(jax.random.key(4), 16))
    for _, bn in nnx.iter_graph(attn):
        if isinstance(bn, nnx.BatchNorm):
            n = bn.scale.shape[0]
            bn.scale[...] = jax.random.uniform(next(keys), (n,), minval=0.5, maxval=1.5)
            bn.bias[...] = jax.random.normal(next(keys), (n,))
            bn.mean[...] = jax.random.normal(next(keys), (n,))
            bn.var[...] = jax.random.uniform(next(keys), (n,), minval=0.5, maxval=2.0)
    attn.eval()
    x = np.asarray(jax.random.normal(jax.random.key(5), (2, 3, 4, c)))
    got = np.asarray(attn(jnp.asarray(x)))
    np.testing.assert_allclose(got, _attention_numpy(attn, x), rtol=1e-4, atol=1e-4)
    # The grouping matters: reading qkv as [all q, all k, all v] gives another answer.
    wrong = _attention_numpy(attn, x, per_head=False)
    assert np.abs(wrong - got).max() > 1e-2


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("yolo11", num_outputs=2, input_size=100, rngs=nnx.Rngs(0), **TINY)
    with pytest.raises(ValueError, match="scale"):
        build_model("yolo11", num_outputs=2, input_size=64, rngs=nnx.Rngs(0), scale="q")
