"""SAM checkpoint key layouts: Hugging Face `SamModel` names <-> `segment_anything` names.

The table is the inverse of `KEYS_TO_MODIFY_MAPPING` in transformers'
`convert_sam_to_hf.py`. Each rule rewrites a whole key prefix; the first rule whose
pattern matches a key applies, and keys no rule matches keep their name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

# The HF file stores the prompt encoder's Fourier matrix twice (a tied weight).
HF_TIED_PE = "shared_image_embedding.positional_embedding"
HF_PE = "prompt_encoder.shared_embedding.positional_embedding"
ORIGINAL_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
IGNORED = ("pixel_mean", "pixel_std")  # buffers of the original Sam, set by preprocessing

_VE, _IE = r"^vision_encoder\.", "image_encoder."
_MD = r"^mask_decoder\."
_MLP = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)"
# (HF pattern, original replacement), most specific first.
HF_TO_ORIGINAL: tuple[tuple[str, str], ...] = (
    (_VE + r"layers\.(\d+)\.layer_norm([12])\.", _IE + r"blocks.\1.norm\2."),
    (_VE + r"layers\.(\d+)\.", _IE + r"blocks.\1."),
    (_VE + r"patch_embed\.projection\.", _IE + "patch_embed.proj."),
    (_VE + r"neck\.conv1\.", _IE + "neck.0."),
    (_VE + r"neck\.layer_norm1\.", _IE + "neck.1."),
    (_VE + r"neck\.conv2\.", _IE + "neck.2."),
    (_VE + r"neck\.layer_norm2\.", _IE + "neck.3."),
    (_VE + r"pos_embed$", _IE + "pos_embed"),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$", ORIGINAL_PE),
    (r"^prompt_encoder\.point_embed\.(\d+)\.", r"prompt_encoder.point_embeddings.\1."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (
        _MD + r"transformer\.layers\.(\d+)\.layer_norm([1-4])\.",
        r"mask_decoder.transformer.layers.\1.norm\2.",
    ),
    (_MD + r"transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    # "upsacle": a misspelling found in an early version of HF's modeling file.
    (_MD + r"ups(?:cale|acle)_conv1\.", "mask_decoder.output_upscaling.0."),
    (_MD + r"ups(?:cale|acle)_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (_MD + r"ups(?:cale|acle)_conv2\.", "mask_decoder.output_upscaling.3."),
    # SAM's 3-layer MLPs: HF's proj_in, layers.0, proj_out are layers.0, 1, 2.
    (_MD + _MLP + r"\.proj_in\.", r"mask_decoder.\1.layers.0."),
    (_MD + _MLP + r"\.layers\.0\.", r"mask_decoder.\1.layers.1."),
    (_MD + _MLP + r"\.proj_out\.", r"mask_decoder.\1.layers.2."),
)  # fmt: skip

_OE, _VH = r"^image_encoder\.", "vision_encoder."
# The same table read the other way, for writing HF-layout files.
ORIGINAL_TO_HF: tuple[tuple[str, str], ...] = (
    (_OE + r"blocks\.(\d+)\.norm([12])\.", _VH + r"layers.\1.layer_norm\2."),
    (_OE + r"blocks\.(\d+)\.", _VH + r"layers.\1."),
    (_OE + r"patch_embed\.proj\.", _VH + "patch_embed.projection."),
    (_OE + r"neck\.0\.", _VH + "neck.conv1."),
    (_OE + r"neck\.1\.", _VH + "neck.layer_norm1."),
    (_OE + r"neck\.2\.", _VH + "neck.conv2."),
    (_OE + r"neck\.3\.", _VH + "neck.layer_norm2."),
    (_OE + r"pos_embed$", _VH + "pos_embed"),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", HF_PE),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.", r"prompt_encoder.point_embed.\1."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (
        _MD + r"transformer\.layers\.(\d+)\.norm([1-4])\.",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.",
    ),
    (_MD + r"transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (_MD + r"output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (_MD + r"output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (_MD + r"output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (_MD + _MLP + r"\.layers\.0\.", r"mask_decoder.\1.proj_in."),
    (_MD + _MLP + r"\.layers\.1\.", r"mask_decoder.\1.layers.0."),
    (_MD + _MLP + r"\.layers\.2\.", r"mask_decoder.\1.proj_out."),
)  # fmt: skip

_COMPILED = {id(t): [(re.compile(p), r) for p, r in t] for t in (HF_TO_ORIGINAL, ORIGINAL_TO_HF)}


def rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    """`key` rewritten by the first rule of `table` that matches it (else unchanged)."""
    for pattern, repl in _COMPILED[id(table)]:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return key


def _renamed(sd: Mapping[str, np.ndarray], table, name: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for key, value in sd.items():
        new = rename(key, table)
        if new in out:
            raise ValueError(f"{name}: keys {source[new]!r} and {key!r} are both {new!r}")
        out[new], source[new] = value, key
    return out


def hf_to_original(sd: Mapping[str, np.ndarray], *, name: str = "checkpoint") -> dict:
    """An HF `SamModel` state dict in `segment_anything`'s names.

    The tied copy of the Fourier matrix is dropped after checking that it equals the
    prompt encoder's (files that de-duplicate tied weights may hold only one of them).
    `name` (the file) prefixes every error.
    """
    sd = dict(sd)
    tied = sd.pop(HF_TIED_PE, None)
    if tied is not None:
        if HF_PE not in sd:
            sd[HF_PE] = tied
        elif np.shape(tied) != np.shape(sd[HF_PE]) or not np.array_equal(tied, sd[HF_PE]):
            raise ValueError(f"{name}: {HF_TIED_PE!r} differs from its tied copy {HF_PE!r}")
    return _renamed(sd, HF_TO_ORIGINAL, name)


def original_to_hf(sd: Mapping[str, np.ndarray], *, tied: bool = True) -> dict:
    """A `segment_anything` state dict in HF `SamModel` names (`tied`: with both PE copies)."""
    out = _renamed({k: v for k, v in sd.items() if k not in IGNORED}, ORIGINAL_TO_HF, "state")
    if tied and HF_PE in out:
        out[HF_TIED_PE] = out[HF_PE]
    return out


def detect_layout(keys, *, name: str = "checkpoint") -> str:
    """ "original" (`segment_anything`, MedSAM) or "hf" (`SamModel`) from the key names."""
    keys = list(keys)
    original = any(k.startswith(("image_encoder.", "prompt_encoder.pe_layer.")) for k in keys)
    hf = any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in keys)
    if original != hf:
        return "original" if original else "hf"
    what = "both" if original else "neither"
    first = ", ".join(sorted(keys)[:3]) or "no keys"
    raise ValueError(
        f"{name}: {what} of SAM's key layouts (segment_anything's image_encoder.*, "
        f"HF's vision_encoder.*); its keys start {first}"
    )
