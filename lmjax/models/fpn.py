"""The cephalogram paper's FPN for landmark squares (registered as "ceph_fpn").

Section 3.4 of the paper, as tf.keras layers (NHWC):

  ConvBlock: 3x3 conv + ReLU, batch norm, 3x3 conv + ReLU, batch norm (the paper's
    "two convolution layers with a ReLU ... two BatchNormalization layers"); he
    normal init, as the U-Net's blocks on which the paper says it is based.
  encoder, blocks 1-4: ConvBlocks of `features * 2**i` channels (i = 0..3), each
    followed by 2x2 max pooling (block 4's feeds nothing; see below).
  FPNBlocks 5-7: the "up" layer, a 2x2 stride-2 transposed conv to the channels of
    the next finer encoder block; a "skip" layer, 1x1 conv + ReLU on that encoder
    block's output (before its pooling); their element-wise sum; a ConvBlock.
  blocks 8 and 9: two more ConvBlocks at the finest level.
  head: 1x1 conv to one channel per landmark. The paper applies a sigmoid here; this
    model returns the logits and the loss (Dice from logits) applies it.

Resolution. The paper upsamples only in the three FPNBlocks and describes no other
upsampling, yet its output is a mask at the input size (256 x 256). Three doublings
reach full resolution only from 1/8 of it, so the pyramid starts at block 4's output
before its pooling (1/8), and the skips are blocks 3, 2 and 1 (1/4, 1/2, 1/1). Block
4's pooled map would feed nothing and is not computed. H and W must be divisible by 8.

Not stated in the paper, chosen here: each FPN level has the channels of its encoder
skip (so the "up" output and the skip can be added), Keras's default Glorot uniform
init and zero bias for the transposed and 1x1 convs, Keras's batch norm defaults
(epsilon 1e-3, momentum 0.99), and base width 64. `bn_momentum` below 0.99 lets
the running statistics settle within short runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose
from lmjax.models.layers import (
    KERAS_BN_MOMENTUM,
    ConvReluBNBlock,
    Dtype,
    check_divisible,
    max_pool2x,
    size_hw,
)
from lmjax.models.registry import register_model

NUM_ENCODER = 4  # encoder ConvBlocks; the FPN has NUM_ENCODER - 1 FPNBlocks
NUM_REFINE = 2  # ConvBlocks after the FPN (blocks 8 and 9)
DIVISOR = 2 ** (NUM_ENCODER - 1)  # H and W must be multiples of this (8)


class FPNBlock(nnx.Module):
    """`(coarse [B, h, w, in_features], skip [B, 2h, 2w, out_features]) -> [B, 2h, 2w, out]`.

    `ConvBlock(up(coarse) + relu(conv1x1(skip)))`, up a 2x2 stride-2 transposed conv.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        glorot = nnx.initializers.glorot_uniform()
        self.up = ConvTranspose(
            in_features,
            out_features,
            kernel_size=(2, 2),
            strides=(2, 2),
            padding="VALID",
            kernel_init=glorot,
            **kw,
        )
        self.skip = nnx.Conv(out_features, out_features, (1, 1), kernel_init=glorot, **kw)
        self.block = ConvReluBNBlock(
            out_features, out_features, norm_last=True, bn_momentum=bn_momentum, **kw
        )

    def __call__(self, coarse: jax.Array, skip: jax.Array) -> jax.Array:
        return self.block(self.up(coarse) + nnx.relu(self.skip(skip)))


class CephFPN(nnx.Module):
    """`images [B, H, W, C] -> {"heatmaps": [B, H, W, K] logits}`; H, W multiples of 8.

    The logits are float32 whatever `dtype` is (the 1x1 head computes in float32).
    Batch norm follows the module's train/eval mode. There is no dropout.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        features: int = 64,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        ch = [features * 2**i for i in range(NUM_ENCODER)]
        kw = dict(bn_momentum=bn_momentum, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channels = tuple(ch)
        self.dtype = dtype
        self.encoder = nnx.List(
            [
                ConvReluBNBlock(in_channels if i == 0 else ch[i - 1], ch[i], norm_last=True, **kw)
                for i in range(NUM_ENCODER)
            ]
        )
        # fpn[j] produces level j (0 = full resolution) from level j + 1.
        self.fpn = nnx.List([FPNBlock(ch[j + 1], ch[j], **kw) for j in range(NUM_ENCODER - 1)])
        self.refine = nnx.List(
            [ConvReluBNBlock(ch[0], ch[0], norm_last=True, **kw) for _ in range(NUM_REFINE)]
        )
        self.head = nnx.Conv(
            ch[0],
            num_outputs,
            (1, 1),
            kernel_init=nnx.initializers.glorot_uniform(),
            dtype=jnp.float32,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        _, h, w, _ = images.shape
        check_divisible(h, w, DIVISOR, "the cephalogram FPN (3 doublings)")
        x = images.astype(self.dtype)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else max_pool2x(x))
            skips.append(x)
        for j in reversed(range(NUM_ENCODER - 1)):
            x = self.fpn[j](x, skips[j])
        for block in self.refine:
            x = block(x)
        return {"heatmaps": self.head(x)}


@register_model("ceph_fpn")
def build_ceph_fpn(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    features: int = 64,
    bn_momentum: float = KERAS_BN_MOMENTUM,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> CephFPN:
    """The cephalogram paper's FPN; `input_size` must have H and W divisible by 8."""
    h, w = size_hw(input_size)
    check_divisible(h, w, DIVISOR, "ceph_fpn input_size")
    return CephFPN(
        in_channels,
        num_outputs,
        features=features,
        bn_momentum=bn_momentum,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
