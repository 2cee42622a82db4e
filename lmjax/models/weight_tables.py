"""The checkpoint key tables of lmjax's models, registered with `lmjax.models.weights`.

    table                checkpoint                               default table of
    "vit_sapiens"        mmpretrain's ViT (Sapiens, MedSapiens)   vit_pose
    "vit_timm"           timm's ViT (and DeiT/MAE encoders)
    "vitpose"            the original ViTPose code
    "swin_unetr_monai"   MONAI's SwinUNETR                        swin_unetr
    "vgg16_torchvision"  torchvision's `vgg16()`                  vgg_unet, vgg_regression,
                                                                  vgg_seg_regression

A table follows the parameter paths of its model family, so renaming a module
attribute there means changing the table here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from lmjax.models.vgg_encoder import TORCHVISION_CONV_INDEX
from lmjax.models.weights import Rule, register_weight_table

# ---------------------------------------------------------------- ViT

_BACKBONE = r"(?:backbone\.)?"


class _ViTKeys(NamedTuple):
    """Regex fragments of a ViT layout's checkpoint names, the final norm aside."""

    patch: str
    block: str
    norm1: str
    norm2: str
    fc1: str
    fc2: str


_MMPRETRAIN = _ViTKeys(
    patch=r"patch_embed\.projection",
    block="layers",
    norm1="ln1",
    norm2="ln2",
    fc1=r"ffn\.layers\.0\.0",
    fc2=r"ffn\.layers\.1",
)
_TIMM = _ViTKeys(
    patch=r"patch_embed\.proj",
    block="blocks",
    norm1="norm1",
    norm2="norm2",
    fc1=r"mlp\.fc1",
    fc2=r"mlp\.fc2",
)


def _vit_rules(keys: _ViTKeys, *, final_norm: str, pos_fit: str, skip: Sequence[str]) -> list[Rule]:
    """Rules for a ViT in the layout `keys`; the class token and `skip` are skipped."""
    b, n = _BACKBONE, rf"{keys.block}\.(\d+)\."
    rules = [
        Rule(rf"{b}{keys.patch}\.weight", "patch_embed.kernel", "conv2d", fit="in_channels"),
        Rule(rf"{b}{keys.patch}\.bias", "patch_embed.bias"),
        Rule(rf"{b}pos_embed", "pos_embed", fit=pos_fit),
    ]
    for src, dst in ((keys.norm1, "norm1"), (keys.norm2, "norm2")):
        rules += [
            Rule(rf"{b}{n}{src}\.weight", rf"blocks.\1.{dst}.scale"),
            Rule(rf"{b}{n}{src}\.bias", rf"blocks.\1.{dst}.bias"),
        ]
    for src, dst in (
        (r"attn\.qkv", "attn.qkv"),
        (r"attn\.proj", "attn.proj"),
        (keys.fc1, "fc1"),
        (keys.fc2, "fc2"),
    ):
        rules += [
            Rule(rf"{b}{n}{src}\.weight", rf"blocks.\1.{dst}.kernel", "linear"),
            Rule(rf"{b}{n}{src}\.bias", rf"blocks.\1.{dst}.bias"),
        ]
    rules += [
        Rule(rf"{b}{final_norm}\.weight", "norm.scale"),
        Rule(rf"{b}{final_norm}\.bias", "norm.bias"),
    ]
    return rules + [Rule(s, None) for s in (rf"{b}cls_token", *skip)]


def _register_vit(
    name: str,
    keys: _ViTKeys,
    *,
    final_norm: str,
    skip: Sequence[str],
    pos_fit: str = "pos_embed",
    model: str | None = None,
) -> None:
    """A ViT table; the heatmap head ("head") is never in the checkpoint."""
    rules = _vit_rules(keys, final_norm=final_norm, pos_fit=pos_fit, skip=skip)
    register_weight_table(name, rules, ignore_missing=("head",), model=model)


# mmpretrain's VisionTransformer as Sapiens and MedSapiens use it (mmpose checkpoints
# prefix it with "backbone."). The final norm is "ln1"; the heatmap head ("head.*")
# is skipped: its conv biases would have to be folded into batch norms, and its
# output layer rarely has the landmark count of the new task.
_register_vit(
    "vit_sapiens",
    _MMPRETRAIN,
    final_norm="ln1",
    skip=(r"head\..*", r"data_preprocessor\..*"),
    model="vit_pose",
)

# timm's VisionTransformer (and DeiT/MAE encoders in its layout): the class token is
# dropped from the position table; the classifier ("head", "fc_norm") is skipped.
_register_vit("vit_timm", _TIMM, final_norm="norm", skip=(r"head\..*", r"fc_norm\..*"))

# The original ViTPose code: timm names under "backbone.", final norm "last_norm",
# and a position table whose first (class) entry is added to every patch position.
_register_vit(
    "vitpose",
    _TIMM,
    final_norm="last_norm",
    skip=(r"keypoint_head\..*",),
    pos_fit="pos_embed_add_cls",
)


# ---------------------------------------------------------------- Swin-UNETR (MONAI)

# MONAI SwinUNETR state-dict keys -> this model's paths, one to one: "weight" becomes
# "kernel" (Linear and conv layouts transposed, transposed-conv kernels also flipped)
# or, for LayerNorm/affine norms, "scale". The checkpoint's relative_position_index
# buffers are skipped: the model computes the same index (`relative_position_index`)
# from the window size. Instance norms without affine parameters have no keys, and
# batch norm's `num_batches_tracked` has no use here. RGB kernels (patch embedding,
# encoder1) are summed for a one-channel model (`fit="in_channels"`). A MONAI model
# has patch_size 2: patch_embed and decoder1.transp_conv of a patch-4 model then
# report a shape mismatch and keep their initial values.
_BLOCK = r"(swinViT\.layers[1-4]\.0\.blocks\.\d+)\."
_MERGE = r"(swinViT\.layers[1-4]\.0\.downsample)\."
_CONV_BLOCK = r"((?:encoder(?:1|2|3|4|10)\.layer|decoder[1-5]\.conv_block)\."
_LINEARS = r"(attn\.qkv|attn\.proj|mlp\.linear1|mlp\.linear2)"

MONAI_RULES = [
    Rule(
        r"swinViT\.patch_embed\.proj\.weight",
        "swinViT.patch_embed.proj.kernel",
        "conv2d",
        fit="in_channels",
    ),
    Rule(r"swinViT\.patch_embed\.proj\.bias", "swinViT.patch_embed.proj.bias"),
    Rule(_BLOCK + r"(norm[12])\.weight", r"\1.\2.scale"),
    Rule(_BLOCK + r"(norm[12])\.bias", r"\1.\2.bias"),
    Rule(_BLOCK + r"attn\.relative_position_bias_table", r"\1.attn.relative_position_bias_table"),
    Rule(_BLOCK + r"attn\.relative_position_index", None),
    Rule(_BLOCK + _LINEARS + r"\.weight", r"\1.\2.kernel", "linear"),
    Rule(_BLOCK + _LINEARS + r"\.bias", r"\1.\2.bias"),
    Rule(_MERGE + r"norm\.weight", r"\1.norm.scale"),
    Rule(_MERGE + r"norm\.bias", r"\1.norm.bias"),
    Rule(_MERGE + r"reduction\.weight", r"\1.reduction.kernel", "linear"),
    Rule(_CONV_BLOCK + r"conv[123])\.conv\.weight", r"\1.conv.kernel", "conv2d", fit="in_channels"),
    Rule(_CONV_BLOCK + r"norm[123])\.weight", r"\1.scale"),
    Rule(_CONV_BLOCK + r"norm[123])\.bias", r"\1.bias"),
    Rule(_CONV_BLOCK + r"norm[123])\.running_mean", r"\1.mean"),
    Rule(_CONV_BLOCK + r"norm[123])\.running_var", r"\1.var"),
    Rule(_CONV_BLOCK + r"norm[123])\.num_batches_tracked", None),
    Rule(
        r"(decoder[1-5])\.transp_conv\.conv\.weight",
        r"\1.transp_conv.conv.kernel",
        "conv_transpose2d",
    ),
    Rule(r"out\.conv\.conv\.weight", "out.conv.conv.kernel", "conv2d"),
    Rule(r"out\.conv\.conv\.bias", "out.conv.conv.bias"),
]

register_weight_table("swin_unetr_monai", MONAI_RULES, model="swin_unetr")


# ---------------------------------------------------------------- VGG16 (torchvision)

_CONV_KEYS = "|".join(map(str, TORCHVISION_CONV_INDEX))
_FEATURE_TO_CONV = {f: i for i, f in enumerate(TORCHVISION_CONV_INDEX)}
_VGG_MODELS = ("vgg_unet", "vgg_regression", "vgg_seg_regression")


def _encoder_target(param: str):
    def target(match: re.Match) -> str:
        return f"encoder.convs.{_FEATURE_TO_CONV[int(match.group(1))]}.{param}"

    return target


# torchvision's `vgg16().state_dict()` -> the `encoder` of all three models. The
# first conv's RGB kernel is summed over its inputs for a one-channel model (what
# lmjax feeds): the same outputs as the paper's grey image copied into 3 channels.
# `classifier.{0,3,6}.*`, the ImageNet head (1000 classes from a 7x7 map), has no
# counterpart and is skipped; the decoder and heads are never in the checkpoint.
VGG16_TORCHVISION_RULES = (
    Rule(rf"features\.({_CONV_KEYS})\.weight", _encoder_target("kernel"), "conv2d", "in_channels"),
    Rule(rf"features\.({_CONV_KEYS})\.bias", _encoder_target("bias")),
    Rule(r"classifier\.\d+\.(weight|bias)", None),
)
VGG16_TORCHVISION_IGNORE = ("decoder", "final", "head")
register_weight_table(
    "vgg16_torchvision",
    VGG16_TORCHVISION_RULES,
    ignore_missing=VGG16_TORCHVISION_IGNORE,
    model=_VGG_MODELS,
)
