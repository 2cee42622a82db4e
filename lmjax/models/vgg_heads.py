"""The heads of the lower-limb paper's VGG models (`lmjax.models.vgg`).

`UNetDecoder`: TernausNet-16's center and decoder blocks (ConvRelu, then a stride-2
transposed conv or bilinear doubling), each joined with the encoder stage of its
resolution. `CoordinateHead`: fully connected layers from the last pooled map to
K (x, y) coordinates in model-input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose
from lmjax.models.layers import Dtype
from lmjax.models.vgg_encoder import DIVISOR, conv3x3

DECODER_FILTERS = 32  # TernausNet-16's num_filters


# ---------------------------------------------------------------- U-Net decoder


class ConvRelu(nnx.Module):
    """`[B, H, W, in] -> [B, H, W, out]`: 3x3 conv (bias, padding 1) and ReLU."""

    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        self.conv = conv3x3(cin, cout, kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.conv(x))


class DecoderBlock(nnx.Module):
    """TernausNet's DecoderBlockV2: `[B, h, w, in] -> [B, 2h, 2w, out]`.

    ConvRelu to `middle` channels, then upsampling and ReLU. "transpose": a 4x4
    stride-2 transposed conv (PyTorch's `ConvTranspose2d(k=4, s=2, padding=1)`:
    lax padding `k - 1 - 1 = 2` on each side of the dilated input). "bilinear":
    TernausNet's other variant, bilinear doubling and a second ConvRelu.
    """

    def __init__(
        self,
        cin: int,
        middle: int,
        cout: int,
        *,
        upsample: Literal["transpose", "bilinear"] = "transpose",
        **kw: Any,
    ) -> None:
        self.upsample = upsample
        self.conv = ConvRelu(cin, middle, **kw)
        if upsample == "transpose":
            self.up = ConvTranspose(
                middle,
                cout,
                kernel_size=(4, 4),
                strides=(2, 2),
                padding=((2, 2), (2, 2)),
                transpose_kernel=True,
                **kw,
            )
        else:
            self.up = ConvRelu(middle, cout, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.upsample == "transpose":
            return nnx.relu(self.up(x))
        b, h, w, c = x.shape
        # Half-pixel centres, no antialiasing: PyTorch's bilinear `align_corners=False`.
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear", antialias=False)
        return self.up(x)


class UNetDecoder(nnx.Module):
    """TernausNet-16's center and decoder: encoder stages -> `[B, H, W, filters]`.

    center (from the last pool, to 1/16), dec5..dec2 each on `[up, skip]`
    concatenated (the upsampled map first, as TernausNet's `torch.cat`), dec1 a
    ConvRelu at full resolution.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        filters: int,
        *,
        upsample: Literal["transpose", "bilinear"] = "transpose",
        **kw: Any,
    ) -> None:
        c1, c2, c3, c4, c5 = encoder_channels
        f = filters
        up = dict(upsample=upsample, **kw)
        self.center = DecoderBlock(c5, 16 * f, 8 * f, **up)
        self.dec5 = DecoderBlock(c5 + 8 * f, 16 * f, 8 * f, **up)
        self.dec4 = DecoderBlock(c4 + 8 * f, 16 * f, 8 * f, **up)
        self.dec3 = DecoderBlock(c3 + 8 * f, 8 * f, 2 * f, **up)
        self.dec2 = DecoderBlock(c2 + 2 * f, 4 * f, f, **up)
        self.dec1 = ConvRelu(c1 + f, f, **kw)

    def __call__(self, stages: Sequence[jax.Array]) -> jax.Array:
        s1, s2, s3, s4, s5, pooled = stages
        x = self.center(pooled)
        for block, skip in ((self.dec5, s5), (self.dec4, s4), (self.dec3, s3), (self.dec2, s2)):
            x = block(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1))
        return self.dec1(jnp.concatenate([x, s1.astype(x.dtype)], axis=-1))


# ---------------------------------------------------------------- coordinate head


class CoordinateHead(nnx.Module):
    """`pooled [B, h, w, C] -> coords [B, K, 2]` (x, y) in model-input pixels.

    Flatten (or global average pool), optional hidden fully connected layers with
    ReLU, then one fully connected layer to 2K normalised coordinates `u`, returned as
    `u * (W, H) - 0.5` for the `input_hw` the head was built for. Computes in float32.
    """

    def __init__(
        self,
        channels: int,
        num_outputs: int,
        *,
        input_hw: tuple[int, int],
        pooling: Literal["flatten", "avg"] = "flatten",
        hidden: Sequence[int] = (),
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if pooling not in ("flatten", "avg"):
            raise ValueError(f"pooling must be 'flatten' or 'avg', got {pooling!r}")
        h, w = input_hw
        self.input_hw, self.pooling, self.num_outputs = (h, w), pooling, num_outputs
        self.grid = (h // DIVISOR, w // DIVISOR)
        n = channels * (self.grid[0] * self.grid[1] if pooling == "flatten" else 1)
        kw = dict(dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
        layers = []
        for d in hidden:
            layers.append(nnx.Linear(n, int(d), **kw))
            n = int(d)
        self.hidden = nnx.List(layers)
        # Zero weights and a 0.5 bias: every landmark starts at the image centre,
        # whatever the scale of the (possibly pretrained) features.
        self.out = nnx.Linear(
            n,
            2 * num_outputs,
            kernel_init=nnx.initializers.zeros_init(),
            bias_init=nnx.initializers.constant(0.5),
            **kw,
        )

    def __call__(self, pooled: jax.Array) -> jax.Array:
        b, gh, gw, _ = pooled.shape
        if self.pooling == "flatten" and (gh, gw) != self.grid:
            h, w = self.input_hw
            raise ValueError(
                f"the coordinate head flattens a {self.grid[0]} x {self.grid[1]} map "
                f"(input {h} x {w}); got input {gh * DIVISOR} x {gw * DIVISOR}"
            )
        x = pooled.astype(jnp.float32)
        x = x.reshape(b, -1) if self.pooling == "flatten" else x.mean(axis=(1, 2))
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        u = self.out(x).reshape(b, self.num_outputs, 2)
        h, w = self.input_hw
        return u * jnp.asarray([w, h], jnp.float32) - 0.5
