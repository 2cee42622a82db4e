"""The 2D Swin-UNETR ("swin_unetr"): windows, shift mask, merging, MONAI weights, training.

Tiny settings throughout (feature size 12, one head per stage, 64 x 64 inputs); the
paper's configuration is only built abstractly (`nnx.eval_shape`) to count it.
"""

from __future__ import annotations

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import lmjax.models.swin_unetr as swin  # registers "swin_unetr" and "swin_unetr_monai"
from lmjax import configs
from lmjax.configs.phantom import get_config as phantom_config
from lmjax.models.registry import build_model, count_params
from lmjax.models.weights import load_pretrained
from lmjax.task import task_spec
from lmjax.train import evaluation, loop, setup
from lmjax.train.logs import TENSORBOARD_DIR
from tests.train.test_logs import read_scalars

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "experiments/configs/isbi2015_swin_unetr.py"
TINY = dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))

_apply = nnx.jit(lambda model, images: model(images))


def _tiny(**kw) -> swin.SwinUNETR:
    args = dict(num_outputs=3, input_size=64, rngs=nnx.Rngs(0), **TINY) | kw
    return build_model("swin_unetr", **args)


def _random(build, seed: int = 0, scale: float = 0.5):
    """`build()` with every parameter drawn from N(0, scale) by NumPy.

    The module is built abstractly, so no initialiser is compiled or run.
    """
    graphdef, params, rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(s.dtype), params)
    return nnx.merge(graphdef, params, rest)


def _block(shift: tuple[int, int]) -> swin.SwinBlock:
    """A random Swin block: width 8, 2 heads, 4 x 4 windows."""
    kw = dict(mlp_ratio=2.0, drop_path=0.0, dtype=jnp.float32, param_dtype=jnp.float32)
    return _random(lambda: swin.SwinBlock(8, 2, (4, 4), shift, rngs=nnx.Rngs(0), **kw))


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


# ------------------------------------------------------------------ forward


def test_logits_at_full_resolution():
    model = _random(lambda: _tiny(patch_size=4), scale=0.1)
    model.eval()
    images = np.random.default_rng(0).normal(size=(2, 64, 128, 1)).astype(np.float32)
    out = _apply(model, images)
    assert list(out) == ["heatmaps"]
    assert out["heatmaps"].shape == (2, 64, 128, 3) and out["heatmaps"].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out["heatmaps"])))
    # bf16 compute traces to the same shapes; parameters stay float32.
    bf16 = nnx.eval_shape(lambda: _tiny(patch_size=4, dtype=jnp.bfloat16))
    shapes = jax.eval_shape(lambda m, x: m(x), bf16, images)
    assert shapes["heatmaps"].shape == (2, 64, 128, 3)
    assert shapes["heatmaps"].dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))


def _attention_reference(block: swin.SwinBlock, x: np.ndarray) -> np.ndarray:
    """Shifted-window attention on a normalised map `[B, H, W, C]`, pair by pair.

    Token P attends to token Q iff both fall in the same window of the map padded to
    whole windows and rolled up-left by `shift`; -100 is added to the logit when one
    of them wrapped around the roll (came from the first `shift` rows or columns)
    and the other did not. The bias of a pair is the table row of its offset within
    the window: `(dy + wh - 1) * (2 ww - 1) + (dx + ww - 1)`.
    """
    attn = block.attn
    (wh, ww), (sh, sw) = block.window, block.shift
    b, h, w, c = x.shape
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    xp = np.zeros((b, hp, wp, c))
    xp[:, :h, :w] = x
    heads = attn.num_heads
    hd = c // heads
    wq, bq = _np(attn.qkv.kernel[...]), _np(attn.qkv.bias[...])
    qkv = (xp @ wq + bq).reshape(b, hp, wp, 3, heads, hd)
    table = _np(attn.relative_position_bias_table[...])
    out = np.zeros((b, hp, wp, heads, hd))
    pos = [(r, s) for r in range(hp) for s in range(wp)]
    rolled = {p: ((p[0] - sh) % hp, (p[1] - sw) % wp) for p in pos}
    for p in pos:
        up = rolled[p]
        keys, bias = [], []
        for q in pos:
            uq = rolled[q]
            if (up[0] // wh, up[1] // ww) != (uq[0] // wh, uq[1] // ww):
                continue
            dy, dx = up[0] % wh - uq[0] % wh, up[1] % ww - uq[1] % ww
            row = (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)
            wrapped = (p[0] < sh) != (q[0] < sh) or (p[1] < sw) != (q[1] < sw)
            keys.append(q)
            bias.append(table[row] + (-100.0 if wrapped else 0.0))
        ks = np.array([qkv[:, q[0], q[1], 1] for q in keys])  # [n, B, heads, hd]
        vs = np.array([qkv[:, q[0], q[1], 2] for q in keys])
        qp = qkv[:, p[0], p[1], 0] / math.sqrt(hd)  # [B, heads, hd]
        logits = np.einsum("bhd,nbhd->bhn", qp, ks) + np.array(bias).T[None]
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[:, p[0], p[1]] = np.einsum("bhn,nbhd->bhd", weights, vs)
    out = out.reshape(b, hp, wp, c) @ _np(attn.proj.kernel[...]) + _np(attn.proj.bias[...])
    return out[:, :h, :w]


@pytest.mark.parametrize(
    "hw, shift",
    [((8, 8), (0, 0)), ((8, 8), (2, 2)), ((6, 10), (2, 2))],  # the last one is padded
)
def test_window_attention_matches_pairwise_reference(hw, shift):
    block = _block(shift)
    x = np.random.default_rng(1).normal(size=(2, *hw, 8)).astype(np.float32)
    got = jax.jit(lambda a: block.attention(a))(x)
    np.testing.assert_allclose(got, _attention_reference(block, x), rtol=2e-4, atol=2e-4)


def _changed(block: swin.SwinBlock, x: jax.Array, at: tuple[int, int]) -> np.ndarray:
    """`[H, W]` largest output change of the attention branch when token `at` changes."""
    y = x.at[:, at[0], at[1]].add(5.0)
    run = jax.jit(lambda a: block.attention(a))
    return np.abs(np.asarray(run(y) - run(x))).max(axis=(0, 3))


def test_shift_mask_keeps_wrapped_regions_apart():
    """8 x 8 map, 4 x 4 windows, shift 2: token (0, 0) wraps to the bottom-right window.

    That window holds original rows and columns {6, 7, 0, 1}; (0, 0) may only reach the
    tokens that wrapped with it, rows and columns {0, 1}.
    """
    shifted = _block((2, 2))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 8)), jnp.float32)
    change = _changed(shifted, x, (0, 0))
    reached = np.zeros((8, 8), bool)
    reached[:2, :2] = True
    assert change[reached].min() > 1e-3
    window = np.zeros((8, 8), bool)
    window[np.ix_([6, 7, 0, 1], [6, 7, 0, 1])] = True
    assert change[window & ~reached].max() < 1e-6  # same window, other regions: masked
    assert change[~window].max() == 0.0  # other windows: never computed together
    # An interior token's shifted window is whole: rows and columns 2..5.
    change = _changed(shifted, x, (3, 4))
    inner = np.zeros((8, 8), bool)
    inner[2:6, 2:6] = True
    assert change[inner].min() > 1e-3 and change[~inner].max() == 0.0
    # Without the shift, (0, 0) reaches its own top-left window and nothing else.
    plain = _block((0, 0))  # the same parameters (same seed), no shift
    change = _changed(plain, x, (0, 0))
    assert change[:4, :4].min() > 1e-3
    change[:4, :4] = 0.0
    assert change.max() == 0.0


def test_small_maps_use_one_window_without_shift():
    assert swin.effective_window((16, 5), (7, 7), (3, 3)) == ((7, 5), (3, 0))
    assert swin.effective_window((7, 7), (7, 7), (3, 3)) == ((7, 7), (0, 0))
    # MONAI's table rows for a 2 x 3 window of a 7 x 7 table: the top-left block.
    index = swin.relative_position_index((7, 7))
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 13 * 13 - 1
    assert index[0, 0] == index[48, 48] == 6 * 13 + 6  # zero offset: the table's centre
    assert index[0, 1] == 6 * 13 + 5 and index[7, 0] == 7 * 13 + 6
    labels = swin.shift_regions((8, 8), (4, 8), (2, 0))  # rows shifted, columns not
    assert labels.shape == (2, 32)
    assert len(set(labels[0])) == 1 and sorted(set(labels[1])) == [1, 2]


@pytest.mark.parametrize(
    "shape, merged", [((2, 6, 10, 4), (2, 3, 5, 8)), ((1, 5, 7, 4), (1, 3, 4, 8))]
)
def test_patch_merging(shape, merged):
    layer = _random(
        lambda: swin.PatchMerging(4, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    )
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    got = np.asarray(nnx.jit(lambda m, a: m(a))(layer, x))
    assert got.shape == merged
    b, h, w, c = shape
    xp = np.zeros((b, h + h % 2, w + w % 2, c))
    xp[:, :h, :w] = x
    # (row, col) offsets in Swin's order: (0,0), (1,0), (0,1), (1,1).
    cat = np.concatenate([xp[:, r::2, s::2] for r, s in ((0, 0), (1, 0), (0, 1), (1, 1))], -1)
    mean, var = cat.mean(-1, keepdims=True), cat.var(-1, keepdims=True)
    normed = (cat - mean) / np.sqrt(var + 1e-5) * _np(layer.norm.scale[...])
    want = (normed + _np(layer.norm.bias[...])) @ _np(layer.reduction.kernel[...])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_remat_recomputes_the_blocks():
    """`remat=True` wraps each of the 2 Swin blocks in a checkpoint (traced, not compiled)."""
    kw = dict(mlp_ratio=2.0, drop_path=[0.0, 0.0], dtype=jnp.float32, param_dtype=jnp.float32)
    x = np.zeros((1, 8, 8, 8), np.float32)
    texts = []
    for remat in (False, True):
        layer = nnx.eval_shape(
            lambda r=remat: swin.BasicLayer(8, 2, 2, (4, 4), remat=r, rngs=nnx.Rngs(0), **kw)
        )
        graphdef, params = nnx.split(layer)
        loss = lambda p, g=graphdef: jnp.sum(nnx.merge(g, p)(x) ** 2)
        texts.append(str(jax.make_jaxpr(loss)(params)))
    assert [len(re.findall(r"\bremat2\b", t)) for t in texts] == [0, 2]


# ------------------------------------------------------------------ settings and size


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"swin_unetr input_size needs H and W divisible by 64"):
        _tiny(input_size=96)
    with pytest.raises(ValueError, match=r"divisible by 32, got 64 x 48"):
        _tiny(input_size=(64, 48), patch_size=2)
    model = nnx.eval_shape(lambda: _tiny())
    with pytest.raises(ValueError, match=r"swin_unetr \(patch_size 4 x 2\*\*4\).*got 64 x 96"):
        model(jnp.zeros((1, 64, 96, 1)))
    with pytest.raises(ValueError, match=r"stage 2 width 24 .* not divisible by its 5 heads"):
        _tiny(num_heads=(1, 5, 1, 1))
    with pytest.raises(ValueError, match="depths and num_heads need 4 entries"):
        _tiny(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="norm must be one of instance, instance_affine, batch"):
        _tiny(norm="group")
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)"):
        _tiny(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        _tiny(patch_size=0)
    with pytest.raises(TypeError, match="'swin_unetr'.*'features'"):
        _tiny(features=8)


def _res(a: int, b: int) -> int:  # UnetResBlock: two 3x3 convs, a 1x1 when widths differ
    return 9 * a * b + 9 * b * b + (a * b if a != b else 0)


def _hand_count(f, depths, heads, *, window=7, patch=4, cin=1, k=3, mlp_ratio=4.0) -> int:
    n = patch * patch * cin * f + f  # patch embedding conv and bias
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        d, hidden = f * 2**i, int(f * 2**i * mlp_ratio)
        block = (
            2 * d  # norm1
            + (2 * window - 1) ** 2 * h  # relative position bias table
            + 3 * d * d + 3 * d  # qkv
            + d * d + d  # proj
            + 2 * d  # norm2
            + d * hidden + hidden + hidden * d + d  # mlp
        )  # fmt: skip
        n += depth * block + 2 * 4 * d + 4 * d * 2 * d  # patch merging: norm, reduction
    n += _res(cin, f) + _res(f, f) + _res(2 * f, 2 * f) + _res(4 * f, 4 * f)
    n += _res(16 * f, 16 * f)  # encoder10
    for a, b, up in ((16 * f, 8 * f, 2), (8 * f, 4 * f, 2), (4 * f, 2 * f, 2), (2 * f, f, 2)):
        n += up * up * a * b + _res(2 * b, b)
    n += patch * patch * f * f + _res(2 * f, f)  # decoder1 upsamples by the patch size
    return n + f * k + k  # 1x1 head with bias


def test_parameter_count_of_the_paper_configuration():
    """Feature 96, depths 2-2-18-2, heads 3-6-12-24, patch 4, window 7, RGB input."""
    model = nnx.eval_shape(
        lambda: build_model(
            "swin_unetr", num_outputs=8, input_size=512, in_channels=3, rngs=nnx.Rngs(0)
        )
    )
    expected = _hand_count(96, (2, 2, 18, 2), (3, 6, 12, 24), cin=3, k=8)
    assert count_params(model) == expected == 128_996_882
    assert nnx.state(model, nnx.BatchStat) == nnx.State({})  # instance norms: no statistics
    tiny = nnx.eval_shape(lambda: _tiny(patch_size=2, norm="instance_affine"))
    # Scale and bias of each norm: encoders 1 (3 norms), 2, 3, 4, 10; decoders 5..1 (3 each).
    affine = 2 * (12 * 5 + 24 * 2 + 48 * 2 + 192 * 2 + 96 * 3 + 48 * 3 + 24 * 3 + 12 * 6)
    assert count_params(tiny) == _hand_count(12, (1,) * 4, (1,) * 4, patch=2) + affine


def test_layer_index_numbers_the_swin_blocks():
    model = nnx.eval_shape(lambda: _tiny(depths=(2, 2, 6, 2), num_heads=(1, 1, 1, 1)))
    assert model.num_layers == 12
    index = model.layer_index
    assert index(("swinViT", "patch_embed", "proj", "kernel")) == -1
    assert index(("swinViT", "layers1", 0, "blocks", 1, "attn", "qkv", "kernel")) == 1
    assert index(("swinViT", "layers3", 0, "blocks", 5, "mlp", "linear1", "bias")) == 9
    assert index(("swinViT", "layers2", 0, "downsample", "reduction", "kernel")) == 3
    assert index(("decoder1", "transp_conv", "conv", "kernel")) == 12
    assert index(("out", "conv", "conv", "bias")) == 12


# ------------------------------------------------------------------ MONAI weights


def _monai_state(f, depths, heads, *, window=7, patch=2, cin=1, k=3, seed=0) -> dict:
    """A random state dict with MONAI SwinUNETR's keys and PyTorch layouts (2D)."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple] = {
        "swinViT.patch_embed.proj.weight": (f, cin, patch, patch),
        "swinViT.patch_embed.proj.bias": (f,),
    }
    index = {}
    for s in range(4):
        d = f * 2**s
        for b in range(depths[s]):
            p = f"swinViT.layers{s + 1}.0.blocks.{b}."
            shapes |= {
                p + "norm1.weight": (d,),
                p + "norm1.bias": (d,),
                p + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads[s]),
                p + "attn.qkv.weight": (3 * d, d),
                p + "attn.qkv.bias": (3 * d,),
                p + "attn.proj.weight": (d, d),
                p + "attn.proj.bias": (d,),
                p + "norm2.weight": (d,),
                p + "norm2.bias": (d,),
                p + "mlp.linear1.weight": (4 * d, d),
                p + "mlp.linear1.bias": (4 * d,),
                p + "mlp.linear2.weight": (d, 4 * d),
                p + "mlp.linear2.bias": (d,),
            }
            index[p + "attn.relative_position_index"] = _monai_index(window)
        p = f"swinViT.layers{s + 1}.0.downsample."
        shapes |= {
            p + "norm.weight": (4 * d,),
            p + "norm.bias": (4 * d,),
            p + "reduction.weight": (2 * d, 4 * d),
        }
    widths = {"encoder1": (cin, f), "encoder2": (f, f), "encoder3": (2 * f, 2 * f)}
    widths |= {"encoder4": (4 * f, 4 * f), "encoder10": (16 * f, 16 * f)}
    for name, (a, b) in widths.items():
        shapes[f"{name}.layer.conv1.conv.weight"] = (b, a, 3, 3)
        shapes[f"{name}.layer.conv2.conv.weight"] = (b, b, 3, 3)
        if a != b:
            shapes[f"{name}.layer.conv3.conv.weight"] = (b, a, 1, 1)
    ups = {"decoder5": (16 * f, 8 * f), "decoder4": (8 * f, 4 * f), "decoder3": (4 * f, 2 * f)}
    ups |= {"decoder2": (2 * f, f), "decoder1": (f, f)}
    for name, (a, b) in ups.items():
        shapes[f"{name}.transp_conv.conv.weight"] = (a, b, 2, 2)
        shapes[f"{name}.conv_block.conv1.conv.weight"] = (b, 2 * b, 3, 3)
        shapes[f"{name}.conv_block.conv2.conv.weight"] = (b, b, 3, 3)
        shapes[f"{name}.conv_block.conv3.conv.weight"] = (b, 2 * b, 1, 1)
    shapes |= {"out.conv.conv.weight": (k, f, 1, 1), "out.conv.conv.bias": (k,)}
    state = {key: rng.normal(0, 0.5, s).astype(np.float32) for key, s in shapes.items()}
    return state | index


def _monai_index(window: int) -> np.ndarray:
    """The relative_position_index buffer as MONAI builds it (meshgrid ij, offsets)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    flat = coords.reshape(2, -1)
    rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int64)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_monai_checkpoint_loads_one_to_one(tmp_path):
    from safetensors.numpy import save_file

    state = _monai_state(12, (1, 1, 1, 1), (1, 1, 1, 1))
    path = tmp_path / "swin_unetr.safetensors"
    save_file(state, str(path))
    model = _random(lambda: _tiny(patch_size=2))
    report = load_pretrained(model, path, "swin_unetr_monai", strict=True)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.skipped) == sorted(k for k in state if k.endswith("position_index"))
    assert len(report.loaded) == len(state) - 4 == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    for key, buffer in state.items():  # the index the model computes is MONAI's
        if key.endswith("position_index"):
            np.testing.assert_array_equal(swin.relative_position_index((7, 7)), buffer)

    x = np.random.default_rng(1).normal(size=(2, 8, 12, 1)).astype(np.float32)
    # Patch embedding: 2 x 2 conv with stride 2 and bias, PyTorch weight [out, in, kh, kw].
    w, b = state["swinViT.patch_embed.proj.weight"], state["swinViT.patch_embed.proj.bias"]
    patches = x.reshape(2, 4, 2, 6, 2, 1)  # [B, i, a, j, c, cin]
    want = np.einsum("biajcn,onac->bijo", patches, w) + b
    got = model.swinViT.patch_embed(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    block = model.swinViT.layers2[0].blocks[0]
    p = "swinViT.layers2.0.blocks.0."
    t = np.random.default_rng(2).normal(size=(3, 24)).astype(np.float32)
    want = t @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]
    np.testing.assert_allclose(block.attn.qkv(t), want, rtol=1e-4, atol=1e-4)
    hidden = _gelu(t @ state[p + "mlp.linear1.weight"].T + state[p + "mlp.linear1.bias"])
    want = hidden @ state[p + "mlp.linear2.weight"].T + state[p + "mlp.linear2.bias"]
    np.testing.assert_allclose(block.mlp(t), want, rtol=1e-4, atol=1e-3)
    # The bias of a 7 x 7 window reads the table through MONAI's index.
    table = state[p + "attn.relative_position_bias_table"]
    want = table[_monai_index(7)].transpose(2, 0, 1)
    np.testing.assert_allclose(block.attn.bias(49), want)
    # Transposed conv, kernel = stride = 2: out[2i + a, 2j + c] = sum x[i, j] W[in, out, a, c].
    w = state["decoder1.transp_conv.conv.weight"]
    y = np.random.default_rng(3).normal(size=(1, 3, 4, 12)).astype(np.float32)
    want = np.einsum("bijn,noac->biajco", y, w).reshape(1, 6, 8, 12)
    got = model.decoder1.transp_conv(y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_rgb_checkpoint_fits_a_gray_model_and_patch_4_reports_mismatches():
    state = _monai_state(12, (1, 1, 1, 1), (1, 1, 1, 1), cin=3)
    model = _random(lambda: _tiny(patch_size=4))
    report = load_pretrained(model, state, "swin_unetr_monai")
    assert report.missing == [] and report.unexpected == []
    mismatched = sorted(key for key, *_ in report.mismatched)
    assert mismatched == ["decoder1.transp_conv.conv.weight", "swinViT.patch_embed.proj.weight"]
    w = state["encoder1.layer.conv1.conv.weight"]  # RGB kernel summed for one channel
    np.testing.assert_allclose(
        model.encoder1.layer.conv1.conv.kernel[...],
        w.sum(1, keepdims=True).transpose(2, 3, 1, 0),
        rtol=1e-6,
    )


# ------------------------------------------------------------------ config and training


def _isbi_config(arg: str):
    return configs.load(f"{CONFIG}:{arg}", resolved=False)


@pytest.mark.parametrize("arg", ["gpu", "cpu", "smoke"])
def test_isbi_config_builds(arg):
    config = _isbi_config(arg)
    assert config.model.name == "swin_unetr"
    task = task_spec(config)
    assert (task.mode, task.target_kind, dict(task.losses)) == (
        "segmentation",
        "circle",
        {"dice_ce": 1.0},
    )
    assert task.compute_dtype == ("bfloat16" if arg == "gpu" else "float32")
    if arg == "gpu":
        assert tuple(config.data.input_size) == (640, 512)
        assert config.model.feature_size == 96 and tuple(config.model.depths) == (2, 2, 18, 2)
        assert config.model.patch_size == 4 and config.optim.learning_rate == 1e-4
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    model = nnx.eval_shape(
        lambda: build_model(
            "swin_unetr", num_outputs=19, input_size=tuple(config.data.input_size),
            in_channels=1, rngs=nnx.Rngs(0), **kwargs,
        )
    )  # fmt: skip
    assert count_params(model) > 0
    with pytest.raises(ValueError, match="gpu, cpu or smoke"):
        _isbi_config("tpu")


@pytest.mark.slow
def test_trains_on_the_phantom(tmp_path):
    config = phantom_config("tiny")
    with config.unlocked():
        config.data.augment = ""
        config.model = ml_collections.ConfigDict({"name": "swin_unetr", **TINY})
        config.task.mode = "segmentation"
        config.task.target = "circle"
        config.task.radius = 4.0
        config.task.losses = {"dice_ce": 1.0}
        config.task.extractor = "midpoint"
        config.task.deep_supervision = False
        config.optim.learning_rate = 5e-3
        config.optim.warmup_steps = 5
        config.train.steps = 60
        config.train.eval_every = 60
        config.train.log_every = 20
    _, val, _ = setup.load_splits(config)
    mesh, state, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    losses = [v for _, v in read_scalars(tmp_path / TENSORBOARD_DIR)["train/loss"]]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    # 60 steps take the validation MRE from about 119 to 87 px (measured).
    assert after["mre"] < 0.85 * before["mre"], (before["mre"], after["mre"])
