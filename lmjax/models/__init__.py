"""Models by name: `build_model("unet", num_outputs=..., input_size=..., rngs=...)`.

Importing this package imports every family module, which registers its builders.
Every model maps `images [B, H, W, C]` to a dict with at least `"heatmaps"`
(see `lmjax.models.registry` for the contract).
"""

from lmjax.models import unet  # noqa: F401  (registers "unet")
from lmjax.models.layers import ConvBlock, ConvNormAct, Upsample
from lmjax.models.registry import build_model, count_params, list_models, register_model
from lmjax.models.unet import UNet, unet_features, unet_num_levels

__all__ = [
    "ConvBlock",
    "ConvNormAct",
    "UNet",
    "Upsample",
    "build_model",
    "count_params",
    "list_models",
    "register_model",
    "unet_features",
    "unet_num_levels",
]
