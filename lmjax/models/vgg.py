"""The lower-limb paper's VGG16 models: U-Net, coordinate regression and SGR.

Section II-B/E of the lower-limb paper (Amador Sanchez et al., IEEE Access 2025):

  "vgg_unet"            TernausNet-16 (Shvets et al.): a VGG16 encoder (13 3x3 convs
                        with ReLU, five 2x2 max pools), a center block and decoder
                        blocks of ConvRelu and a stride-2 transposed conv, each joined
                        with the encoder stage of its resolution, a last ConvRelu and
                        a 1x1 conv to K logits at full resolution. Used for the
                        paper's segmentation (Dice-CE on circles) and heatmap models.
  "vgg_regression"      the VGG16 encoder and "a fully connected layer with a total
                        of nodes equal to the landmark pixel coordinates" (2K), MSE.
  "vgg_seg_regression"  segmentation-guided coordinate regression (SGR): the U-Net and
                        the regression head on one shared encoder, trained together
                        with Dice-CE on the logits and MSE on the coordinates.

Outputs (NHWC): `{"heatmaps": [B, H, W, K] logits}`, `{"coords": [B, K, 2]}`, or both.
The logits and coordinates are float32 whatever `dtype` is (the heads compute in
float32). H and W must be multiples of 32 (five poolings).

Coordinates are `(x, y)` in model-input pixels with pixel centres on integers, as
the batch's `landmarks`. The fully connected layer predicts normalised coordinates
`u` (0 at the left/top edge of the image, 1 at the right/bottom edge) and the model
returns `u * (W, H) - 0.5`; the output layer starts with zero weights and bias 0.5,
so every landmark starts at the image centre rather than at a random point that
may lie far outside the image (its weights get gradients from the first step on;
the encoder from the second).

Not stated in the paper, chosen here: the regression head flattens the last
pooled map (`pooling="flatten"`, keeping where features are, which a coordinate
needs; `"avg"` pools globally instead), the TernausNet-16 decoder widths (32 base
filters) with its 4x4 transposed convs, and torchvision's VGG init
(He normal, fan out, zero bias) for parameters that are not imported. The paper
starts the encoder from ImageNet weights: see the weight table
`VGG16_TORCHVISION_RULES` (config: `model.pretrained=<vgg16 .safetensors/.pth>`).

`width` multiplies every channel count (encoder and decoder), so tests and CPU
configs can run a thin network; 1.0 is the paper's network and keeps torchvision's
parameter shapes.

Layer-wise learning-rate decay (the paper: Adam with layer-wise decay): `layer_index`
numbers the 13 encoder convs 0..12 and gives everything after them (decoder,
heads) `num_layers` = 13, so the first conv learns slowest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose
from lmjax.models.layers import Dtype, check_divisible, max_pool2x, size_hw
from lmjax.models.registry import register_model
from lmjax.models.weights import MODEL_TABLES, Rule, register_weight_table

# Output channels of the 13 convs, stage by stage; a 2x2 max pool ends every stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
NUM_CONVS = sum(len(s) for s in VGG16_STAGES)  # 13
DIVISOR = 2 ** len(VGG16_STAGES)  # H and W must be multiples of this (32)
# torchvision `vgg16().features` indices of the convs (ReLUs and pools in between).
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
DECODER_FILTERS = 32  # TernausNet-16's num_filters

PathKey = str | int


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _torch_vgg_init() -> nnx.Initializer:
    """torchvision VGG's conv init: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`."""
    return nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv3x3(cin: int, cout: int, kw: Mapping[str, Any]) -> nnx.Conv:
    """3x3 conv with bias, padding 1 on each side (PyTorch's `padding=1`)."""
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=_torch_vgg_init(),
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
        self.channels = tuple(_scaled(s[-1], width) for s in VGG16_STAGES)
        convs, cin = [], in_channels
        for stage in VGG16_STAGES:
            for c in stage:
                convs.append(_conv3x3(cin, _scaled(c, width), kw))
                cin = _scaled(c, width)
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


# ---------------------------------------------------------------- U-Net decoder


class ConvRelu(nnx.Module):
    """`[B, H, W, in] -> [B, H, W, out]`: 3x3 conv (bias, padding 1) and ReLU."""

    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        self.conv = _conv3x3(cin, cout, kw)

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


# ---------------------------------------------------------------- the three models


class _VGGModel(nnx.Module):
    """Shared parts: the encoder, layer numbering for layer-wise decay."""

    num_layers = NUM_CONVS

    def layer_index(self, path: Sequence[PathKey]) -> int:
        """Layer number of a parameter path for layer-wise learning-rate decay."""
        return layer_index(path)


def _head_1x1(filters: int, num_outputs: int, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        filters,
        num_outputs,
        (1, 1),
        kernel_init=_torch_vgg_init(),
        bias_init=nnx.initializers.zeros_init(),
        dtype=jnp.float32,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class VGGUNet(_VGGModel):
    """TernausNet-16: `images [B, H, W, C] -> {"heatmaps": [B, H, W, K] logits}`."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        width: float = 1.0,
        upsample: Literal["transpose", "bilinear"] = "transpose",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = VGG16Encoder(in_channels, width=width, **kw)
        filters = _scaled(DECODER_FILTERS, width)
        self.decoder = UNetDecoder(self.encoder.channels, filters, upsample=upsample, **kw)
        self.final = _head_1x1(filters, num_outputs, param_dtype, rngs)

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        return {"heatmaps": self.final(self.decoder(self.encoder(images)))}


class VGGRegression(_VGGModel):
    """`images [B, H, W, C] -> {"coords": [B, K, 2]}` (x, y), model-input pixels."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        input_hw: tuple[int, int],
        width: float = 1.0,
        pooling: Literal["flatten", "avg"] = "flatten",
        hidden: Sequence[int] = (),
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.encoder = VGG16Encoder(
            in_channels, width=width, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.head = CoordinateHead(
            self.encoder.channels[-1],
            num_outputs,
            input_hw=input_hw,
            pooling=pooling,
            hidden=hidden,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        return {"coords": self.head(self.encoder(images)[-1])}


class VGGSegRegression(_VGGModel):
    """SGR: `images -> {"heatmaps": [B, H, W, K] logits, "coords": [B, K, 2]}`.

    One encoder feeds the TernausNet-16 decoder (segmentation logits, one channel per
    landmark) and the coordinate head (on the last pooled map), so the segmentation
    loss shapes the features the coordinates are regressed from. The paper cites
    Sanchez et al. (IEEE Access 2024) for the design without describing where the
    regression branch joins; here it reads the encoder's bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        input_hw: tuple[int, int],
        width: float = 1.0,
        upsample: Literal["transpose", "bilinear"] = "transpose",
        pooling: Literal["flatten", "avg"] = "flatten",
        hidden: Sequence[int] = (),
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = VGG16Encoder(in_channels, width=width, **kw)
        filters = _scaled(DECODER_FILTERS, width)
        self.decoder = UNetDecoder(self.encoder.channels, filters, upsample=upsample, **kw)
        self.final = _head_1x1(filters, num_outputs, param_dtype, rngs)
        self.head = CoordinateHead(
            self.encoder.channels[-1],
            num_outputs,
            input_hw=input_hw,
            pooling=pooling,
            hidden=hidden,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        stages = self.encoder(images)
        heatmaps = self.final(self.decoder(stages))
        return {"heatmaps": heatmaps, "coords": self.head(stages[-1])}


# ---------------------------------------------------------------- builders


def _input_hw(input_size: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = size_hw(input_size)
    check_divisible(h, w, DIVISOR, f"{name} input_size")
    return h, w


@register_model("vgg_unet")
def build_vgg_unet(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    width: float = 1.0,
    upsample: Literal["transpose", "bilinear"] = "transpose",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> VGGUNet:
    """TernausNet-16 (VGG16 U-Net); `input_size` must have H and W divisible by 32."""
    _input_hw(input_size, "vgg_unet")
    return VGGUNet(
        in_channels,
        num_outputs,
        width=width,
        upsample=upsample,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


@register_model("vgg_regression")
def build_vgg_regression(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    width: float = 1.0,
    pooling: Literal["flatten", "avg"] = "flatten",
    hidden: Sequence[int] = (),
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> VGGRegression:
    """VGG16 and a fully connected layer to 2K coordinates; H, W divisible by 32."""
    return VGGRegression(
        in_channels,
        num_outputs,
        input_hw=_input_hw(input_size, "vgg_regression"),
        width=width,
        pooling=pooling,
        hidden=tuple(hidden),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


@register_model("vgg_seg_regression")
def build_vgg_seg_regression(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    width: float = 1.0,
    upsample: Literal["transpose", "bilinear"] = "transpose",
    pooling: Literal["flatten", "avg"] = "flatten",
    hidden: Sequence[int] = (),
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> VGGSegRegression:
    """Segmentation-guided coordinate regression on VGG16; H, W divisible by 32."""
    return VGGSegRegression(
        in_channels,
        num_outputs,
        input_hw=_input_hw(input_size, "vgg_seg_regression"),
        width=width,
        upsample=upsample,
        pooling=pooling,
        hidden=tuple(hidden),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


# ---------------------------------------------------------------- torchvision weights

_CONV_KEYS = "|".join(map(str, TORCHVISION_CONV_INDEX))
_FEATURE_TO_CONV = {f: i for i, f in enumerate(TORCHVISION_CONV_INDEX)}
MODEL_NAMES = ("vgg_unet", "vgg_regression", "vgg_seg_regression")


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
    model=MODEL_NAMES[0],
)
for _name in MODEL_NAMES[1:]:  # the table's one `model=` slot names the first only
    MODEL_TABLES.setdefault(_name, "vgg16_torchvision")
