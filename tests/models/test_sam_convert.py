"""SAM checkpoint conversion: layouts, wrappers, strictness, shapes, the `convert` command.

Checkpoints are tiny random SAMs written here (safetensors, a torch zip without torch,
HF names); ViT-B is checked on shapes only, with `nnx.eval_shape`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from lmjax.models import sam_convert as sc
from lmjax.models.sam import SAM_SIZES, build_sam
from lmjax.models.sam_keys import HF_PE, HF_TIED_PE, detect_layout, original_to_hf
from tests.models.test_torch_zip import save_torch_zip
from tests.test_cli import run_cli

TINY = SAM_SIZES["tiny"]


class Shape:
    def __init__(self, shape):
        self.shape = shape


def _flat(model) -> dict:
    return {
        path: np.asarray(v.get_value())
        for path, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Variable)
    }


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, np.ndarray]:
    """Every tensor of a tiny SAM random (the zero-initialised tables too), torch layout."""
    shapes = sc.original_shapes(nnx.eval_shape(lambda: build_sam(size="tiny", rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def reference(tiny_sd):
    # Abstract: every variable is overwritten, so an eager random init would only compile.
    model = nnx.eval_shape(lambda: build_sam(size="tiny", rngs=nnx.Rngs(1)))
    return sc.original_to_nnx(tiny_sd, model)


def _load(path, **kw):
    return sc.load_sam(path, decoder_heads=TINY.decoder_heads, **kw)


def test_vit_b_shapes_config_and_counts():
    model = nnx.eval_shape(lambda: build_sam(size="vit_b", rngs=nnx.Rngs(0)))
    shapes = sc.original_shapes(model)
    # The brief's 314 tensors are the model's own; pixel_mean/std are extra when present.
    assert len(shapes) == 314 and "pixel_mean" not in shapes
    assert sum(int(np.prod(s)) for s in shapes.values()) == 93_735_728
    assert shapes["image_encoder.blocks.0.attn.rel_pos_h"] == (27, 64)
    assert shapes["image_encoder.blocks.2.attn.rel_pos_h"] == (127, 64)
    assert shapes["mask_decoder.output_upscaling.0.weight"] == (256, 64, 2, 2)
    assert shapes["image_encoder.neck.2.weight"] == (256, 256, 3, 3)
    config = sc.infer_sam_config({k: Shape(s) for k, s in shapes.items()})
    got = [config[k] for k in ("embed_dim", "depth", "num_heads", "window_size")]
    assert got == [768, 12, 12, 14]
    assert config["global_attn_indexes"] == (2, 5, 8, 11)
    assert (config["image_size"], config["patch_size"], config["prompt_dim"]) == (1024, 16, 256)
    hf = original_to_hf({k: Shape(s) for k, s in shapes.items()})
    assert len(hf) == 315
    assert detect_layout(shapes) == "original" and detect_layout(hf) == "hf"


def test_tiny_config_is_inferred(tiny_sd):
    config = sc.infer_sam_config(tiny_sd, decoder_heads=2)
    size = dataclasses.asdict(TINY)
    for key, value in config.items():
        if key in size:
            assert value == size[key], key
    assert config["in_channels"] == 3 and config["num_multimask_outputs"] == 3


@pytest.mark.parametrize(
    "hf, original",
    [
        ("vision_encoder.layers.3.layer_norm1.weight", "image_encoder.blocks.3.norm1.weight"),
        ("vision_encoder.layers.3.attn.rel_pos_h", "image_encoder.blocks.3.attn.rel_pos_h"),
        ("vision_encoder.patch_embed.projection.bias", "image_encoder.patch_embed.proj.bias"),
        ("vision_encoder.neck.layer_norm2.weight", "image_encoder.neck.3.weight"),
        (HF_PE, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
        ("prompt_encoder.point_embed.2.weight", "prompt_encoder.point_embeddings.2.weight"),
        ("prompt_encoder.mask_embed.conv3.bias", "prompt_encoder.mask_downscaling.6.bias"),
        (
            "mask_decoder.transformer.layers.1.layer_norm4.bias",
            "mask_decoder.transformer.layers.1.norm4.bias",
        ),
        (
            "mask_decoder.transformer.layer_norm_final_attn.weight",
            "mask_decoder.transformer.norm_final_attn.weight",
        ),
        ("mask_decoder.upscale_conv2.weight", "mask_decoder.output_upscaling.3.weight"),
        ("mask_decoder.upsacle_layer_norm.bias", "mask_decoder.output_upscaling.1.bias"),
        (
            "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight",
            "mask_decoder.output_hypernetworks_mlps.3.layers.1.weight",
        ),
        (
            "mask_decoder.iou_prediction_head.proj_out.bias",
            "mask_decoder.iou_prediction_head.layers.2.bias",
        ),
        (
            "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
            "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
        ),
        ("mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    ],
)  # fmt: skip
def test_hf_names_map_to_the_original_names(hf, original):
    assert list(sc.hf_to_original({hf: np.zeros(1)})) == [original]


def test_round_trip_is_bit_exact(tiny_sd, reference):
    out = sc.nnx_to_original(reference)
    assert set(out) == set(tiny_sd)
    for key, value in tiny_sd.items():
        assert out[key].dtype == np.float32 and np.array_equal(out[key], value), key


def test_transforms_keep_pytorch_semantics(tiny_sd, reference):
    rng = np.random.default_rng(1)
    # ConvTranspose2d(k=2, s=2): out[2i+dy, 2j+dx] = x[i, j] @ W[:, :, dy, dx] + b.
    w, b = (
        tiny_sd["mask_decoder.output_upscaling.0.weight"],
        tiny_sd["mask_decoder.output_upscaling.0.bias"],
    )
    x = rng.normal(size=(1, 3, 2, w.shape[0])).astype(np.float32)
    ref = np.zeros((1, 6, 4, w.shape[1]), np.float32)
    for dy in range(2):
        for dx in range(2):
            ref[:, dy::2, dx::2] = x @ w[:, :, dy, dx] + b
    got = reference.mask_decoder.output_upscaling["0"](jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
    # Linear: x @ W.T + b.
    w, b = (
        tiny_sd["image_encoder.blocks.0.attn.qkv.weight"],
        tiny_sd["image_encoder.blocks.0.attn.qkv.bias"],
    )
    x = rng.normal(size=(2, w.shape[1])).astype(np.float32)
    got = reference.image_encoder.blocks[0].attn.qkv(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), x @ w.T + b, atol=1e-5)
    # Conv2d (OIHW), no bias.
    w = tiny_sd["image_encoder.neck.2.weight"]
    x = rng.normal(size=(1, 5, 5, w.shape[1])).astype(np.float32)
    want = jax.lax.conv_general_dilated(
        jnp.asarray(x), jnp.asarray(w), (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC")
    )
    got = reference.image_encoder.neck[2](jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # Embeddings, tables and the Fourier matrix are taken as they are.
    np.testing.assert_array_equal(
        np.asarray(reference.mask_decoder.mask_tokens.embedding[...]),
        tiny_sd["mask_decoder.mask_tokens.weight"],
    )


def _write(path, sd):
    if path.suffix == ".safetensors":
        save_file(dict(sd), str(path))
    else:
        save_torch_zip(path, sd)
    return path


def _variants(sd):
    hf = original_to_hf(sd)
    untied = {k: v for k, v in hf.items() if k != HF_TIED_PE}
    pixel = {
        "pixel_mean": np.ones((3, 1, 1), np.float32),
        "pixel_std": np.ones((3, 1, 1), np.float32),
    }
    return {
        "plain.safetensors": sd,
        "plain.pth": sd,
        "medsam_training.pth": {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "pixel.pth": {**sd, **pixel},
        "hf_tied.safetensors": hf,
        "hf_untied.safetensors": untied,
        "hf.pth": {**hf, **pixel},
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_variants({})))
def test_every_file_loads_the_same_parameters(tmp_path, tiny_sd, reference, name):
    path = _write(tmp_path / name, _variants(tiny_sd)[name])
    model, info = _load(path)
    assert info["layout"] == ("hf" if name.startswith("hf") else "original")
    want, got = _flat(reference), _flat(model)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


def test_loaded_model_runs_as_the_reference(tmp_path, tiny_sd, reference):
    model, _ = _load(_write(tmp_path / "w.safetensors", tiny_sd))
    images = jax.random.normal(jax.random.key(0), (1, 80, 80, 3))
    boxes = jnp.asarray([[[10.0, 12.0, 50.0, 61.0]]])
    # One compiled forward for both (same graph): eager SAM compiles every op on its own.
    forward = nnx.jit(lambda m, x, b: m(x, b)["masks"])
    np.testing.assert_array_equal(
        np.asarray(forward(model, images, boxes)), np.asarray(forward(reference, images, boxes))
    )


def test_grey_input_folds_the_patch_embedding(tmp_path, tiny_sd):
    model, info = _load(_write(tmp_path / "w.safetensors", tiny_sd), in_channels=1)
    kernel = np.asarray(model.image_encoder.patch_embed.proj.kernel[...])
    assert kernel.shape[2] == 1 and info["config"]["in_channels"] == 1
    w = tiny_sd["image_encoder.patch_embed.proj.weight"]
    np.testing.assert_allclose(kernel[..., 0, :], w.sum(1).transpose(1, 2, 0), rtol=1e-6)


def _one_line_error(path, *keys):
    with pytest.raises(ValueError) as err:
        _load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for key in keys:
        assert key in message, message
    return message


def test_mismatched_tied_pe_is_an_error(tmp_path, tiny_sd):
    hf = original_to_hf(tiny_sd)
    hf[HF_TIED_PE] = hf[HF_TIED_PE] + 1.0
    _one_line_error(_write(tmp_path / "hf.safetensors", hf), HF_TIED_PE, HF_PE)


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_missing_extra_and_misshapen_keys_are_named(tmp_path, tiny_sd, layout):
    convert = original_to_hf if layout == "hf" else dict
    missing = dict(tiny_sd)
    del missing["mask_decoder.iou_token.weight"]
    _one_line_error(
        _write(tmp_path / "m.safetensors", convert(missing)),
        "missing key",
        "mask_decoder.iou_token.weight",
    )
    extra = {**tiny_sd, "mask_decoder.extra.weight": np.zeros(3, np.float32)}
    _one_line_error(
        _write(tmp_path / "e.safetensors", convert(extra)),
        "unexpected key",
        "mask_decoder.extra.weight",
    )
    bad = dict(tiny_sd)
    key = "mask_decoder.output_upscaling.0.weight"
    bad[key] = bad[key][:, :-1]
    _one_line_error(_write(tmp_path / "s.safetensors", convert(bad)), key, "shape")


def test_foreign_keys_are_neither_layout(tmp_path):
    with pytest.raises(ValueError, match="neither of SAM's key layouts"):
        detect_layout(["encoder.0.conv.weight"], name="unet.safetensors")
    path = _write(
        tmp_path / "w.safetensors", {"encoder.0.conv.weight": np.zeros((2, 2), np.float32)}
    )
    _one_line_error(path, "neither")


def test_layout_flag_must_agree(tmp_path, tiny_sd):
    path = _write(tmp_path / "w.safetensors", tiny_sd)
    with pytest.raises(ValueError, match="original layout"):
        sc.load_sam(path, layout="hf")


# ---------------------------------------------------------------- lmjax convert


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("out", ".out")))


@pytest.mark.parametrize("mode", ["sam", "medsam"])
def test_convert_command_end_to_end(tmp_path, capsys, tiny_sd, reference, mode):
    src = _write(tmp_path / "hf.pth", original_to_hf(tiny_sd))
    dst = tmp_path / "out.safetensors"
    code, out, err = run_cli(
        capsys, "convert", str(src), str(dst), f"--preprocessing={mode}", "--decoder_heads=2"
    )
    assert code == 0 and err == "", err
    assert str(dst) in out
    assert _leftovers(tmp_path) == ["out.safetensors", "out.safetensors.json"]
    info = json.loads((tmp_path / "out.safetensors.json").read_text())
    assert info["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert info["layout"] == "hf" and info["tensors"] == len(tiny_sd)
    assert info["config"]["embed_dim"] == 32 and info["config"]["global_attn_indexes"] == [2]
    assert info["config"]["decoder_heads"] == 2 and info["lmjax_version"]
    pre = info["preprocessing"]
    assert pre["mode"] == mode and pre["input_size"] == 80 and pre["resize"] == "longest_side"
    assert (pre["mean"] is None) == (mode == "medsam")
    model, again = _load(dst)
    assert again["layout"] == "original"
    got = _flat(model)
    for key, value in _flat(reference).items():
        assert np.array_equal(got[key], value), key


def test_convert_bad_inputs_exit_2_and_leave_nothing(tmp_path, capsys, tiny_sd):
    good = _write(tmp_path / "good.safetensors", tiny_sd).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    _write(tmp_path / "cut.pth", tiny_sd)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:5000])
    _write(
        tmp_path / "unet.safetensors", {"down.0.conv.weight": np.zeros((4, 1, 3, 3), np.float32)}
    )
    broken = dict(tiny_sd)
    del broken["image_encoder.neck.1.bias"]
    _write(tmp_path / "missing.safetensors", broken)
    dst = tmp_path / "out.safetensors"
    for name in (
        "cut.safetensors",
        "cut.pth",
        "unet.safetensors",
        "missing.safetensors",
        "none.pth",
    ):
        code, out, err = run_cli(capsys, "convert", str(tmp_path / name), str(dst))
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("lmjax convert: error:") and name in err, err
        assert _leftovers(tmp_path) == [], name
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "good.safetensors"))
    assert code == 2 and "SRC and DST" in err
