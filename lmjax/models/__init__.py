"""Models by name: `build_model("unet", num_outputs=..., input_size=..., rngs=...)`.

Importing this package imports every family module, which registers its builders,
and `weight_tables`, which registers the checkpoint key tables of `weights`.
Every model maps `images [B, H, W, C]` to a dict with at least `"heatmaps"`
(see `lmjax.models.registry` for the contract).
"""

from lmjax.models import (  # noqa: F401  (register their models and weight tables)
    ceph_unet,
    fpn,
    hrnet,
    point_detector,
    sam,
    swin_unetr,
    unet,
    variable_writes,
    vgg,
    vit,
    weight_tables,
    yolo,
)
from lmjax.models.ceph_unet import CephUNet
from lmjax.models.fpn import CephFPN
from lmjax.models.hrnet import HRNet, ResidualBlock
from lmjax.models.layers import ConvBlock, ConvNormAct, ConvReluBNBlock, Upsample
from lmjax.models.lora import LoRALinear, LoRAParam, apply_lora, load_lora, merge_lora, save_lora
from lmjax.models.registry import build_model, count_params, list_models, register_model
from lmjax.models.sam import Sam
from lmjax.models.unet import UNet, unet_features, unet_num_levels
from lmjax.models.vit import ViTPose

__all__ = [
    "CephFPN",
    "CephUNet",
    "ConvBlock",
    "ConvNormAct",
    "ConvReluBNBlock",
    "HRNet",
    "LoRALinear",
    "LoRAParam",
    "ResidualBlock",
    "Sam",
    "UNet",
    "Upsample",
    "ViTPose",
    "apply_lora",
    "build_model",
    "count_params",
    "list_models",
    "load_lora",
    "merge_lora",
    "register_model",
    "save_lora",
    "unet_features",
    "unet_num_levels",
]

variable_writes.install()  # before any model is traced
