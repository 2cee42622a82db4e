"""nnU-Net-style 2D U-Net for heatmap landmark detection (registered as "unet").

The U-Net of the pelvis paper (MediMarker's classic U-Net, itself nnU-Net's generic
U-Net): per resolution level two blocks of 3x3 conv, instance norm (affine) and
leaky ReLU (slope 0.01); downsampling by the stride-2 first conv of every encoder
level after the first; upsampling by a kernel-2 stride-2 transposed conv (or resize
and conv); skips joined by concatenation; a 1x1 conv head per decoder level.

Levels. A "level" is one resolution, the bottleneck included, so `num_levels = L`
means `L - 1` downsamplings and a bottleneck of side `side / 2**(L - 1)`. Features at
level i are `min(features * 2**i, max_features)`. When `num_levels` is not given,
`unet_num_levels` derives it as nnU-Net does for 2D: keep halving while the halved
map stays at least `min_feature_size` (4) on its shorter side and both sides are
even, up to `max_levels` (8). So 64 -> 5 levels (bottleneck 4), 256 -> 7 (4),
512 -> 8 (4, i.e. 7 downsamplings), 64 x 48 -> 4 (8 x 6). Both axes are always
halved together (nnU-Net can pool one axis only; not needed for radiographs).

Normalisation. `norm="instance"` (the papers'); `"batch"` and `"none"` (conv with
bias, no norm) exist to measure what the instance norm costs and brings.

Deep supervision. Heads exist at decoder levels 0 .. n-1 (0 = full resolution) with
`n = num_deep_supervision`, by default `L - 2`: every decoder level except the
coarsest, the one nnU-Net gives loss weight 0. The heads are built whatever
`deep_supervision` says, so a model trained with it loads into one without it; the
flag (an attribute, may be changed after building) only selects what is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import ConvBlock, Dtype, Upsample
from lmjax.models.registry import register_model


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def unet_num_levels(
    input_size: int | Sequence[int], *, min_feature_size: int = 4, max_levels: int = 8
) -> int:
    """Number of resolution levels (bottleneck included) for an `(H, W)` input.

    Halves while the shorter halved side is `>= min_feature_size` and both sides are
    even, and stops at `max_levels`. Always at least 1.
    """
    h, w = _hw(input_size)
    levels = 1
    while levels < max_levels and h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= min_feature_size:
        h, w, levels = h // 2, w // 2, levels + 1
    return levels


def unet_features(num_levels: int, features: int = 32, max_features: int = 512) -> list[int]:
    """Channels per level, finest first: doubling from `features`, capped at `max_features`."""
    return [min(features * 2**i, max_features) for i in range(num_levels)]


class UNet(nnx.Module):
    """`images [B, H, W, C] -> {"heatmaps": [B, H, W, K], "deep_supervision": [...]}`.

    H and W must be divisible by `2**(num_levels - 1)`. Outputs are float32 whatever
    `dtype` is: the 1x1 heads compute in float32 (a negligible share of the FLOPs) so
    the maps that feed the loss and the coordinate extractors carry no bf16 rounding.
    `"deep_supervision"` (only when `deep_supervision`) lists `[B, H/2**i, W/2**i, K]`
    for i = 0 .. num_deep_supervision - 1, finest first; entry 0 is `"heatmaps"`.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        num_levels: int,
        features: int = 32,
        max_features: int = 512,
        upsample: Literal["transpose", "resize"] = "transpose",
        resize_method: Literal["bilinear", "nearest"] = "bilinear",
        resize_kernel: int = 1,
        deep_supervision: bool = True,
        num_deep_supervision: int | None = None,
        norm: Literal["instance", "batch", "none"] = "instance",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        n_decoder = num_levels - 1
        if num_deep_supervision is None:
            num_deep_supervision = max(1, n_decoder - 1)
        if not 1 <= num_deep_supervision <= max(1, n_decoder):
            raise ValueError(
                f"num_deep_supervision must be in [1, {max(1, n_decoder)}] for "
                f"{num_levels} levels, got {num_deep_supervision}"
            )
        ch = unet_features(num_levels, features, max_features)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        block_kw = dict(norm=norm, **kw)
        self.num_levels = num_levels
        self.channels = tuple(ch)
        self.deep_supervision = deep_supervision
        self.dtype = dtype

        # encoder[i] runs at level i; encoder[-1] is the bottleneck.
        self.encoder = nnx.List(
            [
                ConvBlock(
                    in_channels if i == 0 else ch[i - 1],
                    ch[i],
                    strides=1 if i == 0 else 2,
                    **block_kw,
                )
                for i in range(num_levels)
            ]
        )
        # up[i] and decoder[i] produce level i (finest first) from level i + 1.
        up_kw = dict(mode=upsample, resize_method=resize_method, resize_kernel=resize_kernel)
        self.up = nnx.List([Upsample(ch[i + 1], ch[i], **up_kw, **kw) for i in range(n_decoder)])
        self.decoder = nnx.List([ConvBlock(2 * ch[i], ch[i], **block_kw) for i in range(n_decoder)])
        head_kw = dict(param_dtype=param_dtype, rngs=rngs, dtype=jnp.float32)
        self.heads = nnx.List(
            [nnx.Conv(ch[i], num_outputs, (1, 1), **head_kw) for i in range(num_deep_supervision)]
        )

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        _, h, w, _ = images.shape
        factor = 2 ** (self.num_levels - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"U-Net with {self.num_levels} levels needs H and W divisible by {factor}, "
                f"got {h} x {w}"
            )
        x = images.astype(self.dtype)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        outputs: dict[int, jax.Array] = {}
        for i in reversed(range(self.num_levels - 1)):
            x = self.up[i](x)
            # (upsampled, skip) channel order, as nnU-Net concatenates: ported weights fit.
            x = self.decoder[i](jnp.concatenate([x, skips[i]], axis=-1))
            if i < len(self.heads) and (self.deep_supervision or i == 0):
                outputs[i] = self.heads[i](x)
        if self.num_levels == 1:
            outputs[0] = self.heads[0](x)
        result: dict[str, Any] = {"heatmaps": outputs[0]}
        if self.deep_supervision:
            result["deep_supervision"] = [outputs[i] for i in range(len(self.heads))]
        return result


@register_model("unet")
def build_unet(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    features: int = 32,
    max_features: int = 512,
    num_levels: int | None = None,
    min_feature_size: int = 4,
    max_levels: int = 8,
    upsample: Literal["transpose", "resize"] = "transpose",
    resize_method: Literal["bilinear", "nearest"] = "bilinear",
    resize_kernel: int = 1,
    deep_supervision: bool = True,
    num_deep_supervision: int | None = None,
    norm: Literal["instance", "batch", "none"] = "instance",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> UNet:
    """nnU-Net-style U-Net; `num_levels` from `unet_num_levels(input_size, ...)` if None."""
    h, w = _hw(input_size)
    if num_levels is None:
        num_levels = unet_num_levels(
            (h, w), min_feature_size=min_feature_size, max_levels=max_levels
        )
    factor = 2 ** (num_levels - 1)
    if h % factor or w % factor:
        raise ValueError(f"input_size {h} x {w} is not divisible by 2**(num_levels - 1) = {factor}")
    return UNet(
        in_channels,
        num_outputs,
        num_levels=num_levels,
        features=features,
        max_features=max_features,
        upsample=upsample,
        resize_method=resize_method,
        resize_kernel=resize_kernel,
        deep_supervision=deep_supervision,
        num_deep_supervision=num_deep_supervision,
        norm=norm,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
