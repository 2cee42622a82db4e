"""SAM's image encoder: a ViTDet-style ViT with windowed attention and relative positions.

Patch embedding, a learned absolute position table, blocks with windowed (or global)
attention whose logits get decomposed relative-position biases (MViTv2), then a neck of
1x1 and 3x3 convs with channel LayerNorms. NHWC; submodule names follow
`segment_anything`'s `ImageEncoderViT`, so its checkpoint keys map one to one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.layers import Dtype
from lmjax.models.vit_blocks import LN_EPS, auto_attention


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """`[B, H, W, C] -> ([B * nh * nw, window, window, C], (Hp, Wp))`.

    The grid is zero-padded at the bottom and right to multiples of `window`; the
    padded tokens take part in attention as keys, as in the original.
    """
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: jax.Array, window: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`: `[B * nh * nw, window, window, C] -> [B, H, W, C]`."""
    (hp, wp), (h, w) = pad_hw, hw
    nh, nw = hp // window, wp // window
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, :h, :w]


def resize_rel_pos(table: jax.Array, length: int) -> jax.Array:
    """`[L, C] -> [length, C]` by linear interpolation with half-pixel centres.

    PyTorch's `F.interpolate(mode="linear")` does not antialias; `jax.image.resize`
    does by default, which changes a 127 -> 63 shrink by up to ~1.7.
    """
    if table.shape[0] == length:
        return table
    return jax.image.resize(table, (length, table.shape[1]), "linear", antialias=False)


def rel_pos_lookup(q_size: int, k_size: int, table: jax.Array) -> jax.Array:
    """`[q_size, k_size, C]` rows of `table` for each (query, key) offset along one axis.

    Row `q - k + (k_size - 1)` for equal sizes; coordinates of the shorter axis are
    stretched when the sizes differ, as in ViTDet.
    """
    span = 2 * max(q_size, k_size) - 1
    table = resize_rel_pos(table, span)
    # float32 with truncation, to pick the same rows as the original when sizes differ.
    q = np.arange(q_size, dtype=np.float32)[:, None] * np.float32(max(k_size / q_size, 1.0))
    k = np.arange(k_size, dtype=np.float32)[None, :] * np.float32(max(q_size / k_size, 1.0))
    rel = (q - k) + np.float32((k_size - 1) * max(q_size / k_size, 1.0))
    return table[rel.astype(np.int32)]


def decomposed_rel_pos(
    q: jax.Array,
    rel_pos_h: jax.Array,
    rel_pos_w: jax.Array,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> jax.Array:
    """Additive logit bias `[B, heads, qh * qw, kh * kw]` (float32) from unscaled `q`.

    `q`: `[B, qh * qw, heads, head_dim]`. `bias[.., (y, x), (ky, kx)] = q . Rh[y, ky] +
    q . Rw[x, kx]`; the two terms are kept separate until the final broadcast add.
    """
    (qh, qw), (kh, kw) = q_size, k_size
    b, _, n, c = q.shape
    rh = rel_pos_lookup(qh, kh, rel_pos_h.astype(jnp.float32))
    rw = rel_pos_lookup(qw, kw, rel_pos_w.astype(jnp.float32))
    r_q = q.reshape(b, qh, qw, n, c).astype(jnp.float32)
    bias_h = jnp.einsum("byxnc,ykc->bnyxk", r_q, rh)
    bias_w = jnp.einsum("byxnc,xkc->bnyxk", r_q, rw)
    bias = bias_h[..., :, None] + bias_w[..., None, :]
    return bias.reshape(b, n, qh * qw, kh * kw)


def attend(q, k, v, bias, implementation: str | None) -> jax.Array:
    """`jax.nn.dot_product_attention` with "auto" picking cuDNN where it applies."""
    auto = implementation == "auto"
    impl = auto_attention(q.dtype, q.shape[-1]) if auto else implementation
    if impl == "cudnn" and bias is not None:
        bias = bias.astype(q.dtype)  # the fused kernel wants one dtype
    try:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=impl)
    except (RuntimeError, NotImplementedError, ValueError):
        if not (auto and impl == "cudnn"):
            raise
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")


class MLPBlock(nnx.Module):
    """`lin2(act(lin1(x)))`: the encoder's (exact GELU) and the two-way transformer's (ReLU)."""

    def __init__(self, dim: int, hidden: int, act: Callable, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.lin1 = nnx.Linear(dim, hidden, **kw)
        self.lin2 = nnx.Linear(hidden, dim, **kw)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))


def exact_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # torch's nn.GELU default


class RelPosAttention(nnx.Module):
    """Multi-head self-attention on `[B, H, W, D]` with decomposed relative positions.

    `rel_pos_h`/`rel_pos_w` have `2 * size - 1` rows for the `(H, W)` they were made
    for; another size interpolates them linearly. qkv is laid out `[3, heads, head_dim]`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        input_size: tuple[int, int],
        *,
        implementation: str | None = None,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        head_dim = dim // num_heads
        self.num_heads, self.implementation = num_heads, implementation
        self.qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)
        h, w = input_size
        self.rel_pos_h = nnx.Param(jnp.zeros((2 * h - 1, head_dim), param_dtype))
        self.rel_pos_w = nnx.Param(jnp.zeros((2 * w - 1, head_dim), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, d = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        bias = decomposed_rel_pos(q, self.rel_pos_h[...], self.rel_pos_w[...], (h, w), (h, w))
        out = attend(q, k, v, bias, self.implementation)
        return self.proj(out.reshape(b, h, w, d))


class Block(nnx.Module):
    """`x + attn(norm1(x))` (windowed when `window_size > 0`), then `x + mlp(norm2(x))`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        window_size: int,
        grid: tuple[int, int],
        implementation: str | None,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.window_size = window_size
        size = (window_size, window_size) if window_size > 0 else grid
        self.norm1 = nnx.LayerNorm(dim, epsilon=LN_EPS, use_fast_variance=False, **kw)
        self.attn = RelPosAttention(dim, num_heads, size, implementation=implementation, **kw)
        self.norm2 = nnx.LayerNorm(dim, epsilon=LN_EPS, use_fast_variance=False, **kw)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), exact_gelu, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm1(x)
        if self.window_size > 0:
            hw = y.shape[1:3]
            y, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, pad_hw, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


def _apply_block(block: Block, x: jax.Array) -> jax.Array:
    return block(x)


class PatchEmbed(nnx.Module):
    """`patch x patch` conv with stride `patch`: `[B, H, W, C] -> [B, H/p, W/p, D]`."""

    def __init__(self, in_channels: int, dim: int, patch: int, *, dtype, param_dtype, rngs):
        self.proj = nnx.Conv(
            in_channels,
            dim,
            (patch, patch),
            (patch, patch),
            padding="VALID",
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class ImageEncoderViT(nnx.Module):
    """`images [B, H, W, C] -> embeddings [B, H/patch, W/patch, out_chans]`.

    `global_attn_indexes` name the blocks with global attention; the others attend
    within `window_size` windows. The input must have the size the model was built for
    (the absolute position table is not resized). `remat` recomputes each block in the
    backward pass; `attention` is `jax.nn.dot_product_attention`'s implementation
    (None: XLA, which keeps the relative-position bias in float32; "auto"; "cudnn").
    """

    def __init__(
        self,
        *,
        image_size: tuple[int, int],
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
        remat: bool = False,
        attention: str | None = None,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        self.remat, self.dtype = remat, dtype
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size, **kw)
        self.pos_embed = nnx.Param(jnp.zeros((1, *self.grid, embed_dim), param_dtype))
        self.blocks = nnx.List(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    window_size=0 if i in global_attn_indexes else window_size,
                    grid=self.grid,
                    implementation=attention,
                    **kw,
                )
                for i in range(depth)
            ]
        )
        conv = dict(use_bias=False, **kw)
        norm = dict(epsilon=LN_EPS, use_fast_variance=False, **kw)  # LayerNorm2d's eps
        self.neck = nnx.List(
            [
                nnx.Conv(embed_dim, out_chans, (1, 1), **conv),
                nnx.LayerNorm(out_chans, **norm),
                nnx.Conv(out_chans, out_chans, (3, 3), padding=((1, 1), (1, 1)), **conv),
                nnx.LayerNorm(out_chans, **norm),
            ]
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.patch_embed(images.astype(self.dtype))
        if x.shape[1:3] != self.grid:
            raise ValueError(
                f"SAM encoder built for a {self.grid} token grid got {x.shape[1:3]} "
                f"(input {images.shape[1:3]})"
            )
        x = x + self.pos_embed[...].astype(x.dtype)
        for block in self.blocks:
            x = nnx.remat(_apply_block)(block, x) if self.remat else block(x)
        for layer in self.neck:
            x = layer(x)
        return x
