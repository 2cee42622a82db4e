"""The cephalogram paper's U-Net for landmark squares (registered as "ceph_unet").

Section 3.3 of the paper, as tf.keras layers (NHWC):

  encoder, blocks 1-5, `features * 2**i` channels (i = 0..4): 3x3 conv + ReLU (he
    normal), batch norm, 3x3 conv + ReLU; then dropout (not in block 4); then 2x2 max
    pooling (not in blocks 4 and 5). Each block's output (after dropout, before
    pooling) is a skip connection.
  decoder, blocks 6-9, `features * 2**j` channels (j = 3..0): transposed conv,
    concatenation `[upsampled, skip]`, then the same conv, batch norm, conv. With
    `extra_conv` block 9 has a third conv after another batch norm (the paper's
    optional "output" flag).
  head: 1x1 conv to one channel per landmark. The paper applies a sigmoid here; this
    model returns the logits and the loss (Dice from logits) applies it.

Resolution. Blocks 4 and 5 do not pool, so there are three poolings (after blocks
1-3), block 4 and block 5 both run at 1/8 of the input, and four transposed convs
(blocks 6-9) cannot all double the resolution if the output is to be full size. Block
6's transposed conv therefore keeps the resolution (stride 1) and joins block 4's
output; blocks 7-9 double it and join blocks 3, 2 and 1. H and W must be divisible
by 8.

Not stated in the paper, chosen here: transposed convs of kernel 3 ("same" padding,
as the common Keras U-Net), Keras's default Glorot uniform init and zero bias where
the paper names no init (transposed and 1x1 convs), Keras's batch norm defaults
(epsilon 1e-3, momentum 0.99), base width 64 (the original U-Net's) and dropout 0.3.
`bn_momentum` below 0.99 lets the running statistics settle within short runs.
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

NUM_BLOCKS = 5  # encoder blocks; the decoder has NUM_BLOCKS - 1
POOLED = (True, True, True, False, False)  # max pooling after encoder block i + 1
DROPOUT = (True, True, True, False, True)  # dropout in encoder block i + 1
DIVISOR = 2 ** sum(POOLED)  # H and W must be multiples of this (8)


class CephUNet(nnx.Module):
    """`images [B, H, W, C] -> {"heatmaps": [B, H, W, K] logits}`; H, W multiples of 8.

    The logits are float32 whatever `dtype` is: the 1x1 head computes in float32 so the
    maps that feed the loss and the centroid extractor carry no bf16 rounding. Batch
    norm and dropout follow the module's train/eval mode (`model.train()`,
    `model.eval()`), which the train and eval steps set.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        features: int = 64,
        dropout_rate: float = 0.3,
        extra_conv: bool = False,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        ch = [features * 2**i for i in range(NUM_BLOCKS)]
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        block_kw = dict(bn_momentum=bn_momentum, **kw)
        self.channels = tuple(ch)
        self.dtype = dtype
        self.encoder = nnx.List(
            [
                ConvReluBNBlock(in_channels if i == 0 else ch[i - 1], ch[i], **block_kw)
                for i in range(NUM_BLOCKS)
            ]
        )
        # One Dropout module serves every block that has one: it has no weights, and
        # its RNG stream advances with each call.
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        # up[j] and decoder[j] produce decoder level j (0 = full resolution) from level
        # j + 1; up[3] (block 6) keeps the resolution, the others double it.
        glorot = nnx.initializers.glorot_uniform()
        self.up = nnx.List(
            [
                ConvTranspose(
                    ch[j + 1],
                    ch[j],
                    kernel_size=(3, 3),
                    strides=(2, 2) if POOLED[j] else (1, 1),
                    padding="SAME",
                    kernel_init=glorot,
                    **kw,
                )
                for j in range(NUM_BLOCKS - 1)
            ]
        )
        self.decoder = nnx.List(
            [
                ConvReluBNBlock(
                    2 * ch[j], ch[j], num_convs=3 if extra_conv and j == 0 else 2, **block_kw
                )
                for j in range(NUM_BLOCKS - 1)
            ]
        )
        self.head = nnx.Conv(
            ch[0],
            num_outputs,
            (1, 1),
            kernel_init=glorot,
            dtype=jnp.float32,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        _, h, w, _ = images.shape
        check_divisible(h, w, DIVISOR, "the cephalogram U-Net (3 poolings)")
        x = images.astype(self.dtype)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if DROPOUT[i]:
                x = self.dropout(x)
            skips.append(x)
            if POOLED[i]:
                x = max_pool2x(x)
        for j in reversed(range(NUM_BLOCKS - 1)):
            x = self.decoder[j](jnp.concatenate([self.up[j](x), skips[j]], axis=-1))
        return {"heatmaps": self.head(x)}


@register_model("ceph_unet")
def build_ceph_unet(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    features: int = 64,
    dropout_rate: float = 0.3,
    extra_conv: bool = False,
    bn_momentum: float = KERAS_BN_MOMENTUM,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> CephUNet:
    """The cephalogram paper's U-Net; `input_size` must have H and W divisible by 8."""
    h, w = size_hw(input_size)
    check_divisible(h, w, DIVISOR, "ceph_unet input_size")
    return CephUNet(
        in_channels,
        num_outputs,
        features=features,
        dropout_rate=dropout_rate,
        extra_conv=extra_conv,
        bn_momentum=bn_momentum,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
