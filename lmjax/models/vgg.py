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
starts the encoder from ImageNet weights: see the weight table "vgg16_torchvision"
in `lmjax.models.weight_tables` (config: `model.pretrained=<vgg16 .safetensors/.pth>`).

`width` multiplies every channel count (encoder and decoder), so tests and CPU
configs can run a thin network; 1.0 is the paper's network and keeps torchvision's
parameter shapes.

Layer-wise learning-rate decay (the paper: Adam with layer-wise decay): `layer_index`
numbers the 13 encoder convs 0..12 and gives everything after them (decoder,
heads) `num_layers` = 13, so the first conv learns slowest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype, check_divisible, size_hw
from lmjax.models.registry import register_model

# TORCHVISION_CONV_INDEX and VGG16_STAGES stay importable from here for the tests.
from lmjax.models.vgg_encoder import (  # noqa: F401
    DIVISOR,
    NUM_CONVS,
    TORCHVISION_CONV_INDEX,
    VGG16_STAGES,
    PathKey,
    VGG16Encoder,
    layer_index,
    scaled,
    torch_vgg_init,
)

# DecoderBlock stays importable from here for the tests.
from lmjax.models.vgg_heads import (  # noqa: F401
    DECODER_FILTERS,
    CoordinateHead,
    DecoderBlock,
    UNetDecoder,
)

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
        kernel_init=torch_vgg_init(),
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
        filters = scaled(DECODER_FILTERS, width)
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
        filters = scaled(DECODER_FILTERS, width)
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


def _builder(name: str, cls: type[_VGGModel], doc: str) -> Callable[..., _VGGModel]:
    """Registers `build_<name>`, which builds `cls` for the registry.

    Its signature is the registry's arguments followed by the keyword options of
    `cls` (all but `input_hw`), so the model's options are declared once, on its
    class, and `build_model` still rejects unknown ones. `input_size` must have H and
    W divisible by 32; the models with a coordinate head get it as `input_hw`.
    """
    options = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in ("input_hw", "rngs")
    ]
    takes_hw = "input_hw" in inspect.signature(cls.__init__).parameters

    def build(
        *,
        num_outputs: int,
        input_size: int | Sequence[int],
        in_channels: int = 1,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ) -> _VGGModel:
        input_hw = _input_hw(input_size, name)
        if takes_hw:
            kwargs["input_hw"] = input_hw
        if "hidden" in kwargs:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        return cls(in_channels, num_outputs, rngs=rngs, **kwargs)

    required = [p for p in inspect.signature(build).parameters.values() if p.name != "kwargs"]
    build.__signature__ = inspect.Signature([*required, *options], return_annotation=cls.__name__)
    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = doc
    return register_model(name)(build)


build_vgg_unet = _builder(
    "vgg_unet",
    VGGUNet,
    "TernausNet-16 (VGG16 U-Net); `input_size` must have H and W divisible by 32.",
)
build_vgg_regression = _builder(
    "vgg_regression",
    VGGRegression,
    "VGG16 and a fully connected layer to 2K coordinates; H, W divisible by 32.",
)
build_vgg_seg_regression = _builder(
    "vgg_seg_regression",
    VGGSegRegression,
    "Segmentation-guided coordinate regression on VGG16; H, W divisible by 32.",
)
