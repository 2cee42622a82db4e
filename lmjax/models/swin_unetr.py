"""2D Swin-UNETR (registered as "swin_unetr"): MONAI's SwinUNETR with spatial_dims=2.

The lower-limb paper's transformer segmenter (Hatamizadeh et al.'s Swin-UNETR, used
through MONAI 1.0.1): patch 4, feature size 96, depths 2-2-18-2, heads 3-6-12-24,
3 x 512 x 512 inputs, one sigmoid channel per landmark disc, Dice-CE. NHWC here.

Encoder (`swinViT`). A `patch_size` x `patch_size` conv with stride `patch_size`
(bias, no norm) gives tokens at H/p x W/p with `feature_size` = f channels. Four
stages `layers1..4`; stage i runs `depths[i]` Swin blocks at width f * 2**i and ends
with patch merging (2 x 2 neighbours concatenated in the order (0,0), (1,0), (0,1),
(1,1) as (row, col), LayerNorm, linear 4C -> 2C without bias), so stage i's output
is at H / (p 2**(i+1)) with f 2**(i+1) channels; MONAI merges after stage 4 too.
A Swin block is pre-norm: `x + attn(ln1(x))`, `x + mlp(ln2(x))` (LayerNorm eps
1e-5, MLP `linear1` -> exact GELU -> `linear2` with `mlp_ratio * C` hidden units).
Attention runs in non-overlapping `window_size` x `window_size` windows with a
learned relative position bias (a `(2w-1)**2 x heads` table indexed by the relative
offsets); odd-numbered blocks of a stage shift the map by `window_size // 2` first
(cyclic roll up-left), and tokens that come from different regions of the unrolled
map get -100 added to their logits (Swin's mask). A map that is not a multiple of the
window is zero-padded at the bottom and right after `norm1` (the padded tokens take
part in attention as Swin and MONAI let them) and cropped after; along a side no
longer than the window, the window shrinks to the side and that side is not
shifted. With a shrunk window MONAI indexes the bias with the top-left `n x n` block
of the full window's index; so does this model, to give a ported model the same
outputs. The stage inputs and outputs (5 maps, H/p .. H/(16p)) are layer-normalised
without affine parameters (MONAI's `normalize=True`) before the decoder sees them.

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
with the weight table "swin_unetr_monai" below. `norm` "instance" is MONAI's default
(instance norm without affine parameters, eps 1e-5); "instance_affine" and "batch"
(momentum 0.1 in PyTorch's sense) are MONAI's other common choices. Dropout and
attention dropout are not offered (MONAI's defaults are 0); `drop_path_rate` is
stochastic depth rising linearly from 0 over all Swin blocks. Initialisation is
Swin's for the transformer (truncated normal 0.02, zero biases) and He normal for
the convs, not PyTorch's defaults. `remat=True` recomputes each Swin block in the
backward pass (MONAI's `use_checkpoint`).

H and W must be divisible by `patch_size * 2**4` (64 for the paper: 512 x 512 gives
maps of 128, 64, 32, 16 and 8 tokens per side).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose
from lmjax.models.layers import LEAKY_SLOPE, Dtype, check_divisible, he_normal, size_hw
from lmjax.models.registry import register_model
from lmjax.models.weights import Rule, register_weight_table

NUM_STAGES = 4
LN_EPS = 1e-5  # PyTorch's LayerNorm/InstanceNorm default, which MONAI keeps
MASK_VALUE = -100.0  # Swin's additive logit between tokens of different shift regions
NORMS = ("instance", "instance_affine", "batch")
PAPER_DEPTHS = (2, 2, 18, 2)
PAPER_HEADS = (3, 6, 12, 24)

_TRUNC = nnx.initializers.truncated_normal(stddev=0.02)
Pair = tuple[int, int]


# ------------------------------------------------------------------ windows


def effective_window(hw: Pair, window: Pair, shift: Pair) -> tuple[Pair, Pair]:
    """`(window, shift)` for a `hw` map: a side no longer than the window is one window."""
    win = tuple(s if s <= w else w for s, w in zip(hw, window, strict=True))
    sh = tuple(0 if s <= w else t for s, w, t in zip(hw, window, shift, strict=True))
    return win, sh


@functools.cache
def relative_position_index(window: Pair) -> np.ndarray:
    """`[N, N]` int rows of the bias table for token pairs of a window, N = wh * ww.

    Token i sits at (i // ww, i % ww); the pair (i, j) reads row
    `(dy + wh - 1) * (2 ww - 1) + (dx + ww - 1)` with (dy, dx) = pos(i) - pos(j).
    """
    wh, ww = window
    rows, cols = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    dy = rows[:, None] - rows[None, :] + wh - 1
    dx = cols[:, None] - cols[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


def window_partition(x: jax.Array, window: Pair) -> jax.Array:
    """`[B, H, W, C] -> [B * nW, wh * ww, C]`; windows row-major within each image."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows: jax.Array, window: Pair, hw: Pair) -> jax.Array:
    """Inverse of `window_partition`: `[B * nW, wh * ww, C] -> [B, H, W, C]`."""
    (h, w), (wh, ww) = hw, window
    c = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.cache
def shift_regions(hw: Pair, window: Pair, shift: Pair) -> np.ndarray:
    """`[nW, N]` region label of every token of every window of the rolled `hw` map.

    After the roll by `-shift`, the last `shift` rows (columns) came from the top
    (left) edge and the `window - shift` before them from the middle; tokens of one
    window may attend to each other only when their labels agree. A zero shift
    along an axis gives that axis one region.
    """
    img = np.zeros(hw, np.int32)
    label = 0
    for rows in _bands(window[0], shift[0]):
        for cols in _bands(window[1], shift[1]):
            img[rows, cols] = label
            label += 1
    return np.asarray(window_partition(img[None, :, :, None], window))[..., 0]


def _bands(window: int, shift: int) -> tuple[slice, ...]:
    if shift == 0:
        return (slice(None),)
    return slice(0, -window), slice(-window, -shift), slice(-shift, None)


# ------------------------------------------------------------------ transformer


class WindowAttention(nnx.Module):
    """Multi-head self-attention within windows, `[B * nW, N, C] -> [B * nW, N, C]`.

    `qkv` output features are laid out `[3, heads, head_dim]` (PyTorch's reshape), so
    ported weights need only the Linear transpose. Logits `q k^T / sqrt(head_dim)`
    plus the relative position bias (plus the shift mask) go through a float32
    softmax.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Pair,
        *,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        kw = dict(kernel_init=_TRUNC, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads, self.window = num_heads, window
        table = ((2 * window[0] - 1) * (2 * window[1] - 1), num_heads)
        self.relative_position_bias_table = nnx.Param(_TRUNC(rngs.params(), table, param_dtype))
        self.qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)

    def bias(self, n: int) -> jax.Array:
        """`[heads, n, n]` relative position bias for windows of n tokens (float32)."""
        index = relative_position_index(self.window)[:n, :n]  # MONAI's slice for n < N
        table = self.relative_position_bias_table[...]
        return table[index].transpose(2, 0, 1).astype(jnp.float32)

    def __call__(self, x: jax.Array, regions: np.ndarray | None = None) -> jax.Array:
        """`regions`: `[nW, N]` labels from `shift_regions`, or None (no shift)."""
        bw, n, c = x.shape
        hd = c // self.num_heads
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0] * hd**-0.5, qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + self.bias(n)
        if regions is not None:
            nw = regions.shape[0]
            labels = jnp.asarray(regions)
            mask = jnp.where(labels[:, :, None] == labels[:, None, :], 0.0, MASK_VALUE)
            logits = logits.reshape(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            logits = logits.reshape(bw, self.num_heads, n, n)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return self.proj(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(bw, n, c))


class Mlp(nnx.Module):
    """`linear2(gelu(linear1(x)))`, exact GELU (PyTorch's default); `[..., C] -> [..., C]`."""

    def __init__(self, dim: int, hidden: int, *, dtype, param_dtype, rngs) -> None:
        kw = dict(kernel_init=_TRUNC, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear1 = nnx.Linear(dim, hidden, **kw)
        self.linear2 = nnx.Linear(hidden, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(nnx.gelu(self.linear1(x), approximate=False))


class SwinBlock(nnx.Module):
    """(Shifted-)window attention and MLP, pre-norm, `[B, H, W, C] -> [B, H, W, C]`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Pair,
        shift: Pair,
        *,
        mlp_ratio: float,
        drop_path: float,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.window, self.shift = window, shift
        self.norm1 = nnx.LayerNorm(dim, epsilon=LN_EPS, **kw)
        self.attn = WindowAttention(dim, num_heads, window, **kw)
        self.norm2 = nnx.LayerNorm(dim, epsilon=LN_EPS, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)
        # Stochastic depth: one keep/drop draw per sample, scaled by 1 / keep.
        self.drop_path = (
            nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs) if drop_path > 0 else None
        )

    def _drop(self, x: jax.Array) -> jax.Array:
        return x if self.drop_path is None else self.drop_path(x)

    def attention(self, x: jax.Array) -> jax.Array:
        """The attention branch on an already normalised map (no residual)."""
        _, h, w, _ = x.shape
        window, shift = effective_window((h, w), self.window, self.shift)
        pad_h, pad_w = -h % window[0], -w % window[1]
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hw = (h + pad_h, w + pad_w)
        regions = None
        if any(shift):
            x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
            regions = shift_regions(hw, window, shift)
        x = window_reverse(self.attn(window_partition(x, window), regions), window, hw)
        if any(shift):
            x = jnp.roll(x, shift, axis=(1, 2))
        return x[:, :h, :w]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self._drop(self.attention(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))


class PatchMerging(nnx.Module):
    """`[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]`: 2x2 neighbours, LayerNorm, linear.

    Odd sides are zero-padded at the bottom/right. Neighbours are concatenated as
    (row, col) = (0,0), (1,0), (0,1), (1,1), Swin's and MONAI's 2D order.
    """

    def __init__(self, dim: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(4 * dim, epsilon=LN_EPS, **kw)
        self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, kernel_init=_TRUNC, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(jnp.concatenate(parts, axis=-1)))


def _apply_block(block: SwinBlock, x: jax.Array) -> jax.Array:
    return block(x)


class BasicLayer(nnx.Module):
    """One stage: `depth` Swin blocks (odd ones shifted), then patch merging.

    `[B, H, W, C] -> [B, H/2, W/2, 2C]`.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Pair,
        *,
        mlp_ratio: float,
        drop_path: Sequence[float],
        remat: bool,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        shift = (window[0] // 2, window[1] // 2)
        self.remat = remat
        self.blocks = nnx.List(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    window,
                    (0, 0) if i % 2 == 0 else shift,
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_path[i],
                    **kw,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = nnx.remat(_apply_block)(block, x) if self.remat else block(x)
        return self.downsample(x)


class PatchEmbed(nnx.Module):
    """`[B, H, W, C] -> [B, H/p, W/p, D]`: a p x p conv with stride p and bias."""

    def __init__(self, in_channels, dim, patch_size, *, dtype, param_dtype, rngs) -> None:
        p = patch_size
        self.proj = nnx.Conv(
            in_channels, dim, (p, p), strides=(p, p), padding="VALID",
            dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


def _layer_norm_plain(x: jax.Array) -> jax.Array:
    """LayerNorm over channels without scale or bias (MONAI's `proj_out`), float32 stats."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + LN_EPS)).astype(x.dtype)


class SwinTransformer(nnx.Module):
    """`[B, H, W, C] ->` 5 maps: the patch tokens and the 4 stage outputs.

    Map i is `[B, H / (p 2**i), W / (p 2**i), f 2**i]`, layer-normalised without affine
    parameters when `normalize`. Stages are `layers1..layers4`, each an `nnx.List` of
    one `BasicLayer` so that parameter paths read as MONAI's keys (`layers1.0.blocks`).
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        *,
        patch_size: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window: Pair,
        mlp_ratio: float,
        drop_path_rate: float,
        remat: bool,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = PatchEmbed(in_channels, feature_size, patch_size, **kw)
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        for i in range(NUM_STAGES):
            start = sum(depths[:i])
            layer = BasicLayer(
                feature_size * 2**i,
                depths[i],
                num_heads[i],
                window,
                mlp_ratio=mlp_ratio,
                drop_path=rates[start : start + depths[i]],
                remat=remat,
                **kw,
            )
            setattr(self, f"layers{i + 1}", nnx.List([layer]))

    def __call__(self, x: jax.Array, normalize: bool = True) -> list[jax.Array]:
        out = self.patch_embed(x)
        maps = [out]
        for i in range(NUM_STAGES):
            out = getattr(self, f"layers{i + 1}")[0](out)
            maps.append(out)
        return [_layer_norm_plain(m) for m in maps] if normalize else maps


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


# ------------------------------------------------------------------ MONAI weights

# MONAI SwinUNETR state-dict keys -> this model's paths, one to one: "weight" becomes
# "kernel" (Linear and conv layouts transposed, transposed-conv kernels also flipped)
# or, for LayerNorm/affine norms, "scale". The checkpoint's relative_position_index
# buffers are skipped: the model computes the same index (`relative_position_index`)
# from the window size. Instance norms without affine parameters have no keys, and
# batch norm's `num_batches_tracked` has no use here. RGB kernels (patch embedding,
# encoder1) are summed for a one-channel model (`fit="in_channels"`). A MONAI model
# has patch_size 2: patch_embed and decoder1.transp_conv of a patch-4 model then
# report a shape mismatch and keep their initial values.
_BLOCK = r"(swinViT\.layers[1-4]\.0\.blocks\.\d+)\."
_MERGE = r"(swinViT\.layers[1-4]\.0\.downsample)\."
_CONV_BLOCK = r"((?:encoder(?:1|2|3|4|10)\.layer|decoder[1-5]\.conv_block)\."
_LINEARS = r"(attn\.qkv|attn\.proj|mlp\.linear1|mlp\.linear2)"

MONAI_RULES = [
    Rule(
        r"swinViT\.patch_embed\.proj\.weight",
        "swinViT.patch_embed.proj.kernel",
        "conv2d",
        fit="in_channels",
    ),
    Rule(r"swinViT\.patch_embed\.proj\.bias", "swinViT.patch_embed.proj.bias"),
    Rule(_BLOCK + r"(norm[12])\.weight", r"\1.\2.scale"),
    Rule(_BLOCK + r"(norm[12])\.bias", r"\1.\2.bias"),
    Rule(_BLOCK + r"attn\.relative_position_bias_table", r"\1.attn.relative_position_bias_table"),
    Rule(_BLOCK + r"attn\.relative_position_index", None),
    Rule(_BLOCK + _LINEARS + r"\.weight", r"\1.\2.kernel", "linear"),
    Rule(_BLOCK + _LINEARS + r"\.bias", r"\1.\2.bias"),
    Rule(_MERGE + r"norm\.weight", r"\1.norm.scale"),
    Rule(_MERGE + r"norm\.bias", r"\1.norm.bias"),
    Rule(_MERGE + r"reduction\.weight", r"\1.reduction.kernel", "linear"),
    Rule(_CONV_BLOCK + r"conv[123])\.conv\.weight", r"\1.conv.kernel", "conv2d", fit="in_channels"),
    Rule(_CONV_BLOCK + r"norm[123])\.weight", r"\1.scale"),
    Rule(_CONV_BLOCK + r"norm[123])\.bias", r"\1.bias"),
    Rule(_CONV_BLOCK + r"norm[123])\.running_mean", r"\1.mean"),
    Rule(_CONV_BLOCK + r"norm[123])\.running_var", r"\1.var"),
    Rule(_CONV_BLOCK + r"norm[123])\.num_batches_tracked", None),
    Rule(
        r"(decoder[1-5])\.transp_conv\.conv\.weight",
        r"\1.transp_conv.conv.kernel",
        "conv_transpose2d",
    ),
    Rule(r"out\.conv\.conv\.weight", "out.conv.conv.kernel", "conv2d"),
    Rule(r"out\.conv\.conv\.bias", "out.conv.conv.bias"),
]

register_weight_table("swin_unetr_monai", MONAI_RULES, model="swin_unetr")
