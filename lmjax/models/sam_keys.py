"""SAM checkpoint key layouts: Hugging Face `SamModel` names <-> `segment_anything` names.

`PREFIXES` is the inverse of `KEYS_TO_MODIFY_MAPPING` in transformers'
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

# (HF prefix, original prefix), most specific first; a whole key when it ends in "$".
# Placeholders: {i} a layer index, {n} a norm digit, {mlp} one of SAM's 3-layer MLPs.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("vision_encoder.layers.{i}.layer_norm{n}.", "image_encoder.blocks.{i}.norm{n}."),
    ("vision_encoder.layers.{i}.", "image_encoder.blocks.{i}."),
    ("vision_encoder.patch_embed.projection.", "image_encoder.patch_embed.proj."),
    ("vision_encoder.neck.conv1.", "image_encoder.neck.0."),
    ("vision_encoder.neck.layer_norm1.", "image_encoder.neck.1."),
    ("vision_encoder.neck.conv2.", "image_encoder.neck.2."),
    ("vision_encoder.neck.layer_norm2.", "image_encoder.neck.3."),
    ("vision_encoder.pos_embed$", "image_encoder.pos_embed$"),
    (HF_PE + "$", ORIGINAL_PE + "$"),
    ("prompt_encoder.point_embed.{i}.", "prompt_encoder.point_embeddings.{i}."),
    ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
    ("prompt_encoder.mask_embed.layer_norm1.", "prompt_encoder.mask_downscaling.1."),
    ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
    ("prompt_encoder.mask_embed.layer_norm2.", "prompt_encoder.mask_downscaling.4."),
    ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
    (
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.",
        "mask_decoder.transformer.layers.{i}.norm{n}.",
    ),
    (
        "mask_decoder.transformer.layer_norm_final_attn.",
        "mask_decoder.transformer.norm_final_attn.",
    ),
    ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
    ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
    ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
    # SAM's 3-layer MLPs: HF's proj_in, layers.0, proj_out are layers.0, 1, 2.
    ("mask_decoder.{mlp}.proj_in.", "mask_decoder.{mlp}.layers.0."),
    ("mask_decoder.{mlp}.layers.0.", "mask_decoder.{mlp}.layers.1."),
    ("mask_decoder.{mlp}.proj_out.", "mask_decoder.{mlp}.layers.2."),
)
_GROUPS = {
    "i": r"(?P<i>\d+)",
    "n": r"(?P<n>\d)",
    "mlp": r"(?P<mlp>output_hypernetworks_mlps\.\d+|iou_prediction_head)",
}


def _pattern(prefix: str) -> str:
    text = "^" + re.escape(prefix.removesuffix("$")) + ("$" if prefix.endswith("$") else "")
    for name, group in _GROUPS.items():
        text = text.replace(re.escape("{" + name + "}"), group)
    # "upsacle": a misspelling found in an early version of HF's modeling file.
    return text.replace("upscale_", "ups(?:cale|acle)_")


def _replacement(prefix: str) -> str:
    out = prefix.removesuffix("$")
    for name in _GROUPS:
        out = out.replace("{" + name + "}", rf"\g<{name}>")
    return out


HF_TO_ORIGINAL = tuple((_pattern(hf), _replacement(orig)) for hf, orig in PREFIXES)
# The same table read the other way, for writing HF-layout files.
ORIGINAL_TO_HF = tuple((_pattern(orig), _replacement(hf)) for hf, orig in PREFIXES)

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
