"""Dev-only: regenerate the SAM golden fixture `tests/fixtures/sam_tiny_golden.npz`.

Needs PyTorch and the reference implementations, which lmjax itself never imports:

    python3.11 -m venv /work/devtorch    # outside the repository
    /work/devtorch/bin/pip install torch segment-anything transformers numpy safetensors

(a CPU build of torch is enough). Run it with that interpreter from the repository
root; it downloads no weights (the tiny model's parameters are drawn here from a
fixed seed) and needs neither JAX nor lmjax:

    /work/devtorch/bin/python tools/make_sam_fixtures.py              # rewrite the fixture
    /work/devtorch/bin/python tools/make_sam_fixtures.py --out x.npz  # write elsewhere

It builds the `"tiny"` SAM of `lmjax.models.sam.SAM_SIZES` (80 px input, 8 px
patches, a 10 x 10 token grid padded to 12 by the 4 x 4 windows, block 2 global) in
the original `segment_anything` modeling code, randomises every tensor (the
zero-initialised `pos_embed` and `rel_pos_*` tables too), and runs two images with
several box prompts each through it, and the same weights through Hugging Face
`transformers`' `SamModel`. tests/models/test_sam_golden.py compares lmjax's port
with the saved outputs; CI has no torch, so it reads only the `.npz`.

`segment_anything/__init__.py` imports its predictor and automatic mask generator,
which import torchvision; no torchvision that imports beside the torch used here
(2.13.0, CPU) was available, so this script puts stub `torchvision` modules (`transforms.functional.
resize` / `to_pil_image`, `ops.boxes.batched_nms` / `box_area`, all raising if
called) into `sys.modules` before importing `segment_anything`. Only the modeling
code (`segment_anything.modeling`) is used.

The `.npz` holds, all float32 (torch layouts: NCHW, `[out, in, kh, kw]`):

- `w_orig/<key>`: the `segment_anything` `Sam` state dict;
- `w_hf/<key>`: the same weights as HF `SamModel`'s state dict after a strict
  `load_state_dict` (renamed here by the rules of transformers' convert_sam_to_hf.py,
  independently of lmjax's key tables; both copies of the tied Fourier matrix);
- `in/images [B, 3, 80, 80]` (B = 2, already normalised) and `in/boxes [B, K, 4]`
  (K = 4; `x0, y0, x1, y1` in the 80 px input frame);
- `orig/...`: `image_embeddings [B, D, 10, 10]`, `sparse [B, K, 2, D]` (box corner
  tokens), `dense_pe [1, D, 10, 10]` (`get_dense_pe()`), `no_mask [1, D, 10, 10]`
  (the dense embedding without a mask prompt), `masks_multi [B, K, 3, 40, 40]`,
  `iou_multi [B, K, 3]`, `masks_single [B, K, 1, 40, 40]`, `iou_single [B, K, 1]`;
- `hf/...`: `masks_multi`, `iou_multi`, `masks_single`, `iou_single` from `SamModel`;
- `meta`: a JSON string with the library versions, the seed and the sizes.

HF's two-way transformer blocks use LayerNorm eps 1e-6 where the original uses
torch's default 1e-5, so HF's masks differ from the original's by up to ~2e-5 here
(~3e-6 with the eps matched); `meta` records the differences.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import types
from functools import partial

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sam_tiny_golden.npz"
SEED = 20240611

# lmjax's SAM_SIZES["tiny"], spelled out so that this script needs no JAX.
IMG, PATCH, DIM, DEPTH, HEADS, WINDOW, GLOBAL = 80, 8, 32, 3, 2, 4, (2,)
PROMPT_DIM, MASK_IN_CHANS = 32, 8
DEC_DEPTH, DEC_HEADS, DEC_MLP, IOU_HIDDEN, MULTIMASK = 2, 2, 64, 32, 3
GRID = IMG // PATCH

# Boxes (x0, y0, x1, y1) in the 80 px input frame, K = 4 per image: ordinary ones, ones
# touching the borders (the whole frame; the top and right pixels; the bottom-right
# corner), degenerate zero-size ones (one on the origin) and fractional corners.
BOXES = np.array(
    [
        [
            [10.0, 12.0, 50.0, 60.0],
            [0.0, 0.0, 80.0, 80.0],
            [30.5, 20.25, 30.5, 20.25],
            [52.5, 0.0, 79.0, 30.75],
        ],
        [
            [0.0, 5.0, 70.0, 35.0],
            [60.0, 60.0, 80.0, 80.0],
            [0.0, 0.0, 0.0, 0.0],
            [12.25, 33.5, 66.75, 58.125],
        ],
    ],
    np.float32,
)


def bf16_exact(x: np.ndarray) -> np.ndarray:
    """float32 `x` with its low 16 mantissa bits cleared (truncated to bfloat16 values).

    Still float32 everywhere; the zero bytes only let `savez_compressed` halve the
    inputs and weights, which keeps the fixture small.
    """
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def _stub_torchvision() -> None:
    """Stand-ins for the torchvision names `segment_anything` imports but the models never use."""

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is stubbed out in tools/make_sam_fixtures.py")

    names = {
        "torchvision": {},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {"resize": unavailable, "to_pil_image": unavailable},
        "torchvision.ops": {},
        "torchvision.ops.boxes": {"batched_nms": unavailable, "box_area": unavailable},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    for name in names:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])


def build_original():
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    encoder = ImageEncoderViT(
        img_size=IMG,
        patch_size=PATCH,
        in_chans=3,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=4.0,
        out_chans=PROMPT_DIM,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=WINDOW,
        global_attn_indexes=GLOBAL,
    )
    prompt = PromptEncoder(
        embed_dim=PROMPT_DIM,
        image_embedding_size=(GRID, GRID),
        input_image_size=(IMG, IMG),
        mask_in_chans=MASK_IN_CHANS,
    )
    decoder = MaskDecoder(
        transformer_dim=PROMPT_DIM,
        transformer=TwoWayTransformer(
            depth=DEC_DEPTH, embedding_dim=PROMPT_DIM, mlp_dim=DEC_MLP, num_heads=DEC_HEADS
        ),
        num_multimask_outputs=MULTIMASK,
        iou_head_depth=3,
        iou_head_hidden_dim=IOU_HIDDEN,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def randomise(model, seed: int) -> dict[str, np.ndarray]:
    """Fills every tensor of `model`'s state dict from a seeded NumPy generator.

    LayerNorm weights are `1 + 0.2 N(0, 1)`, token tables and the Fourier matrix
    `N(0, 1)` (their own init), everything else `0.2 N(0, 1)`, zero-initialised tables
    included, so that every tensor moves the outputs; all truncated to bfloat16 values
    (`bf16_exact`) and stored as float32.
    """
    import torch

    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    tokens = re.compile(
        r"(point_embeddings\.\d|not_a_point_embed|no_mask_embed|iou_token|mask_tokens)"
    )
    out = {}
    for key in sorted(sd):
        shape = tuple(sd[key].shape)
        z = rng.standard_normal(shape)
        if key.endswith(".weight") and len(shape) == 1:  # LayerNorm / LayerNorm2d
            w = 1.0 + 0.2 * z
        elif tokens.search(key) or key.endswith("positional_encoding_gaussian_matrix"):
            w = z
        else:
            w = 0.2 * z
        out[key] = bf16_exact(w.astype(np.float32))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in out.items()}, strict=True)
    return out


# transformers' convert_sam_to_hf.py rules (original -> HF), applied in order as
# substring replacements; the hypernetwork MLPs' layer indices are renamed after.
HF_RULES = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
)
_HYPER = re.compile(r"output_hypernetworks_mlps\.\d+\.layers\.(\d)")
_HYPER_NAMES = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}


def to_hf(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in sd.items():
        for old, new in HF_RULES:
            key = key.replace(old, new)
        m = _HYPER.search(key)
        if m:
            key = key[: m.start(1) - len("layers.")] + _HYPER_NAMES[m[1]] + key[m.end(1) :]
        out[key] = value
    out["shared_image_embedding.positional_embedding"] = out[
        "prompt_encoder.shared_embedding.positional_embedding"
    ]
    return out


def build_hf():
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=DIM,
        output_channels=PROMPT_DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        num_channels=3,
        image_size=IMG,
        patch_size=PATCH,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        mlp_ratio=4.0,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=WINDOW,
        global_attn_indexes=list(GLOBAL),
        num_pos_feats=PROMPT_DIM // 2,  # the Fourier matrix lives in the vision config
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=PROMPT_DIM,
        image_size=IMG,
        patch_size=PATCH,
        mask_input_channels=MASK_IN_CHANS,
        num_point_embeddings=4,
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=PROMPT_DIM,
        mlp_dim=DEC_MLP,
        num_hidden_layers=DEC_DEPTH,
        num_attention_heads=DEC_HEADS,
        attention_downsample_rate=2,
        num_multimask_outputs=MULTIMASK,
        iou_head_depth=3,
        iou_head_hidden_dim=IOU_HIDDEN,
    )
    config = SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    config._attn_implementation = "eager"
    return SamModel(config).eval()


def run_original(model, images, boxes) -> dict[str, np.ndarray]:
    import torch

    out: dict[str, list] = {}
    with torch.no_grad():
        emb = model.image_encoder(torch.from_numpy(images))
        pe = model.prompt_encoder.get_dense_pe()
        for b in range(images.shape[0]):
            sparse, dense = model.prompt_encoder(
                points=None, boxes=torch.from_numpy(boxes[b]), masks=None
            )
            out.setdefault("sparse", []).append(sparse)
            out.setdefault("no_mask", []).append(dense[:1])
            for name, multi in (("multi", True), ("single", False)):
                masks, iou = model.mask_decoder(
                    image_embeddings=emb[b : b + 1],
                    image_pe=pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multi,
                )
                out.setdefault(f"masks_{name}", []).append(masks)
                out.setdefault(f"iou_{name}", []).append(iou)
    res = {k: torch.stack(v).detach().numpy() for k, v in out.items()}
    assert np.array_equal(res["no_mask"][0], res["no_mask"][1])
    res["no_mask"] = res["no_mask"][0]
    res["image_embeddings"] = emb.detach().numpy()
    res["dense_pe"] = pe.detach().numpy()
    return res


def run_hf(model, images, boxes) -> dict[str, np.ndarray]:
    import torch

    res = {}
    with torch.no_grad():
        res["image_embeddings"] = model.get_image_embeddings(torch.from_numpy(images)).numpy()
        for name, multi in (("multi", True), ("single", False)):
            o = model(
                pixel_values=torch.from_numpy(images),
                input_boxes=torch.from_numpy(boxes),
                multimask_output=multi,
            )
            res[f"masks_{name}"] = o.pred_masks.numpy()
            res[f"iou_{name}"] = o.iou_scores.numpy()
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args(argv)

    _stub_torchvision()
    import segment_anything
    import torch
    import transformers

    torch.manual_seed(0)
    original = build_original()
    sd = randomise(original, SEED)

    hf = build_hf()
    hf_sd = to_hf(sd)
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in hf_sd.items()}, strict=True)
    hf_saved = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    assert sorted(hf_saved) == sorted(hf_sd), sorted(set(hf_saved) ^ set(hf_sd))
    for key, value in hf_sd.items():
        assert np.array_equal(hf_saved[key], value), key

    rng = np.random.default_rng(SEED + 1)
    images = bf16_exact(rng.standard_normal((2, 3, IMG, IMG)).astype(np.float32))
    boxes = BOXES
    ref = run_original(original, images, boxes)
    alt = run_hf(hf, images, boxes)
    hf_vs_original = {
        k: float(np.max(np.abs(alt[k] - ref[k])))
        for k in ("image_embeddings", "masks_multi", "iou_multi", "masks_single", "iou_single")
    }
    print("HF vs original, max |diff|:", json.dumps(hf_vs_original, indent=1))

    meta = {
        "torch": torch.__version__,
        "segment_anything": getattr(segment_anything, "__version__", None)
        or _dist_version("segment-anything"),
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "seed": SEED,
        "size": "tiny",
        "decoder_heads": DEC_HEADS,
        "hf_attn_implementation": "eager",
        "hf_vs_original_max_abs_diff": hf_vs_original,
    }
    arrays = {f"w_orig/{k}": v for k, v in sd.items()}
    arrays.update({f"w_hf/{k}": v for k, v in hf_saved.items()})
    arrays["in/images"] = images
    arrays["in/boxes"] = boxes
    for k, v in ref.items():
        arrays[f"orig/{k}"] = v.astype(np.float32)
    for k in ("masks_multi", "iou_multi", "masks_single", "iou_single"):
        arrays[f"hf/{k}"] = alt[k].astype(np.float32)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(arrays)} arrays)")
    print(json.dumps(meta, indent=1, sort_keys=True))
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
