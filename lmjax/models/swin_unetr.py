"""2D Swin-UNETR (registered as "swin_unetr"): MONAI's SwinUNETR with spatial_dims=2.

The lower-limb paper's transformer segmenter (Hatamizadeh et al.'s Swin-UNETR, used
through MONAI 1.0.1): patch 4, feature size 96, depths 2-2-18-2, heads 3-6-12-24,
3 x 512 x 512 inputs, one sigmoid channel per landmark disc, Dice-CE. NHWC here.

Encoder (`swinViT`): MONAI's 2D Swin transformer, `lmjax.models.swin_encoder`. It
gives 5 maps (the patch tokens and the four stage outputs, H/p .. H/(16p)), which
are layer-normalised without affine parameters (MONAI's `normalize=True`) before
the decoder sees them.

Decoder. Residual conv blocks (MONAI's UnetResBlock: 3x3 conv, norm, leaky ReLU
0.01, 3x3 conv, norm, plus the input or, when the width changes, a 1x1 conv and
norm of it, then leaky ReLU; convs without bias) on the input image (`encoder1`),
on the patch tokens and stage outputs 1-2 (`encoder2..4`) and on the deepest map
(`encoder10`); then UNETR up blocks `decoder5..1` (a transposed conv with kernel and
stride 2, no bias, concatenated with the skip, then a residual block) back to full
resolution, and a 1x1 conv (with bias, float32) to K logits:
`{"heatmaps": [B, H, W, K]}`.

Differences from MONAI. MONAI fixes the patch size at 2; here `patch_size` is an
argument, 4 by default as the paper states. `decoder1` then upsamples by
`patch_size` (kernel and stride p) so the decoder still ends at the input
resolution; for p = 2 it is MONAI's network exactly, and a MONAI state dict loads
with the weight table "swin_unetr_monai" (`lmjax.models.weight_tables`). `norm`
"instance" is MONAI's default (instance norm without affine parameters, eps 1e-5);
"instance_affine" and "batch" (momentum 0.1 in PyTorch's sense) are MONAI's other
common choices. Dropout and attention dropout are not offered (MONAI's defaults are
0); `drop_path_rate` is stochastic depth rising linearly from 0 over all Swin
blocks. Initialisation is Swin's for the transformer (truncated normal 0.02, zero
biases) and He normal for the convs, not PyTorch's defaults. `remat=True`
recomputes each Swin block in the backward pass (MONAI's `use_checkpoint`).

H and W must be divisible by `patch_size * 2**4` (64 for the paper: 512 x 512 gives
maps of 128, 64, 32, 16 and 8 tokens per side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose
from lmjax.models.layers import LEAKY_SLOPE, Dtype, check_divisible, he_normal, size_hw
from lmjax.models.registry import register_model

# The encoder's parts the tests use stay importable from here.
from lmjax.models.swin_encoder import (  # noqa: F401
    LN_EPS,
    NUM_STAGES,
    BasicLayer,
    PatchMerging,
    SwinBlock,
    SwinTransformer,
    effective_window,
    relative_position_index,
    shift_regions,
)

NORMS = ("instance", "instance_affine", "batch")
PAPER_DEPTHS = (2, 2, 18, 2)
PAPER_HEADS = (3, 6, 12, 24)


# ------------------------------------------------------------------ conv blocks


class ConvOnly(nnx.Module):
    """One conv under the attribute `conv` (MONAI's `Convolution(conv_only=True)`).

    The nesting keeps parameter paths parallel to MONAI's keys (`conv1.conv.weight` ->
    `conv1.conv.kernel`). `transpose`: a transposed conv with kernel = stride
    `kernel_size`, `[B, h, w, Ci] -> [B, k h, k w, Co]`; otherwise a stride-1 conv
    padded by `kernel_size // 2` on each side.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        transpose: bool = False,
        use_bias: bool = False,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        k = kernel_size
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if transpose:
            self.conv = ConvTranspose(
                in_features, out_features, (k, k), strides=(k, k), padding="VALID",
                kernel_init=he_normal(), **kw,
            )  # fmt: skip
        else:
            pad = ((k // 2, k // 2), (k // 2, k // 2))
            self.conv = nnx.Conv(
                in_features, out_features, (k, k), padding=pad, kernel_init=he_normal(), **kw
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


def _norm(kind: str, features: int, *, dtype, param_dtype, rngs) -> nnx.Module:
    kw = dict(epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if kind == "batch":
        return nnx.BatchNorm(features, momentum=0.9, **kw)  # PyTorch's momentum 0.1
    affine = kind == "instance_affine"
    return nnx.InstanceNorm(features, use_scale=affine, use_bias=affine, **kw)


class UnetResBlock(nnx.Module):
    """`lrelu(norm2(conv2(lrelu(norm1(conv1(x))))) + skip(x))`, `[B,H,W,Ci] -> [B,H,W,Co]`.

    3x3 convs without bias; `skip` is the identity, or `norm3(conv3(x))` with a 1x1
    `conv3` when Ci != Co. Leaky ReLU slope 0.01.
    """

    def __init__(self, in_features, out_features, *, norm, dtype, param_dtype, rngs) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = ConvOnly(in_features, out_features, 3, **kw)
        self.conv2 = ConvOnly(out_features, out_features, 3, **kw)
        self.norm1 = _norm(norm, out_features, **kw)
        self.norm2 = _norm(norm, out_features, **kw)
        if in_features != out_features:
            self.conv3 = ConvOnly(in_features, out_features, 1, **kw)
            self.norm3 = _norm(norm, out_features, **kw)
        else:
            self.conv3 = self.norm3 = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.leaky_relu(self.norm1(self.conv1(x)), LEAKY_SLOPE)
        y = self.norm2(self.conv2(y))
        skip = x if self.conv3 is None else self.norm3(self.conv3(x))
        return nnx.leaky_relu(y + skip, LEAKY_SLOPE)


class UnetrBasicBlock(nnx.Module):
    """A `UnetResBlock` under the attribute `layer` (MONAI's nesting)."""

    def __init__(self, in_features, out_features, *, norm, dtype, param_dtype, rngs) -> None:
        self.layer = UnetResBlock(
            in_features, out_features, norm=norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer(x)


class UnetrUpBlock(nnx.Module):
    """`(x [B, h, w, Ci], skip [B, k h, k w, Co]) -> [B, k h, k w, Co]`.

    `conv_block(concat(transp_conv(x), skip))`, the upsampled map first.
    """

    def __init__(
        self, in_features, out_features, *, up: int = 2, norm, dtype, param_dtype, rngs
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.transp_conv = ConvOnly(in_features, out_features, up, transpose=True, **kw)
        self.conv_block = UnetResBlock(2 * out_features, out_features, norm=norm, **kw)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        return self.conv_block(jnp.concatenate([self.transp_conv(x), skip], axis=-1))


class UnetOutBlock(nnx.Module):
    """1x1 conv with bias to the logits, in float32: `[B, H, W, C] -> [B, H, W, K]`."""

    def __init__(self, in_features: int, num_outputs: int, *, param_dtype, rngs) -> None:
        self.conv = ConvOnly(
            in_features, num_outputs, 1, use_bias=True, dtype=jnp.float32,
            param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


# ------------------------------------------------------------------ model


class SwinUNETR(nnx.Module):
    """`images [B, H, W, C] -> {"heatmaps": [B, H, W, K] float32 logits}`.

    H and W must be multiples of `divisor` = `patch_size * 2**4`. Attribute names
    follow MONAI's SwinUNETR (`swinViT`, `encoder1..4`, `encoder10`, `decoder5..1`,
    `out`). `layer_index`/`num_layers` number the Swin blocks for layer-wise
    learning-rate decay.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        feature_size: int = 96,
        depths: Sequence[int] = PAPER_DEPTHS,
        num_heads: Sequence[int] = PAPER_HEADS,
        window_size: int | Sequence[int] = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        norm: Literal["instance", "instance_affine", "batch"] = "instance",
        normalize: bool = True,
        remat: bool = False,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        window = size_hw(window_size if isinstance(window_size, int) else tuple(window_size))
        _check_settings(
            feature_size, depths, num_heads, window, patch_size, mlp_ratio, drop_path_rate, norm
        )
        f = feature_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype, self.normalize = dtype, normalize
        self.patch_size, self.depths = patch_size, depths
        self.divisor = patch_size * 2**NUM_STAGES
        self.num_layers = sum(depths)
        # MONAI's attribute name (and state-dict key prefix), hence the camel case.
        self.swinViT = SwinTransformer(
            in_channels,
            f,
            patch_size=patch_size,
            depths=depths,
            num_heads=num_heads,
            window=window,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            remat=remat,
            **kw,
        )
        self.encoder1 = UnetrBasicBlock(in_channels, f, norm=norm, **kw)
        self.encoder2 = UnetrBasicBlock(f, f, norm=norm, **kw)
        self.encoder3 = UnetrBasicBlock(2 * f, 2 * f, norm=norm, **kw)
        self.encoder4 = UnetrBasicBlock(4 * f, 4 * f, norm=norm, **kw)
        self.encoder10 = UnetrBasicBlock(16 * f, 16 * f, norm=norm, **kw)
        self.decoder5 = UnetrUpBlock(16 * f, 8 * f, norm=norm, **kw)
        self.decoder4 = UnetrUpBlock(8 * f, 4 * f, norm=norm, **kw)
        self.decoder3 = UnetrUpBlock(4 * f, 2 * f, norm=norm, **kw)
        self.decoder2 = UnetrUpBlock(2 * f, f, norm=norm, **kw)
        # From the patch grid straight to the input resolution: p x p, stride p.
        self.decoder1 = UnetrUpBlock(f, f, up=patch_size, norm=norm, **kw)
        self.out = UnetOutBlock(f, num_outputs, param_dtype=param_dtype, rngs=rngs)

    def layer_index(self, path: Sequence[Any]) -> int:
        """Swin block number of a parameter path (0 .. num_layers - 1) for layer decay.

        The patch embedding is -1, a stage's patch merging counts with its last block,
        and the conv encoders, decoders and head (trained from scratch in the paper)
        are `num_layers`, the full rate.
        """
        if len(path) < 2 or path[0] != "swinViT":
            return self.num_layers
        if path[1] == "patch_embed":
            return -1
        stage = int(str(path[1]).removeprefix("layers")) - 1
        start = sum(self.depths[:stage])
        if len(path) > 4 and path[3] == "blocks":
            return start + int(path[4])
        return start + self.depths[stage] - 1

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        _, h, w, _ = images.shape
        check_divisible(h, w, self.divisor, f"swin_unetr (patch_size {self.patch_size} x 2**4)")
        x = images.astype(self.dtype)
        hidden = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec = self.encoder10(hidden[4])
        dec = self.decoder5(dec, hidden[3])
        dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        dec = self.decoder1(dec, enc0)
        return {"heatmaps": self.out(dec)}


def _check_settings(f, depths, heads, window, patch_size, mlp_ratio, drop_path_rate, norm):
    if len(depths) != NUM_STAGES or len(heads) != NUM_STAGES:
        raise ValueError(
            f"depths and num_heads need {NUM_STAGES} entries, got {depths} and {heads}"
        )
    if min(depths) < 1 or min(heads) < 1:
        raise ValueError(f"depths and num_heads must be >= 1, got {depths} and {heads}")
    if f < 1 or patch_size < 1 or min(window) < 1:
        raise ValueError(
            f"feature_size, patch_size and window_size must be >= 1, "
            f"got {f}, {patch_size} and {window}"
        )
    for i, h in enumerate(heads):
        if (f * 2**i) % h:
            raise ValueError(
                f"stage {i + 1} width {f * 2**i} (feature_size {f} x 2**{i}) is not "
                f"divisible by its {h} heads"
            )
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


@register_model("swin_unetr")
def build_swin_unetr(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    feature_size: int = 96,
    depths: Sequence[int] = PAPER_DEPTHS,
    num_heads: Sequence[int] = PAPER_HEADS,
    window_size: int | Sequence[int] = 7,
    patch_size: int = 4,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    norm: str = "instance",
    normalize: bool = True,
    remat: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> SwinUNETR:
    """The lower-limb paper's Swin-UNETR; `input_size` sides divisible by `patch_size * 16`."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    h, w = size_hw(input_size)
    check_divisible(h, w, patch_size * 2**NUM_STAGES, "swin_unetr input_size")
    return SwinUNETR(
        in_channels,
        num_outputs,
        feature_size=feature_size,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        patch_size=patch_size,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate,
        norm=norm,
        normalize=normalize,
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
