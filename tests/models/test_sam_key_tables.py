"""The committed SAM ViT-B key tables guard the checkpoint key spec against accidental renames.

`tests/fixtures/sam_vit_b_keys_{original,hf}.txt` list every tensor of a ViT-B SAM state
dict, `key<TAB>shape`, in `segment_anything`'s layout (314) and HF `SamModel`'s (315:
the same plus the tied Fourier matrix). A renamed module, a changed shape or a broken
rename rule shows up here as a diff against a reviewed file. The tables come from
`tools/make_sam_key_tables.py`; regenerate them only for a deliberate spec change.

Everything is shapes only (`nnx.eval_shape`, zero-stride NumPy views). The model's own
tensor count, its total size (93,735,728) and `infer_sam_config` on its shapes are in
test_sam_convert.py::test_vit_b_shapes_config_and_counts; equality with the original
table below carries them over to the tables.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
from flax import nnx

from lmjax.models import sam_convert as sc
from lmjax.models.sam import SAM_SIZES, build_sam
from lmjax.models.sam_keys import HF_PE, HF_TIED_PE, IGNORED, original_to_hf

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
ORIGINAL = FIXTURES / "sam_vit_b_keys_original.txt"
HF = FIXTURES / "sam_vit_b_keys_hf.txt"
REGENERATE = "python tools/make_sam_key_tables.py"


def read_table(path: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a key table; its lines must be sorted and the keys unique."""
    lines = path.read_text().splitlines()
    keys = [line.split("\t")[0] for line in lines]
    assert keys == sorted(set(keys)), f"{path.name}: keys not sorted or not unique"
    table = {}
    for line in lines:
        key, shape = line.split("\t")
        table[key] = tuple(int(n) for n in shape.split(","))
    return table


def stand_ins(table: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Zero-stride views of one float: arrays of the table's shapes that cost no memory."""
    zero = np.zeros((), np.float32)
    return {key: np.broadcast_to(zero, shape) for key, shape in table.items()}


def shapes_of(sd) -> dict[str, tuple[int, ...]]:
    return {key: tuple(np.shape(value)) for key, value in sd.items()}


def differences(got: dict, want: dict) -> str:
    """The first few keys that differ, for a readable failure."""
    lines = [f"only in the model/conversion: {k}" for k in sorted(set(got) - set(want))]
    lines += [f"only in the table: {k}" for k in sorted(set(want) - set(got))]
    lines += [
        f"{k}: {got[k]} != {want[k]}" for k in sorted(set(got) & set(want)) if got[k] != want[k]
    ]
    return "\n".join(lines[:10] + [f"(if deliberate: {REGENERATE})"])


@pytest.fixture(scope="module")
def original() -> dict[str, tuple[int, ...]]:
    return read_table(ORIGINAL)


@pytest.fixture(scope="module")
def hf() -> dict[str, tuple[int, ...]]:
    return read_table(HF)


def test_tables_have_314_and_315_tensors(original, hf):
    assert len(original) == 314 and len(hf) == 315
    assert not set(IGNORED) & set(original), "pixel_mean/pixel_std are not model tensors"
    assert hf[HF_TIED_PE] == hf[HF_PE] == (2, 128)  # the tied copy


def test_original_table_is_the_models_keys_and_shapes(original):
    model = nnx.eval_shape(lambda: build_sam(size="vit_b", rngs=nnx.Rngs(0)))
    got = sc.original_shapes(model)
    assert got == original, differences(got, original)


def test_loading_infers_vit_b_and_rebuilds_the_table(original):
    # The path `load_sam` takes: config from the shapes, then a model of that config.
    config = sc.infer_sam_config(stand_ins(original))
    vit_b = dataclasses.asdict(SAM_SIZES["vit_b"])
    assert {k: v for k, v in config.items() if k in vit_b} == vit_b
    got = sc.original_shapes(sc.abstract_sam(config))
    assert got == original, differences(got, original)


def test_hf_table_converts_to_the_original_table_and_back(original, hf):
    sd, layout = sc.to_original(stand_ins(hf), layout="hf", name="sam_vit_b_keys_hf.txt")
    got = shapes_of(sd)
    assert layout == "hf" and HF_TIED_PE not in got
    assert got == original, differences(got, original)
    back = shapes_of(original_to_hf(stand_ins(original)))
    assert back == hf, differences(back, hf)


# segment_anything's build_sam_vit_b and transformers' SamModel, as published.
GLOBAL_BLOCKS = (2, 5, 8, 11)
REFERENCE_ORIGINAL = {
    "image_encoder.pos_embed": (1, 64, 64, 768),
    "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
    **{f"image_encoder.blocks.{i}.attn.qkv.weight": (2304, 768) for i in range(12)},
    **{
        f"image_encoder.blocks.{i}.attn.rel_pos_{a}": (127 if i in GLOBAL_BLOCKS else 27, 64)
        for i in range(12)
        for a in "hw"
    },
    "image_encoder.neck.0.weight": (256, 768, 1, 1),
    "image_encoder.neck.2.weight": (256, 256, 3, 3),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    **{f"prompt_encoder.point_embeddings.{i}.weight": (1, 256) for i in range(4)},
    "mask_decoder.iou_token.weight": (1, 256),
    "mask_decoder.mask_tokens.weight": (4, 256),
    "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
    "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
}
REFERENCE_HF = (
    "vision_encoder.layers.0.layer_norm1.weight",
    "vision_encoder.layers.11.layer_norm2.bias",
    "vision_encoder.neck.conv1.weight",
    "prompt_encoder.point_embed.0.weight",
    "prompt_encoder.mask_embed.conv1.weight",
    "mask_decoder.upscale_conv1.weight",
    "mask_decoder.upscale_layer_norm.weight",
    "mask_decoder.output_hypernetworks_mlps.0.proj_in.weight",
    "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
    "mask_decoder.output_hypernetworks_mlps.0.proj_out.weight",
    "mask_decoder.iou_prediction_head.proj_in.weight",
    "mask_decoder.transformer.layer_norm_final_attn.weight",
    "mask_decoder.transformer.layers.0.layer_norm1.weight",
    HF_PE,
    HF_TIED_PE,
)


def test_reference_keys_and_shapes(original, hf):
    for key, shape in REFERENCE_ORIGINAL.items():
        assert original.get(key) == shape, (key, original.get(key), shape)
    for key in REFERENCE_HF:
        assert key in hf, key
    # The neck's convolutions have no bias; the mask downscaling is Sequential 0..6
    # without parameters at its activations (2, 5).
    assert not {"image_encoder.neck.0.bias", "image_encoder.neck.2.bias"} & set(original)
    downscaling = {k.split(".")[2] for k in original if k.startswith("prompt_encoder.mask_down")}
    assert downscaling == {"0", "1", "3", "4", "6"}
    points = {k for k in original if k.startswith("prompt_encoder.point_embeddings.")}
    assert len(points) == 4
