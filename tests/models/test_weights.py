"""Pretrained-weight import: files, tables, transforms, reports, the ViT tables, the loop hook."""

from __future__ import annotations

import importlib.util
import math
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from lmjax.configs.phantom import get_config as phantom_config
from lmjax.models import build_model, weights
from lmjax.models.weights import (
    FITS,
    TRANSFORMS,
    ImportReport,
    Rule,
    bicubic_matrix,
    load_pretrained,
    read_checkpoint,
    register_weight_table,
    resize_grid,
)
from lmjax.train import setup

W, DEPTH, HEADS, P, PAD = 32, 3, 2, 16, 2  # the "tiny" ViT
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _tiny(input_size=32, in_channels=1, lora=None):
    kw = dict(size="tiny", num_outputs=3, input_size=input_size, in_channels=in_channels)
    if lora:
        kw["lora_ranks"] = lora
    return build_model("vit_pose", rngs=nnx.Rngs(0), **kw)


def _sapiens_ckpt(grid=(2, 2), *, cls=False, in_channels=3, prefix="backbone.", seed=0):
    """A random checkpoint in mmpretrain/Sapiens names and PyTorch layouts."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)
    n = grid[0] * grid[1] + int(cls)
    d = {
        "patch_embed.projection.weight": r(W, in_channels, P, P) * 0.1,
        "patch_embed.projection.bias": r(W),
        "pos_embed": r(1, n, W),
        "ln1.weight": 1 + r(W),
        "ln1.bias": r(W),
    }
    if cls:
        d["cls_token"] = r(1, 1, W)
    for i in range(DEPTH):
        b = f"layers.{i}."
        d.update(
            {
                b + "ln1.weight": 1 + r(W),
                b + "ln1.bias": r(W),
                b + "attn.qkv.weight": r(3 * W, W),
                b + "attn.qkv.bias": r(3 * W),
                b + "attn.proj.weight": r(W, W),
                b + "attn.proj.bias": r(W),
                b + "ln2.weight": 1 + r(W),
                b + "ln2.bias": r(W),
                b + "ffn.layers.0.0.weight": r(4 * W, W),
                b + "ffn.layers.0.0.bias": r(4 * W),
                b + "ffn.layers.1.weight": r(W, 4 * W),
                b + "ffn.layers.1.bias": r(W),
            }
        )
    out = {prefix + k: v for k, v in d.items()}
    out["head.final_layer.weight"] = r(17, 768, 1, 1)  # a Sapiens pose head: skipped
    return out


def _timm_from_sapiens(ck: dict) -> dict:
    """The same weights under timm's names."""
    names = {
        "patch_embed.projection": "patch_embed.proj",
        "ffn.layers.0.0": "mlp.fc1",
        "ffn.layers.1": "mlp.fc2",
        "layers.": "blocks.",
    }
    out = {}
    for key, value in ck.items():
        if not key.startswith("backbone."):
            continue
        k = key[len("backbone.") :]
        if k.startswith("ln1."):
            k = "norm." + k[4:]
        for a, b in names.items():
            k = k.replace(a, b)
        k = k.replace(".ln1.", ".norm1.").replace(".ln2.", ".norm2.")
        out[k] = value
    return out


def _write(ck: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        save_file(ck, str(path))
    elif str(path).endswith(".npz"):
        np.savez(path, **ck)
    else:
        import torch

        torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in ck.items()}}, path)
    return str(path)


# ---------------------------------------------------------------- NumPy references


def _np_patch_embed(img, w, b):
    """PyTorch Conv2d(k=P, stride=P, padding=PAD) on NHWC `img`; w OIHW. -> [B, gh, gw, O]"""
    x = np.pad(img, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    n, h, wd, c = x.shape
    gh, gw = (h - P) // P + 1, (wd - P) // P + 1
    patches = x[:, : gh * P, : gw * P].reshape(n, gh, P, gw, P, c)
    return np.einsum("nipjqc,ocpq->nijo", patches, w) + b


def _np_ln(x, g, b, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _np_attention(x, wqkv, bqkv, wproj, bproj):
    bsz, n, d = x.shape
    hd = d // HEADS
    qkv = (x @ wqkv.T + bqkv).reshape(bsz, n, 3, HEADS, hd)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, h, N, hd]
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(bsz, n, d)
    return out @ wproj.T + bproj


def _np_conv_transpose2d(x, w, stride, pad):
    """PyTorch ConvTranspose2d by its definition; x NCHW, w [in, out, kh, kw]."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            contrib = np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
            full[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += contrib
    return full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad]


def _np_conv(x, w, pad):
    """PyTorch ConvNd (stride 1) by its definition; x [N, C, *S], w [O, C, *K]."""
    k = w.shape[2:]
    x = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * len(k))
    out_shape = [s - kk + 1 for s, kk in zip(x.shape[2:], k, strict=True)]
    out = np.zeros((x.shape[0], w.shape[0], *out_shape))
    for offset in np.ndindex(*k):
        spans = (slice(o, o + s) for o, s in zip(offset, out_shape, strict=True))
        window = x[(slice(None), slice(None), *spans)]
        out += np.einsum("nc...,oc->no...", window, w[(slice(None), slice(None), *offset)])
    return out


def _check_forward(model, ck, *, gray=True, prefix="backbone."):
    """One layer of each kind against NumPy from the checkpoint arrays."""
    g = lambda k: ck[prefix + k]
    rng = np.random.default_rng(5)
    gray_img = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
    rgb = np.repeat(gray_img, 3, axis=-1)
    got = np.asarray(model.patch_embed(jnp.asarray(gray_img if gray else rgb)))
    want = _np_patch_embed(
        rgb, g("patch_embed.projection.weight"), g("patch_embed.projection.bias")
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    x = rng.normal(size=(2, 4, W)).astype(np.float32)
    block = model.blocks[1]
    np.testing.assert_allclose(
        np.asarray(block.norm1(jnp.asarray(x))),
        _np_ln(x, g("layers.1.ln1.weight"), g("layers.1.ln1.bias")),
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        np.asarray(model.norm(jnp.asarray(x))),
        _np_ln(x, g("ln1.weight"), g("ln1.bias")),
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        np.asarray(block.attn(jnp.asarray(x))),
        _np_attention(
            x,
            g("layers.1.attn.qkv.weight"),
            g("layers.1.attn.qkv.bias"),
            g("layers.1.attn.proj.weight"),
            g("layers.1.attn.proj.bias"),
        ),
        rtol=1e-4,
        atol=1e-4,
    )
    for fc, key in (("fc1", "ffn.layers.0.0"), ("fc2", "ffn.layers.1")):
        layer = getattr(block, fc)
        xin = rng.normal(size=(2, layer.in_features)).astype(np.float32)
        want = xin @ g(f"layers.1.{key}.weight").T + g(f"layers.1.{key}.bias")
        np.testing.assert_allclose(np.asarray(layer(jnp.asarray(xin))), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("kernel,pad", [(2, 0), (4, 1)])
def test_conv_transpose2d_matches_pytorch_semantics(kernel, pad):
    rng = np.random.default_rng(kernel)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)  # NCHW
    w = rng.normal(size=(3, 6, kernel, kernel)).astype(np.float32)  # [in, out, kh, kw]
    want = _np_conv_transpose2d(x, w, 2, pad)
    assert want.shape[2:] == (10, 8)  # both settings double the map
    f = kernel - 1 - pad
    conv = nnx.ConvTranspose(
        3, 6, (kernel, kernel), (2, 2), padding=((f, f), (f, f)), use_bias=False, rngs=nnx.Rngs(0)
    )
    conv.kernel[...] = jnp.asarray(TRANSFORMS["conv_transpose2d"](w))
    got = np.asarray(conv(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_conv_transform_matches_pytorch_semantics(dims):
    rng = np.random.default_rng(dims)
    x = rng.normal(size=(1, 2, *([5] * dims))).astype(np.float32)
    w = rng.normal(size=(4, 2, *([3] * dims))).astype(np.float32)  # OI + spatial
    conv = nnx.Conv(2, 4, (3,) * dims, padding=1, use_bias=False, rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(TRANSFORMS[f"conv{dims}d"](w))
    x_last = np.moveaxis(x, 1, -1)
    got = np.moveaxis(np.asarray(conv(jnp.asarray(x_last))), -1, 1)
    np.testing.assert_allclose(got, _np_conv(x, w, 1), rtol=1e-4, atol=1e-4)


def test_transforms_reject_wrong_ranks():
    with pytest.raises(ValueError, match="2 dimensions"):
        TRANSFORMS["linear"](np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="at least 3"):
        TRANSFORMS["conv2d"](np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown transform"):
        Rule("a", "b", "transpose")


def test_bicubic_matrix_is_pytorchs():
    np.testing.assert_allclose(bicubic_matrix(5, 5), np.eye(5), atol=1e-12)
    # Halving: each output sits between two inputs (t = 1/2): Keys a = -0.75 weights.
    m = bicubic_matrix(8, 4)
    np.testing.assert_allclose(m[1, 1:5], [-0.09375, 0.59375, 0.59375, -0.09375])
    np.testing.assert_allclose(m[0, :3], [-0.09375 + 0.59375, 0.59375, -0.09375])  # edge clamp
    # Any ratio: the cubic kernel u(distance) at the four nearest inputs (edges repeated).
    for n_in, n_out in ((6, 12), (5, 3), (4, 7)):
        want = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = (i + 0.5) * n_in / n_out - 0.5
            for j in range(math.floor(src) - 1, math.floor(src) + 3):
                want[i, min(max(j, 0), n_in - 1)] += _keys(abs(src - j))
        np.testing.assert_allclose(bicubic_matrix(n_in, n_out), want, atol=1e-12)
        np.testing.assert_allclose(want.sum(1), 1.0)


def _keys(x, a=-0.75):
    """Keys' cubic convolution kernel, with PyTorch's a = -0.75."""
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


# ---------------------------------------------------------------- reading files


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pth"])
def test_sapiens_import_matches_numpy(tmp_path, suffix):
    if suffix == ".pth" and not HAS_TORCH:
        pytest.skip("PyTorch is not installed to write the file (test_torch_zip writes its own)")
    ck = _sapiens_ckpt()
    path = _write(ck, tmp_path / f"sapiens{suffix}")
    model = _tiny()
    report = load_pretrained(model, path, "vit_sapiens")
    assert report.ok, report.summary()
    assert report.skipped == ["head.final_layer.weight"]
    assert "patch_embed.kernel" in report.loaded and "blocks.2.fc2.bias" in report.loaded
    assert not any(p.startswith("head.") for p in report.loaded)
    np.testing.assert_allclose(
        np.asarray(model.pos_embed[...]).reshape(4, W), ck["backbone.pos_embed"][0]
    )
    _check_forward(model, ck)


def test_rgb_model_keeps_the_three_channels(tmp_path):
    ck = _sapiens_ckpt()
    model = _tiny(in_channels=3)
    assert load_pretrained(model, ck, "vit_sapiens").ok
    _check_forward(model, ck, gray=False)


def test_lora_model_imports_into_the_wrapped_linears():
    ck = _sapiens_ckpt()
    model = _tiny(lora={"qkv": 4, "proj": 8})
    report = load_pretrained(model, ck, "vit_sapiens")
    assert report.ok, report.summary()
    assert "blocks.0.attn.qkv.base.kernel" in report.loaded
    _check_forward(model, ck)  # B = 0 at init: the adapted layers equal the base ones
    shown = load_pretrained(model, ck, "vit_sapiens", ignore_lora=False)
    assert "blocks.0.attn.qkv.lora_a" in shown.missing
    assert "blocks.2.attn.proj.lora_b" in shown.missing


def test_read_checkpoint_unwraps_and_widens(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_file({"module.x": a.astype(ml_dtypes.bfloat16), "y": a}, str(tmp_path / "w.safetensors"))
    out = read_checkpoint(tmp_path / "w.safetensors")
    assert sorted(out) == ["x", "y"]
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], a)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        read_checkpoint(tmp_path / "nothere.safetensors")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"w\.ckpt: unknown checkpoint suffix"):
        read_checkpoint(tmp_path / "w.ckpt")
    np.savez(tmp_path / "obj.npz", a=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz: not a plain array archive"):
        read_checkpoint(tmp_path / "obj.npz")
    with pytest.raises(ValueError, match="unknown weight table 'nope'"):
        load_pretrained(_tiny(), {}, "nope")


def test_pth_is_read_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"w\.pth: not a PyTorch zip checkpoint$"):
        read_checkpoint(tmp_path / "w.pth")


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_pth_non_array_entries_are_named(tmp_path):
    import torch

    torch.save({"w": torch.zeros(2), "epoch": 3}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w\.pt: 1 entries are not arrays: epoch"):
        read_checkpoint(tmp_path / "w.pt")


# ---------------------------------------------------------------- reports


def _broken_ckpt():
    ck = _sapiens_ckpt()
    del ck["backbone.layers.1.ln2.bias"]
    ck["backbone.foo.weight"] = np.zeros(3, np.float32)
    ck["backbone.layers.7.ln1.weight"] = np.zeros(W, np.float32)  # no block 7 in the model
    ck["backbone.layers.2.attn.proj.weight"] = np.zeros((W, W + 1), np.float32)
    return ck


def test_report_names_missing_unexpected_and_mismatched():
    model = _tiny()
    before = np.asarray(model.blocks[2].attn.proj.kernel[...])
    report = load_pretrained(model, _broken_ckpt(), "vit_sapiens")
    assert not report.ok
    assert report.missing == ["blocks.1.norm2.bias"]
    assert report.unexpected == ["backbone.foo.weight", "backbone.layers.7.ln1.weight"]
    assert report.no_target == {"backbone.layers.7.ln1.weight": "blocks.7.norm1.scale"}
    assert report.mismatched == [
        ("backbone.layers.2.attn.proj.weight", "blocks.2.attn.proj.kernel", (W + 1, W), (W, W))
    ]
    np.testing.assert_array_equal(np.asarray(model.blocks[2].attn.proj.kernel[...]), before)
    text = report.summary()
    assert "1 missing, 2 unexpected, 1 mismatched" in text
    assert "blocks.1.norm2.bias" in text and "(33, 32) vs model (32, 32)" in text
    # The head is outside the table; without its default ignore it shows as missing.
    rules = load_pretrained(_tiny(), _sapiens_ckpt(), list(weights.WEIGHT_TABLES["vit_sapiens"]))
    assert "head.final.kernel" in rules.missing and "head.deconv_norms.0.mean" in rules.missing


def test_strict_raises_with_the_names_and_leaves_the_model():
    model = _tiny()
    before = np.asarray(model.blocks[0].fc1.kernel[...])
    with pytest.raises(ValueError, match="blocks.1.norm2.bias") as err:
        load_pretrained(model, _broken_ckpt(), "vit_sapiens", strict=True)
    assert "backbone.foo.weight" in str(err.value)
    assert "backbone.layers.2.attn.proj.weight" in str(err.value)
    np.testing.assert_array_equal(np.asarray(model.blocks[0].fc1.kernel[...]), before)
    # ignore_missing takes prefixes and patterns.
    ck = _sapiens_ckpt()
    del ck["backbone.layers.1.ln2.bias"], ck["backbone.layers.0.ln2.bias"]
    report = load_pretrained(
        _tiny(), ck, "vit_sapiens", strict=True, ignore_missing=[r"blocks\.\d\.norm2\.bias"]
    )
    assert report.ok


def test_two_keys_for_one_target_are_an_error():
    ck = _sapiens_ckpt()
    ck["ln1.weight"] = ck["backbone.ln1.weight"]
    with pytest.raises(ValueError, match=r"'backbone.ln1.weight' and 'ln1.weight' both fill"):
        load_pretrained(_tiny(), ck, "vit_sapiens")


def test_register_weight_table(monkeypatch):
    monkeypatch.setattr(weights, "WEIGHT_TABLES", dict(weights.WEIGHT_TABLES))
    monkeypatch.setattr(weights, "TABLE_IGNORE", dict(weights.TABLE_IGNORE))
    monkeypatch.setattr(weights, "MODEL_TABLES", dict(weights.MODEL_TABLES))
    rules = [Rule(r"w(\d)", r"blocks.\1.fc1.kernel", "linear")]
    register_weight_table("test_only_fc1", rules, model=("test_model", "vit_pose"))
    assert weights.MODEL_TABLES["test_model"] == "test_only_fc1"
    assert weights.MODEL_TABLES["vit_pose"] == "vit_sapiens"  # a model keeps its first table
    with pytest.raises(ValueError, match="already registered"):
        register_weight_table("test_only_fc1", rules)
    model = _tiny()
    w = np.random.default_rng(0).normal(size=(4 * W, W)).astype(np.float32)
    report = load_pretrained(model, {"w1": w}, "test_only_fc1")
    assert report.loaded == ["blocks.1.fc1.kernel"] and len(report.missing) > 10
    np.testing.assert_array_equal(np.asarray(model.blocks[1].fc1.kernel[...]), w.T)
    assert isinstance(report, ImportReport)


# ---------------------------------------------------------------- position tables


def test_position_table_is_resized_and_the_class_token_dropped():
    ck = _sapiens_ckpt(grid=(2, 3), cls=True)
    model = _tiny(input_size=(64, 96))  # grid 4 x 6, the checkpoint's aspect
    report = load_pretrained(model, ck, "vit_sapiens")
    assert report.ok, report.summary()
    assert "backbone.cls_token" in report.skipped
    tokens = ck["backbone.pos_embed"][0]
    grid = tokens[1:].reshape(2, 3, W)
    want = np.einsum("ih,hwd,jw->ijd", bicubic_matrix(2, 4), grid, bicubic_matrix(3, 6))
    np.testing.assert_allclose(np.asarray(model.pos_embed[...])[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resize_grid(grid, (4, 6)), want, rtol=1e-5, atol=1e-6)


def test_position_table_grid_is_inferred():
    fit = FITS["pos_embed"]
    d = 4
    square = np.arange(17 * d, dtype=np.float32).reshape(1, 17, d)  # cls + 4 x 4
    out = fit(square, (1, 4, 4, d))
    np.testing.assert_array_equal(out[0], square[0, 1:].reshape(4, 4, d))
    wide = np.arange(6 * d, dtype=np.float32).reshape(1, 6, d)  # 2 x 3, no cls, model 4 x 6
    assert fit(wide, (1, 4, 6, d)).shape == (1, 4, 6, d)
    table = np.ones((1, 2, 2, d), np.float32)  # already a grid (an lmjax export)
    np.testing.assert_allclose(fit(table, (1, 3, 3, d)), np.ones((1, 3, 3, d)), rtol=1e-6)
    vitpose = FITS["pos_embed_add_cls"](square, (1, 4, 4, d))
    np.testing.assert_array_equal(vitpose[0], square[0, 1:].reshape(4, 4, d) + square[0, 0])


# ---------------------------------------------------------------- other layouts


def test_timm_and_vitpose_layouts():
    ck = _sapiens_ckpt(cls=True)
    timm = _timm_from_sapiens(ck)
    timm["head.weight"] = np.zeros((1000, W), np.float32)
    model = _tiny()
    report = load_pretrained(model, timm, "vit_timm")
    assert report.ok, report.summary()
    assert sorted(report.skipped) == ["cls_token", "head.weight"]
    _check_forward(model, ck)
    np.testing.assert_allclose(
        np.asarray(model.pos_embed[...]).reshape(4, W), ck["backbone.pos_embed"][0, 1:]
    )
    vitpose = {"backbone." + k.replace("norm.", "last_norm."): v for k, v in timm.items()}
    vitpose = {k: v for k, v in vitpose.items() if "head" not in k}
    vitpose["keypoint_head.final_layer.weight"] = np.zeros((17, 256, 1, 1), np.float32)
    model = _tiny()
    report = load_pretrained(model, vitpose, "vitpose")
    assert report.ok, report.summary()
    pos = ck["backbone.pos_embed"][0]
    np.testing.assert_allclose(np.asarray(model.pos_embed[...]).reshape(4, W), pos[1:] + pos[0])
    _check_forward(model, ck)


# ---------------------------------------------------------------- the loop hook


def test_loop_build_loads_the_configured_weights(tmp_path):
    ck = _sapiens_ckpt(grid=(4, 4))
    path = _write(ck, tmp_path / "sapiens.safetensors")
    config = phantom_config("tiny")
    with config.unlocked():
        config.model = type(config.model)(
            {
                "name": "vit_pose",
                "size": "tiny",
                "pretrained": path,
                "pretrained_table": "",  # the model's default: vit_sapiens
                "pretrained_strict": True,
            }
        )
        config.task.deep_supervision = False
    lines = []
    _, state, _, _, _ = setup.build(config, 5, log=lines.append)
    assert len(lines) == 1 and "vit_sapiens" in lines[0] and "0 missing" in lines[0]
    params = jax.device_get(state.params)
    np.testing.assert_array_equal(
        np.asarray(params["blocks"][1]["attn"]["qkv"]["kernel"][...]),
        ck["backbone.layers.1.attn.qkv.weight"].T,
    )
    np.testing.assert_allclose(
        np.asarray(params["pos_embed"][...])[0],
        ck["backbone.pos_embed"][0].reshape(4, 4, W),
    )
    # Without a file, nothing is loaded or logged; restoring a run skips the import.
    with config.unlocked():
        config.model.pretrained = str(tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        setup.build(config, 5, log=lines.append)
    setup.build(config, 5, log=lines.append, pretrained=False)
    assert len(lines) == 1
