"""SAM in NNX: structure, batched box decoding, and its ops against NumPy references.

There is no parity fixture against the PyTorch original here (making one needs torch);
the ops are checked against NumPy transcriptions of the original's formulas instead.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models import build_model, count_params, list_models
from lmjax.models.sam import SAM_SIZES, postprocess_masks
from lmjax.models.sam_decoder import Up2x
from lmjax.models.sam_encoder import (
    RelPosAttention,
    decomposed_rel_pos,
    resize_rel_pos,
    window_partition,
    window_unpartition,
)
from lmjax.models.sam_prompt import FourierMatrix

TINY = SAM_SIZES["tiny"]


def interp_linear_np(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """PyTorch's linear interpolation (align_corners=False, no antialias) along `axis`."""
    n = x.shape[axis]
    src = np.maximum((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    shape = [1] * x.ndim
    shape[axis] = size
    lam = lam.reshape(shape)
    return np.take(x, i0, axis) * (1 - lam) + np.take(x, i1, axis) * lam


def randomized(module: nnx.Module, seed: int = 0) -> nnx.Module:
    """`module` (abstract or not) with random values everywhere, zero-initialised
    tables (positions, biases) included; NumPy draws them, so nothing compiles."""
    graphdef, state = nnx.split(module)
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(state):
        if path[-1] == "kernel":  # fan-in scaled, so activations stay O(1)
            value = rng.normal(size=var.shape) / math.sqrt(math.prod(var.shape[:-1]))
        elif path[-1] == "scale":
            value = 1 + 0.1 * rng.normal(size=var.shape)
        else:
            value = 0.5 * rng.normal(size=var.shape)
        var.set_value(jnp.asarray(value, var.dtype))
    return nnx.merge(graphdef, state)


def tiny_sam(**options) -> nnx.Module:
    build = lambda: build_model(
        "sam", num_outputs=1, input_size=80, in_channels=3, size="tiny", rngs=nnx.Rngs(0), **options
    )
    return randomized(nnx.eval_shape(build))


@pytest.fixture(scope="module")
def tiny():
    model = tiny_sam()
    images = jax.random.normal(jax.random.key(1), (2, 80, 80, 3))
    embeddings = nnx.jit(lambda m, x: m.embed(x))(model, images)
    return model, images, embeddings


BOXES = np.array(
    [
        [[10.0, 12.0, 40.0, 50.0], [0.0, 0.0, 79.0, 79.0], [30.0, 5.0, 33.0, 9.0]],
        [[60.0, 60.0, 70.0, 75.0], [5.0, 40.0, 45.0, 44.0], [0.0, 0.0, 0.0, 0.0]],
    ],
    np.float32,
)

decode = nnx.jit(lambda m, e, b, v: m.decode(e, b, box_valid=v))  # explicit validity
decode_default = nnx.jit(lambda m, e, b: m.decode(e, b))  # validity from finite boxes


def test_vit_b_parameter_count_and_layout_without_allocating():
    model = nnx.eval_shape(
        lambda: build_model("sam", num_outputs=1, input_size=1024, rngs=nnx.Rngs(0))
    )
    assert count_params(model) == 93_735_472  # MedSAM's printed trainable + frozen count
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model)))
    assert total == 93_735_728  # plus the 2 x 128 Fourier buffer
    fourier = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    assert isinstance(fourier, FourierMatrix) and not isinstance(fourier, nnx.Param)
    assert fourier.shape == (2, 128)
    enc = model.image_encoder
    assert enc.pos_embed.shape == (1, 64, 64, 768)
    assert enc.blocks[0].attn.rel_pos_h.shape == (27, 64)
    assert enc.blocks[2].attn.rel_pos_w.shape == (127, 64)  # a global block
    assert [i for i, b in enumerate(enc.blocks) if b.window_size == 0] == [2, 5, 8, 11]
    assert model.mask_decoder.output_upscaling["0"].kernel.shape == (256, 4 * 64)
    assert "sam" in list_models()


def test_tiny_forward_shapes(tiny):
    model, images, embeddings = tiny
    assert embeddings.shape == (2, 10, 10, TINY.prompt_dim)
    out = nnx.jit(lambda m, x, b: m(x, b, multimask_output=True))(model, images, BOXES)
    assert set(out) == {"masks", "iou"}
    assert out["masks"].shape == (2, 3, 40, 40, 3) and out["iou"].shape == (2, 3, 3)
    assert out["masks"].dtype == jnp.float32
    assert np.isfinite(np.asarray(out["masks"])).all()


def test_k_prompts_in_one_call_equal_single_prompt_calls(tiny):
    model, _, embeddings = tiny
    valid = np.ones(BOXES.shape[:2], bool)
    together = decode(model, embeddings, BOXES, valid)
    for k in range(BOXES.shape[1]):
        alone = decode(model, embeddings, BOXES[:, k : k + 1], valid[:, k : k + 1])
        for key in ("masks", "iou"):
            np.testing.assert_allclose(together[key][:, k : k + 1], alone[key], atol=1e-5)


def test_padded_prompts_change_nothing_and_come_out_nan(tiny):
    model, _, embeddings = tiny
    valid = np.ones(BOXES.shape[:2], bool)
    reference = decode(model, embeddings, BOXES, valid)
    padded = BOXES.copy()
    padded[0, 1] = np.nan  # padding marked by non-finite coordinates
    padded[1, 2] = np.inf
    out = decode_default(model, embeddings, padded)
    keep = np.isfinite(padded).all(-1)
    for key in ("masks", "iou"):
        got, ref = np.asarray(out[key]), np.asarray(reference[key])
        np.testing.assert_array_equal(got[keep], ref[keep])
        assert np.isnan(got[~keep]).all()
    # An explicit mask pads a finite box the same way.
    masked = decode(model, embeddings, BOXES, keep)
    np.testing.assert_array_equal(np.asarray(masked["iou"]), np.asarray(out["iou"]))


def test_decoder_gradients_with_a_frozen_encoder_are_finite(tiny):
    model, images, _ = tiny
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    boxes = BOXES.copy()
    boxes[1, 2] = np.nan

    def loss(params):
        m = nnx.merge(graphdef, params, rest)
        emb = jax.lax.stop_gradient(m.embed(images))
        out = m.decode(emb, boxes)
        valid = jnp.isfinite(boxes).all(-1)
        masks = jnp.where(valid[..., None, None, None], out["masks"], 0.0)
        iou = jnp.where(valid[..., None], out["iou"], 0.0)
        return jnp.mean(jax.nn.sigmoid(masks)) + jnp.mean(iou**2)

    grads = jax.jit(jax.grad(loss))(params)
    flat = dict(nnx.to_flat_state(grads))
    norms = {path: float(jnp.abs(v[...]).max()) for path, v in flat.items()}
    assert all(np.isfinite(n) for n in norms.values())
    assert all(n == 0 for p, n in norms.items() if p[0] == "image_encoder")
    decoder = {p: n for p, n in norms.items() if p[0] == "mask_decoder"}
    # With one output mask only the first hypernetwork MLP is used.
    unused = lambda p: p[1] == "output_hypernetworks_mlps" and p[2] > 0
    assert len(decoder) > 50
    assert all((n == 0) == unused(p) for p, n in decoder.items())
    assert norms[("prompt_encoder", "point_embeddings", 2, "embedding")] > 0  # box corners
    assert not any("positional_encoding_gaussian_matrix" in p for p in flat)


def test_up2x_equals_conv_transpose_and_numpy():
    cin, cout = 6, 5
    up = Up2x(cin, cout, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    up.bias[...] = jax.random.normal(jax.random.key(3), (cout,))
    x = jax.random.normal(jax.random.key(2), (2, 3, 4, cin))
    # The torch weight [in, out, 2, 2] this kernel stands for.
    w = np.asarray(up.kernel[...]).reshape(cin, 2, 2, cout).transpose(0, 3, 1, 2)
    conv = nnx.ConvTranspose(
        cin, cout, (2, 2), strides=2, padding="VALID", transpose_kernel=True, rngs=nnx.Rngs(0)
    )
    conv.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0))  # the (kh, kw, out, in) layout
    conv.bias[...] = up.bias[...]
    y = np.asarray(up(x))
    np.testing.assert_allclose(y, np.asarray(conv(x)), atol=1e-6)
    ref = np.zeros((2, 6, 8, cout), np.float32)
    xn = np.asarray(x)
    for dy in range(2):
        for dx in range(2):
            ref[:, dy::2, dx::2] = xn @ w[:, :, dy, dx] + np.asarray(up.bias[...])
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("n, size", [(27, 127), (127, 63), (127, 27), (7, 7)])
def test_rel_pos_resize_is_linear_without_antialiasing(n, size):
    table = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
    got = np.asarray(resize_rel_pos(jnp.asarray(table), size))
    # float32 sample positions (in both frameworks) move the weights by ~1e-5 on a shrink.
    np.testing.assert_allclose(got, interp_linear_np(table, size, 0), atol=5e-5)
    if (n, size) == (127, 63):  # jax's default would antialias the shrink
        smooth = jax.image.resize(jnp.asarray(table), (size, 4), "linear")
        assert np.abs(np.asarray(smooth) - got).max() > 0.1


def test_decomposed_rel_pos_matches_the_offset_lookup():
    rng = np.random.default_rng(0)
    (qh, qw), heads, c = (3, 4), 2, 5
    q = rng.normal(size=(2, qh * qw, heads, c)).astype(np.float32)
    rel_h = rng.normal(size=(9, c)).astype(np.float32)  # made for 5 rows: resized to 5
    rel_w = rng.normal(size=(2 * qw - 1, c)).astype(np.float32)
    got = np.asarray(decomposed_rel_pos(jnp.asarray(q), rel_h, rel_w, (qh, qw), (qh, qw)))
    rh = interp_linear_np(rel_h, 2 * qh - 1, 0)
    ref = np.zeros((2, heads, qh * qw, qh * qw), np.float32)
    r_q = q.reshape(2, qh, qw, heads, c)
    for y in range(qh):
        for x in range(qw):
            for ky in range(qh):
                for kx in range(qw):
                    term = (
                        r_q[:, y, x] @ rh[y - ky + qh - 1] + r_q[:, y, x] @ rel_w[x - kx + qw - 1]
                    )
                    ref[:, :, y * qw + x, ky * qw + kx] = term
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _np_rel_attention(attn, x: np.ndarray) -> np.ndarray:
    """The original encoder Attention on `[B, H, W, D]`, in NumPy."""
    p = lambda v: np.asarray(v[...], np.float64)
    b, h, w, dim = x.shape
    heads = attn.num_heads
    # qkv -> (B, HW, 3, heads, c) -> (3, B, heads, HW, c), as the original lays it out.
    qkv = x.reshape(b, h * w, dim) @ p(attn.qkv.kernel) + p(attn.qkv.bias)
    q, k, v = qkv.reshape(b, h * w, 3, heads, dim // heads).transpose(2, 0, 3, 1, 4)
    logits = (q * (dim // heads) ** -0.5) @ k.swapaxes(-1, -2)
    rh = interp_linear_np(p(attn.rel_pos_h), 2 * h - 1, 0)
    rw = interp_linear_np(p(attn.rel_pos_w), 2 * w - 1, 0)
    rh = rh[np.arange(h)[:, None] - np.arange(h)[None] + h - 1]  # [qh, kh, c]
    rw = rw[np.arange(w)[:, None] - np.arange(w)[None] + w - 1]
    r_q = q.reshape(b, heads, h, w, -1)
    rel_h = np.einsum("bnyxc,ykc->bnyxk", r_q, rh)
    rel_w = np.einsum("bnyxc,xkc->bnyxk", r_q, rw)
    logits = logits.reshape(b, heads, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
    logits = logits.reshape(b, heads, h * w, h * w)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    out = (prob @ v).transpose(0, 2, 1, 3).reshape(b, h, w, dim)
    return out @ p(attn.proj.kernel) + p(attn.proj.bias)


def test_rel_pos_attention_matches_a_numpy_transcription():
    dim, heads, (h, w) = 8, 2, (3, 4)
    attn = RelPosAttention(
        dim, heads, (h, w), dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(1)
    )
    attn = randomized(attn, seed=5)
    x = np.random.default_rng(1).normal(size=(2, h, w, dim)).astype(np.float32)
    np.testing.assert_allclose(attn(jnp.asarray(x)), _np_rel_attention(attn, x), atol=1e-5)


@pytest.mark.parametrize("hw, window", [((10, 10), 4), ((10, 7), 4), ((8, 8), 4), ((3, 5), 7)])
def test_window_partition_pads_and_round_trips(hw, window):
    h, w = hw
    x = jnp.arange(2 * h * w * 3, dtype=jnp.float32).reshape(2, h, w, 3) + 1
    windows, (hp, wp) = window_partition(x, window)
    assert (hp, wp) == (-(-h // window) * window, -(-w // window) * window)
    assert windows.shape == (2 * (hp // window) * (wp // window), window, window, 3)
    padded = np.pad(np.asarray(x), ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    np.testing.assert_array_equal(windows[0], padded[0, :window, :window])
    np.testing.assert_array_equal(windows[-1], padded[1, -window:, -window:])
    assert float(jnp.sum(windows == 0)) == (hp * wp - h * w) * 2 * 3  # only the padding is 0
    np.testing.assert_array_equal(window_unpartition(windows, window, (hp, wp), hw), x)


def test_prompt_encodings_match_numpy(tiny):
    model = tiny[0]
    pe = model.prompt_encoder
    g = np.asarray(pe.pe_layer.positional_encoding_gaussian_matrix[...])
    enc = lambda u: np.concatenate(
        [np.sin(2 * np.pi * (2 * u - 1) @ g), np.cos(2 * np.pi * (2 * u - 1) @ g)], -1
    )
    h, w = pe.image_embedding_size
    xs, ys = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    np.testing.assert_allclose(pe.dense_pe(), enc(np.stack([xs, ys], -1)), atol=1e-5)
    corners = (BOXES + 0.5).reshape(2, 3, 2, 2) / np.array([80.0, 80.0])  # (x, y) / (W, H)
    token = lambda i: np.asarray(pe.point_embeddings[i].embedding[...])[0]
    ref = enc(corners) + np.stack([token(2), token(3)])
    np.testing.assert_allclose(pe.embed_boxes(jnp.asarray(BOXES)), ref, atol=1e-5)


def test_point_and_mask_prompts(tiny):
    pe = tiny[0].prompt_encoder
    points = np.array([[[3.0, 4.0], [50.0, 20.0], [7.0, 7.0]]], np.float32)
    labels = np.array([[1, 0, -1]])
    got = np.asarray(pe.embed_points(jnp.asarray(points), jnp.asarray(labels), pad=True))
    assert got.shape == (1, 4, TINY.prompt_dim)  # a padding point appended
    g = np.asarray(pe.pe_layer.positional_encoding_gaussian_matrix[...])
    u = 2 * np.pi * (2 * (points[0, :2] + 0.5) / 80.0 - 1) @ g
    token = lambda t: np.asarray(t.embedding[...])[0]
    ref = np.concatenate([np.sin(u), np.cos(u)], -1)
    ref += np.stack([token(pe.point_embeddings[1]), token(pe.point_embeddings[0])])
    np.testing.assert_allclose(got[0, :2], ref, atol=1e-5)
    np.testing.assert_allclose(got[0, 2:], np.stack([token(pe.not_a_point_embed)] * 2), atol=1e-6)
    masks = jnp.zeros((2, 4 * 10, 4 * 10, 1))
    assert pe.embed_masks(masks).shape == (2, 10, 10, TINY.prompt_dim)


def test_postprocess_masks_matches_bilinear_numpy():
    low = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype(np.float32)
    got = postprocess_masks(
        jnp.asarray(low), image_size=32, input_size=(32, 24), original_size=(20, 15)
    )
    up = interp_linear_np(interp_linear_np(low, 32, 1), 32, 2)[:, :32, :24]
    ref = interp_linear_np(interp_linear_np(up, 20, 1), 15, 2)
    assert got.shape == (2, 20, 15, 1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_bf16_compute_keeps_float32_params_and_stays_close(tiny):
    model, images, embeddings = tiny
    half = tiny_sam(dtype=jnp.bfloat16)
    nnx.update(half, nnx.state(model))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(half, nnx.Param)))
    got = nnx.jit(lambda m, x: m.embed(x))(half, images)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), embeddings, atol=0.1)


def _np(v) -> np.ndarray:
    return np.asarray(v[...], np.float64)


def _linear(layer, x):
    return x @ _np(layer.kernel) + _np(layer.bias)


def _layer_norm(norm, x, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _np(norm.scale) + _np(norm.bias)


def _attention(attn, q, k, v):
    """The original decoder Attention: project, split heads, softmax(q k^T / sqrt(c)) v."""
    heads = attn.num_heads
    split = lambda x: x.reshape(*x.shape[:-1], heads, -1).swapaxes(-2, -3)
    q, k, v = (
        split(_linear(p, x)) for p, x in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v))
    )
    logits = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    out = (prob @ v).swapaxes(-2, -3)
    return _linear(attn.out_proj, out.reshape(*out.shape[:-2], -1))


def test_mask_decoder_matches_a_numpy_transcription(tiny):
    model, _, embeddings = tiny
    dec, pe = model.mask_decoder, model.prompt_encoder
    boxes = BOXES[:1]
    got = decode(model, embeddings[:1], boxes, np.ones((1, 3), bool))
    # Inputs from the prompt encoder (checked against NumPy above), one row per prompt.
    sparse = np.asarray(pe.embed_boxes(jnp.asarray(boxes)), np.float64)[0]  # [3, 2, D]
    src = np.asarray(embeddings[0], np.float64) + _np(pe.no_mask_embed.embedding)[0]
    h, w, d = src.shape
    key_pe = np.asarray(pe.dense_pe(), np.float64).reshape(1, h * w, d)
    tokens = np.concatenate([_np(dec.iou_token.embedding), _np(dec.mask_tokens.embedding)])
    tokens = np.concatenate([np.broadcast_to(tokens, (3, *tokens.shape)), sparse], axis=1)
    queries, keys = tokens, np.broadcast_to(src.reshape(1, h * w, d), (3, h * w, d))
    ln = lambda norm, x: _layer_norm(norm, x, 1e-5)
    for i, blk in enumerate(dec.transformer.layers):
        if i == 0:
            queries = _attention(blk.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _attention(blk.self_attn, q, q, queries)
        queries = ln(blk.norm1, queries)
        q, k = queries + tokens, keys + key_pe
        queries = ln(blk.norm2, queries + _attention(blk.cross_attn_token_to_image, q, k, keys))
        mlp = _linear(blk.mlp.lin2, np.maximum(_linear(blk.mlp.lin1, queries), 0))
        queries = ln(blk.norm3, queries + mlp)
        q, k = queries + tokens, keys + key_pe
        keys = ln(blk.norm4, keys + _attention(blk.cross_attn_image_to_token, k, q, queries))
    t = dec.transformer
    attn = _attention(t.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    queries = ln(t.norm_final_attn, queries + attn)

    def up2x(layer, x):  # [N, h, w, in] -> [N, 2h, 2w, out], pixel (2i + dy, 2j + dx)
        n, hh, ww, _ = x.shape
        y = (x @ _np(layer.kernel)).reshape(n, hh, ww, 2, 2, -1).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, 2 * hh, 2 * ww, -1) + _np(layer.bias)

    gelu = lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    up = dec.output_upscaling
    x = gelu(_layer_norm(up["1"], up2x(up["0"], keys.reshape(3, h, w, d)), 1e-6))
    x = gelu(up2x(up["3"], x))

    def mlp(m, x):
        for j, layer in enumerate(m.layers):
            x = _linear(layer, x)
            x = np.maximum(x, 0) if j < len(m.layers) - 1 else x
        return x

    hyper = mlp(dec.output_hypernetworks_mlps[0], queries[:, 1])  # token 0 of the masks
    masks = np.einsum("nc,nyxc->nyx", hyper, x)
    iou = mlp(dec.iou_prediction_head, queries[:, 0])[:, :1]
    np.testing.assert_allclose(got["masks"][0, ..., 0], masks, atol=1e-5)
    np.testing.assert_allclose(got["iou"][0], iou, atol=1e-5)


def _np_window(x: np.ndarray, window: int, fn) -> np.ndarray:
    """`fn` applied to each zero-padded `window x window` tile of `[B, H, W, C]`, cropped."""
    b, h, w, c = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    padded = np.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    out = np.zeros(padded.shape)
    for i in range(0, hp, window):
        for j in range(0, wp, window):
            out[:, i : i + window, j : j + window] = fn(padded[:, i : i + window, j : j + window])
    return out[:, :h, :w]


def test_image_encoder_matches_a_numpy_transcription(tiny):
    model, images, embeddings = tiny
    enc = model.image_encoder
    x = np.asarray(images, np.float64)
    b, size, _, c = x.shape
    patch, g = TINY.patch_size, size // TINY.patch_size
    patches = x.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = _np(enc.patch_embed.proj.kernel)  # [patch, patch, C, D]
    x = patches.reshape(b, g, g, -1) @ kernel.reshape(-1, kernel.shape[-1])
    x = x + _np(enc.patch_embed.proj.bias) + _np(enc.pos_embed)
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    for blk in enc.blocks:
        y = _layer_norm(blk.norm1, x, 1e-6)
        attn = lambda t, blk=blk: _np_rel_attention(blk.attn, t)
        x = x + (_np_window(y, blk.window_size, attn) if blk.window_size else attn(y))
        y = _layer_norm(blk.norm2, x, 1e-6)
        x = x + _linear(blk.mlp.lin2, gelu(_linear(blk.mlp.lin1, y)))
    neck = enc.neck
    x = _layer_norm(neck[1], x @ _np(neck[0].kernel)[0, 0], 1e-6)
    padded, k3 = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), _np(neck[2].kernel)
    x = sum(padded[:, i : i + g, j : j + g] @ k3[i, j] for i in range(3) for j in range(3))
    ref = _layer_norm(neck[3], x, 1e-6)
    np.testing.assert_allclose(embeddings, ref, atol=1e-5)


def test_remat_gives_the_same_embeddings(tiny):
    model, images, embeddings = tiny
    again = tiny_sam(remat=True)
    nnx.update(again, nnx.state(model))
    got = nnx.jit(lambda m, x: m.embed(x))(again, images)
    np.testing.assert_allclose(got, embeddings, atol=1e-6)
