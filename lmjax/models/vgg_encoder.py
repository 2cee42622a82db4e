"""The VGG16 encoder the lower-limb paper's VGG models share (`lmjax.models.vgg`).

VGG16's 13 3x3 convs with ReLU in five stages, each ended by a 2x2 max pool, laid
out so that torchvision's ImageNet weights map onto it one conv at a time
(`TORCHVISION_CONV_INDEX`); `width` scales every channel count. Parameters not
imported keep torchvision's VGG init (He normal, fan out, zero bias).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype, check_divisible, max_pool2x

# Output channels of the 13 convs, stage by stage; a 2x2 max pool ends every stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
NUM_CONVS = sum(len(s) for s in VGG16_STAGES)  # 13
DIVISOR = 2 ** len(VGG16_STAGES)  # H and W must be multiples of this (32)
# torchvision `vgg16().features` indices of the convs (ReLUs and pools in between).
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

PathKey = str | int


def scaled(channels: int, width: float) -> int:
    """`channels` times `width`, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def torch_vgg_init() -> nnx.Initializer:
    """torchvision VGG's conv init: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`."""
    return nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv3x3(cin: int, cout: int, kw: Mapping[str, Any]) -> nnx.Conv:
    """3x3 conv with bias, padding 1 on each side (PyTorch's `padding=1`)."""
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=torch_vgg_init(),
        bias_init=nnx.initializers.zeros_init(),
        **kw,
    )


class VGG16Encoder(nnx.Module):
    """VGG16's 13 convs (3x3, bias, ReLU) in 5 stages, each ended by a 2x2 max pool.

    `images [B, H, W, C] -> [stage_1 [B, H, W, c1], ..., stage_5 [B, H/16, W/16, c5],
    pooled [B, H/32, W/32, c5]]`: every stage's output before its pool (the U-Net's
    skips), then the last pool. `convs[i]` is torchvision's
    `features.{TORCHVISION_CONV_INDEX[i]}`.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        width: float = 1.0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stage_sizes = tuple(len(s) for s in VGG16_STAGES)
        self.channels = tuple(scaled(s[-1], width) for s in VGG16_STAGES)
        convs, cin = [], in_channels
        for stage in VGG16_STAGES:
            for c in stage:
                convs.append(conv3x3(cin, scaled(c, width), kw))
                cin = scaled(c, width)
        self.convs = nnx.List(convs)
        self.dtype = dtype

    def __call__(self, images: jax.Array) -> list[jax.Array]:
        _, h, w, _ = images.shape
        check_divisible(h, w, DIVISOR, "the VGG16 encoder (5 poolings)")
        x, i, stages = images.astype(self.dtype), 0, []
        for n in self.stage_sizes:
            for conv in self.convs[i : i + n]:
                x = nnx.relu(conv(x))
            i += n
            stages.append(x)
            x = max_pool2x(x)
        return [*stages, x]


def layer_index(path: Sequence[PathKey]) -> int:
    """Encoder conv i -> i (0..12); every other parameter -> `NUM_CONVS`."""
    if len(path) > 2 and path[0] == "encoder" and path[1] == "convs":
        return int(path[2])
    return NUM_CONVS
