"""ViT encoder with a heatmap head, Sapiens/ViTPose style (registered as "vit_pose").

The MedSapiens model: a plain ViT (Sapiens 0.3B, i.e. ViT-L/16) whose token grid is
decoded by a heatmap head (mmpose's `HeatmapHead`) into maps at a quarter of the
input resolution.

Encoder. A `patch_size` x `patch_size` conv with stride `patch_size` (and
`patch_padding` pixels of zero padding on each side, 2 as in Sapiens: patch i then
covers input pixels 16 i - 2 .. 16 i + 13; the grid stays H/16 x W/16), plus a
position embedding, then `depth` pre-norm blocks
`x + attn(ln(x))`, `x + mlp(ln(x))` (LayerNorm eps 1e-6, GELU, MLP width
`mlp_ratio * width`, qkv with bias), then a final LayerNorm. No class token.

Position embeddings. "learned": a table `[1, gh, gw, width]` for the grid of
`pos_grid` (default: the grid of `input_size`), resized bicubically when the model
is called on another grid (a pretrained 64 x 64 Sapiens table fits a 64 x 48 grid
the same way). "sincos": fixed 2D sine-cosine embeddings computed for whatever grid
the input has (no parameters).

Head. Two 4x4 stride-2 transposed convs (no bias), each followed by batch norm and
ReLU, then 1x1 convs with batch norm and ReLU, then a 1x1 conv to `num_outputs`
logits in float32: `{"heatmaps": [B, H/4, W/4, K]}`. The 1x1 convs before batch norm
have no bias (it would be cancelled by the norm; a ported bias folds into the
running mean). The train step renders targets at the maps' resolution.

Input channels. The patch embedding takes `in_channels` channels as they come (1 for
radiographs) instead of replicating a gray image to RGB: for a gray image
replicated to three channels, a pretrained RGB kernel summed over its input
channels gives exactly the same tokens, at a third of the patch-embedding cost and
memory. `lmjax.models.weights` does that sum on import; the RGB mean/std
normalisation of the original training is not folded in, since lmjax normalises
each image by its own statistics (`data.normalize`).

Sizes: "tiny" (tests), "B" (768 wide, 12 layers, 12 heads), "L" (1024, 24, 16: the
Sapiens 0.3B shape). LoRA adapters (`lmjax.models.lora`) are added by `lora_ranks`.
`remat=True` recomputes each block's activations in the backward pass.
`attention` is `jax.nn.dot_product_attention`'s `implementation`: "auto" (the
default) takes cuDNN's fused kernel where it applies (NVIDIA GPU, bf16/fp16, head
width a multiple of 8 up to 128) and XLA otherwise; "xla" or None always XLA, which
materialises the N x N logits (at 1024 x 768 that is 3072^2 per head and image);
"cudnn" insists on the fused kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import lora as lora_lib
from lmjax.models.conv_transpose import ConvTranspose
from lmjax.models.layers import Dtype
from lmjax.models.registry import register_model

# auto_attention stays importable from here for the tests.
from lmjax.models.vit_blocks import (  # noqa: F401
    LN_EPS,
    TRUNC_NORMAL,
    Block,
    auto_attention,
    sincos_2d,
    token_grid,
)

PathKey = str | int


@dataclasses.dataclass(frozen=True)
class ViTSize:
    width: int
    depth: int
    num_heads: int
    deconv_features: tuple[int, ...]
    conv_features: tuple[int, ...]


VIT_SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(32, 3, 2, (32, 32), (32,)),
    "B": ViTSize(768, 12, 12, (768, 768), (768, 768)),
    # Sapiens 0.3B; its HeatmapHead uses 768 channels for deconvs and 1x1 convs.
    "L": ViTSize(1024, 24, 16, (768, 768), (768, 768)),
}


def _apply_block(block: Block, x: jax.Array) -> jax.Array:
    return block(x)


class HeatmapHead(nnx.Module):
    """`[B, h, w, C] -> [B, 4h, 4w, K]` float32 logits (with two deconvs).

    Each deconv is PyTorch's `ConvTranspose2d(k=4, s=2, p=1)` (Flax padding
    `k - 1 - p = 2`): the map doubles exactly. A ported PyTorch kernel must be
    flipped spatially and have its in/out axes swapped.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        *,
        deconv_features: Sequence[int],
        conv_features: Sequence[int],
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # PyTorch's BatchNorm defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
        norm = lambda c: nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, **kw)
        ch = [in_features, *deconv_features]
        self.deconvs = nnx.List(
            [
                ConvTranspose(
                    ch[i], ch[i + 1], (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=False, **kw
                )
                for i in range(len(deconv_features))
            ]
        )
        self.deconv_norms = nnx.List([norm(c) for c in deconv_features])
        ch = [ch[-1], *conv_features]
        self.convs = nnx.List(
            [
                nnx.Conv(ch[i], ch[i + 1], (1, 1), use_bias=False, **kw)
                for i in range(len(conv_features))
            ]
        )
        self.conv_norms = nnx.List([norm(c) for c in conv_features])
        self.final = nnx.Conv(
            ch[-1], num_outputs, (1, 1), dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in zip(self.deconvs, self.deconv_norms, strict=True):
            x = jax.nn.relu(norm(conv(x)))
        for conv, norm in zip(self.convs, self.conv_norms, strict=True):
            x = jax.nn.relu(norm(conv(x)))
        return self.final(x)


class ViTPose(nnx.Module):
    """`images [B, H, W, C] -> {"heatmaps": [B, 4 gh, 4 gw, K]}` (= H/4 x W/4 for
    H, W multiples of `patch_size`).

    `layer_index(path)` numbers parameters for layer-wise learning-rate decay: -1 for
    the patch and position embeddings, i for block i, `num_layers` for the final norm
    and the head.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        input_size: int | Sequence[int],
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        patch_padding: int = 2,
        pos_embed: Literal["learned", "sincos"] = "learned",
        pos_grid: Sequence[int] | None = None,
        deconv_features: Sequence[int] = (768, 768),
        conv_features: Sequence[int] = (768, 768),
        remat: bool = False,
        attention: str | None = "auto",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        pad = patch_padding
        self.patch_size, self.patch_padding = patch_size, patch_padding
        self.width, self.num_layers, self.remat, self.dtype = width, depth, remat, dtype
        self.pos_embed_kind = pos_embed
        self.grid = token_grid(input_size, patch_size, patch_padding)
        self.patch_embed = nnx.Conv(
            in_channels,
            width,
            (patch_size, patch_size),
            (patch_size, patch_size),
            padding=((pad, pad), (pad, pad)),
            **kw,
        )
        if pos_embed == "learned":
            gh, gw = tuple(pos_grid) if pos_grid is not None else self.grid
            self.pos_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, gh, gw, width), param_dtype))
        self.blocks = nnx.List(
            [Block(width, num_heads, mlp_ratio, attention=attention, **kw) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(width, epsilon=LN_EPS, **kw)
        self.head = HeatmapHead(
            width,
            num_outputs,
            deconv_features=deconv_features,
            conv_features=conv_features,
            **kw,
        )

    def position_embedding(self, grid: tuple[int, int]) -> jax.Array:
        """`[1, gh, gw, width]` for a token grid: the table (resized if needed) or sincos."""
        if self.pos_embed_kind == "sincos":
            return sincos_2d(grid, self.width)
        table = self.pos_embed[...]
        if table.shape[1:3] == tuple(grid):
            return table
        # Bicubic, half-pixel centres, no antialiasing: how ViT position tables are resized.
        return jax.image.resize(table, (1, *grid, self.width), "bicubic", antialias=False)

    def layer_index(self, path: Sequence[PathKey]) -> int:
        """Layer number of a parameter path for layer-wise learning-rate decay."""
        if path and path[0] in ("patch_embed", "pos_embed"):
            return -1
        if len(path) > 1 and path[0] == "blocks":
            return int(path[1])
        return self.num_layers

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        _, h, w, _ = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViT input {h} x {w} must have sides divisible by {self.patch_size}")
        x = self.patch_embed(images.astype(self.dtype))  # [B, gh, gw, D]
        b, gh, gw, d = x.shape
        x = x + self.position_embedding((gh, gw)).astype(x.dtype)
        x = x.reshape(b, gh * gw, d)
        for block in self.blocks:
            x = nnx.remat(_apply_block)(block, x) if self.remat else block(x)
        x = self.norm(x).reshape(b, gh, gw, d)
        return {"heatmaps": self.head(x)}


def _size(name: str) -> ViTSize:
    key = name if name in VIT_SIZES else name.upper()
    if key not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {name!r}; known: {', '.join(VIT_SIZES)}")
    return VIT_SIZES[key]


@register_model("vit_pose")
def build_vit_pose(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    size: str = "B",
    width: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float = 4.0,
    patch_size: int = 16,
    patch_padding: int = 2,
    pos_embed: Literal["learned", "sincos"] = "learned",
    pos_grid: Sequence[int] | None = None,
    deconv_features: Sequence[int] | None = None,
    conv_features: Sequence[int] | None = None,
    remat: bool = False,
    attention: str | None = "auto",
    lora_ranks: Mapping[str, int] | None = None,
    lora_alpha: Mapping[str, float] | None = None,
    lora_dropout: float = 0.1,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> ViTPose:
    """ViT ("tiny" | "B" | "L", or explicit `width`/`depth`/`num_heads`) + heatmap head.

    `lora_ranks` (e.g. `{"qkv": 4, "proj": 8}`) adds LoRA adapters to the Linears of
    those names, with `lora_alpha` (default: alpha = rank, i.e. scale 1) and
    `lora_dropout` on the adapter input; see `lmjax.models.lora`.
    """
    s = _size(size)
    model = ViTPose(
        in_channels,
        num_outputs,
        input_size=input_size,
        width=width or s.width,
        depth=depth or s.depth,
        num_heads=num_heads or s.num_heads,
        mlp_ratio=mlp_ratio,
        patch_size=patch_size,
        patch_padding=patch_padding,
        pos_embed=pos_embed,
        pos_grid=pos_grid,
        deconv_features=tuple(deconv_features or s.deconv_features),
        conv_features=tuple(s.conv_features if conv_features is None else conv_features),
        remat=remat,
        attention=attention,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
    if lora_ranks:
        lora_lib.apply_lora(
            model, lora_ranks, alpha=lora_alpha, dropout=lora_dropout, dtype=dtype, rngs=rngs
        )
    return model
