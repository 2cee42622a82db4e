"""HRNet with a landmark decoder and a segmentation decoder (registered as "hrnet").

The fluoroscopy paper's network (Hresko and Drotar, "Segmentation-Informed Landmark
Regression for Robust Localization in Fluoroscopic Imaging", MIDL 2026 submission):
an HRNet encoder (Wang et al., TPAMI 2020) whose final high-resolution feature map
feeds two parallel decoders of the same shape, one for landmark heatmaps and one
for bone segmentation.

Encoder, as the HRNet-W32 pose network (`width` W = 32; W48 widens it):
  stem       two 3x3 stride-2 conv-BN-ReLU (`stem_features` = 64 channels): 1/4 size
  stage 1    `num_blocks[0]` bottlenecks (64 -> 256 channels) at 1/4
  stage s    s = 2 .. S: a transition adds a branch at half the resolution of the
             last one (3x3 stride-2 conv-BN-ReLU); `num_modules[s - 2]` modules, each
             `num_blocks[s - 1]` basic blocks per branch, then multi-resolution fusion
Branch b has `W * 2**b` channels (W, 2W, 4W, 8W) at `1 / (4 * 2**b)` of the input.
Fusion of branch j into branch i sums: j > i a 1x1 conv-BN and nearest upsampling;
j < i a chain of i - j 3x3 stride-2 convs (BN, ReLU between); then ReLU. The last
module of the last stage fuses only into branch 0 (the pose network's
`multi_scale_output=False`). Defaults give HRNet-W32's counts: 4 stages,
`num_modules=(1, 4, 3)`, `num_blocks=(4, 4, 4, 4)`; the encoder has 28.5 M
parameters at W32 and 63.6 M at W48, as the pose networks without their 1x1 head.

Decoders (the paper: "successive upsampling convolutional layers followed by residual
blocks ... two convolutional layers with batch normalization and ReLU activation ...
identity skip connections"): per entry of `decoder_features`, a 2x upsampling conv
(`Upsample`: transposed conv or resize + conv) with BN and ReLU, then
`decoder_blocks` residual blocks; two entries bring the 1/4 map back to full size.
A 1x1 conv in float32 ends each: K heatmap logits and R + 1 segmentation logits
(channel 0 background, channel r + 1 region r of the landmark set). The paper takes a
log-softmax over each heatmap's pixels; the losses (`kl_heatmap`) normalise the
logits themselves, so the model returns them raw.

    model(images [B, H, W, C]) -> {"heatmaps": [B, H, W, K],
                                   "segmentation": [B, H, W, R + 1]}  (if num_regions)

H and W must be divisible by `4 * 2**(S - 1)` (32 for four stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

# upsample_nearest stays importable from here for the tests.
from lmjax.models.hrnet_blocks import (  # noqa: F401
    BN_MOMENTUM,
    BOTTLENECK_EXPANSION,
    Bottleneck,
    ConvBN,
    HighResolutionModule,
    ResidualBlock,
    Transition,
    upsample_nearest,
)
from lmjax.models.layers import Dtype, Upsample
from lmjax.models.registry import register_model


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def branch_channels(width: int, num_branches: int) -> tuple[int, ...]:
    """Channels of HRNet's branches, finest first: `(W, 2W, 4W, 8W)` for four."""
    return tuple(width * 2**b for b in range(num_branches))


class Decoder(nnx.Module):
    """Per entry of `features`: 2x upsampling conv, BN, ReLU, `num_blocks` residual
    blocks; then a float32 1x1 conv to `out_features` logits."""

    def __init__(
        self,
        in_features: int,
        features: Sequence[int],
        out_features: int,
        *,
        num_blocks: int = 1,
        upsample: Literal["transpose", "resize"] = "transpose",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        ups, norms, blocks = [], [], []
        prev = in_features
        for f in features:
            ups.append(Upsample(prev, f, mode=upsample, resize_kernel=3, **kw))
            norms.append(nnx.BatchNorm(f, momentum=BN_MOMENTUM, epsilon=1e-5, **kw))
            blocks.append(nnx.List([ResidualBlock(f, f, **kw) for _ in range(num_blocks)]))
            prev = f
        self.up, self.norm, self.blocks = nnx.List(ups), nnx.List(norms), nnx.List(blocks)
        self.head = nnx.Conv(
            prev, out_features, (1, 1), dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for up, norm, blocks in zip(self.up, self.norm, self.blocks, strict=True):
            x = jax.nn.relu(norm(up(x)))
            for block in blocks:
                x = block(x)
        return self.head(x)


class HRNet(nnx.Module):
    """`images [B, H, W, C] -> {"heatmaps": [B, H, W, K], "segmentation": [B, H, W, R + 1]}`.

    The two outputs are float32 logits whatever `dtype` is (the 1x1 heads compute in
    float32). `"segmentation"` only when `num_regions > 0`. See the module docstring.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        width: int = 32,
        num_regions: int = 0,
        stem_features: int = 64,
        num_modules: Sequence[int] = (1, 4, 3),
        num_blocks: Sequence[int] = (4, 4, 4, 4),
        decoder_features: Sequence[int] | None = None,
        decoder_blocks: int = 1,
        upsample: Literal["transpose", "resize"] = "transpose",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        num_modules, num_blocks = tuple(num_modules), tuple(num_blocks)
        if len(num_blocks) != len(num_modules) + 1:
            raise ValueError(
                f"num_blocks needs one entry per stage ({len(num_modules) + 1} for "
                f"num_modules={num_modules}), got {num_blocks}"
            )
        if min((width, stem_features, num_regions + 1, *num_blocks, *num_modules)) < 1:
            raise ValueError(
                f"width, stem_features, num_modules and num_blocks must be positive and "
                f"num_regions >= 0; got {width}, {stem_features}, {num_modules}, "
                f"{num_blocks}, {num_regions}"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.width = width
        self.num_stages = len(num_blocks)
        self.channels = branch_channels(width, self.num_stages)
        self.num_regions = num_regions
        self.dtype = dtype

        self.stem = nnx.Sequential(
            ConvBN(in_channels, stem_features, strides=2, **kw),
            ConvBN(stem_features, stem_features, strides=2, **kw),
        )
        out1 = stem_features * BOTTLENECK_EXPANSION
        self.stage1 = nnx.List(
            [
                Bottleneck(stem_features if i == 0 else out1, stem_features, **kw)
                for i in range(num_blocks[0])
            ]
        )
        transitions, stages = [], []
        previous: tuple[int, ...] = (out1,)
        for s in range(1, self.num_stages):
            current = self.channels[: s + 1]
            transitions.append(Transition(previous, current, **kw))
            last_stage = s == self.num_stages - 1
            stages.append(
                nnx.List(
                    [
                        HighResolutionModule(
                            current,
                            num_blocks[s],
                            multi_scale_output=not (last_stage and m == num_modules[s - 1] - 1),
                            **kw,
                        )
                        for m in range(num_modules[s - 1])
                    ]
                )
            )
            previous = current
        self.transitions, self.stages = nnx.List(transitions), nnx.List(stages)
        if self.num_stages == 1:  # no branches: the bottleneck output feeds the decoders
            self.final_features = out1
        else:
            self.final_features = width
        features = tuple(decoder_features or (width, width))
        dec = dict(num_blocks=decoder_blocks, upsample=upsample, **kw)
        self.decoder_features = features
        self.landmark_decoder = Decoder(self.final_features, features, num_outputs, **dec)
        self.segmentation_decoder = (
            Decoder(self.final_features, features, num_regions + 1, **dec) if num_regions else None
        )

    @property
    def stride(self) -> int:
        """H and W must be divisible by this."""
        return 4 * 2 ** (self.num_stages - 1)

    def features(self, images: jax.Array) -> jax.Array:
        """The encoder's final high-resolution map `[B, H / 4, W / 4, width]`."""
        x = self.stem(images.astype(self.dtype))
        for block in self.stage1:
            x = block(x)
        xs = [x]
        for transition, modules in zip(self.transitions, self.stages, strict=True):
            xs = transition(xs)
            for module in modules:
                xs = module(xs)
        return xs[0]

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        _, h, w, _ = images.shape
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"HRNet with {self.num_stages} stages needs H and W divisible by "
                f"{self.stride}, got {h} x {w}"
            )
        x = self.features(images)
        # Decoders upsample by 2 per entry; a shorter or longer list gives coarser or
        # finer maps, which the train step handles (targets follow the maps' size).
        out: dict[str, Any] = {"heatmaps": self.landmark_decoder(x)}
        if self.segmentation_decoder is not None:
            out["segmentation"] = self.segmentation_decoder(x)
        return out


@register_model("hrnet")
def build_hrnet(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    width: int = 32,
    num_regions: int = 0,
    stem_features: int = 64,
    num_modules: Sequence[int] = (1, 4, 3),
    num_blocks: Sequence[int] = (4, 4, 4, 4),
    decoder_features: Sequence[int] | None = None,
    decoder_blocks: int = 1,
    upsample: Literal["transpose", "resize"] = "transpose",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> HRNet:
    """HRNet-W`width` (32 and 48 are the standard ones) with landmark and segmentation
    decoders; `num_regions=0` builds no segmentation decoder."""
    h, w = _hw(input_size)
    stride = 4 * 2 ** len(tuple(num_modules))
    if h % stride or w % stride:
        raise ValueError(f"input_size {h} x {w} is not divisible by {stride} for HRNet")
    return HRNet(
        in_channels,
        num_outputs,
        width=width,
        num_regions=num_regions,
        stem_features=stem_features,
        num_modules=num_modules,
        num_blocks=num_blocks,
        decoder_features=decoder_features,
        decoder_blocks=decoder_blocks,
        upsample=upsample,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
