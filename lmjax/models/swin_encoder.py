"""The Swin transformer encoder of Swin-UNETR (`SwinUNETR.swinViT`), 2D and NHWC.

MONAI's `SwinTransformer` with spatial_dims=2. A `patch_size` x `patch_size` conv
with stride `patch_size` (bias, no norm) gives tokens at H/p x W/p with
`feature_size` = f channels. Four stages `layers1..4`; stage i runs `depths[i]` Swin
blocks at width f * 2**i and ends with patch merging (2 x 2 neighbours concatenated
in the order (0,0), (1,0), (0,1), (1,1) as (row, col), LayerNorm, linear 4C -> 2C
without bias), so stage i's output is at H / (p 2**(i+1)) with f 2**(i+1) channels;
MONAI merges after stage 4 too. A Swin block is pre-norm: `x + attn(ln1(x))`,
`x + mlp(ln2(x))` (LayerNorm eps 1e-5, MLP `linear1` -> exact GELU -> `linear2` with
`mlp_ratio * C` hidden units). Attention runs in non-overlapping `window_size` x
`window_size` windows with a learned relative position bias (a `(2w-1)**2 x heads`
table indexed by the relative offsets); odd-numbered blocks of a stage shift the map
by `window_size // 2` first (cyclic roll up-left), and tokens that come from
different regions of the unrolled map get -100 added to their logits (Swin's mask).
A map that is not a multiple of the window is zero-padded at the bottom and right
after `norm1` (the padded tokens take part in attention as Swin and MONAI let them)
and cropped after; along a side no longer than the window, the window shrinks to the
side and that side is not shifted. With a shrunk window MONAI indexes the bias with
the top-left `n x n` block of the full window's index; so does this model, to give a
ported model the same outputs. The stage inputs and outputs (5 maps, H/p .. H/(16p))
are layer-normalised without affine parameters (MONAI's `normalize=True`).

Initialisation is Swin's (truncated normal 0.02, zero biases), not PyTorch's
defaults; `remat=True` recomputes each Swin block in the backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.layers import Dtype

NUM_STAGES = 4
LN_EPS = 1e-5  # PyTorch's LayerNorm/InstanceNorm default, which MONAI keeps
MASK_VALUE = -100.0  # Swin's additive logit between tokens of different shift regions

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
