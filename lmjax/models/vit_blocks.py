"""The ViT pieces `lmjax.models.vit` builds its encoder from.

The token grid of a padded patch embedding, fixed 2D sine-cosine position
embeddings, multi-head self-attention (`jax.nn.dot_product_attention`, with the
choice of its implementation) and the pre-norm transformer block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype

LN_EPS = 1e-6  # the ViT/Sapiens LayerNorm epsilon
TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def token_grid(input_size: int | Sequence[int], patch_size: int, padding: int) -> tuple[int, int]:
    """`(gh, gw)` tokens for an `(H, W)` input (sides must be multiples of `patch_size`)."""
    h, w = _hw(input_size)
    if h % patch_size or w % patch_size:
        raise ValueError(f"ViT input {h} x {w} must have sides divisible by {patch_size}")
    side = lambda n: (n + 2 * padding - patch_size) // patch_size + 1
    return side(h), side(w)


def sincos_2d(grid: tuple[int, int], width: int, *, temperature: float = 10000.0) -> jax.Array:
    """Fixed 2D sine-cosine embeddings `[1, gh, gw, width]` (MAE layout: y half, x half)."""
    if width % 4:
        raise ValueError(f"sincos position embeddings need width divisible by 4, got {width}")
    gh, gw = grid
    omega = 1.0 / temperature ** (jnp.arange(width // 4, dtype=jnp.float32) / (width // 4))
    y = jnp.arange(gh, dtype=jnp.float32)[:, None] * omega  # [gh, width/4]
    x = jnp.arange(gw, dtype=jnp.float32)[:, None] * omega
    ey = jnp.concatenate([jnp.sin(y), jnp.cos(y)], axis=-1)  # [gh, width/2]
    ex = jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)
    emb = jnp.concatenate(
        [
            jnp.broadcast_to(ey[:, None], (gh, gw, width // 2)),
            jnp.broadcast_to(ex[None], (gh, gw, width // 2)),
        ],
        axis=-1,
    )
    return emb[None]


def auto_attention(dtype: Any, head_dim: int, backend: str | None = None) -> str:
    """The `dot_product_attention` implementation "auto" picks on `backend`.

    cuDNN's fused kernel never holds the N x N logits in memory, which the ViT-B/L
    configs at 1024 x 768 (3072 tokens) need on a GPU; it takes bf16/fp16 and head
    widths that are multiples of 8 up to 128. Everything else runs XLA's version.
    """
    backend = backend or jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend in ("gpu", "cuda") and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


class Attention(nnx.Module):
    """Multi-head self-attention, `[B, N, D] -> [B, N, D]`; `qkv` and `proj` are Linears.

    The qkv output is laid out `[3, heads, head_dim]` per token, as timm/mmpretrain do,
    so ported kernels fit without permutation.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        implementation: str | None = None,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        kw = dict(kernel_init=TRUNC_NORMAL, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads, self.implementation = num_heads, implementation
        self.qkv = nnx.Linear(width, 3 * width, **kw)
        self.proj = nnx.Linear(width, width, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        auto = self.implementation == "auto"
        impl = auto_attention(q.dtype, q.shape[-1]) if auto else self.implementation
        try:
            out = jax.nn.dot_product_attention(q, k, v, implementation=impl)
        except (RuntimeError, NotImplementedError, ValueError):
            if not (auto and impl == "cudnn"):
                raise
            # "auto" on a GPU whose cuDNN lacks the fused kernel: XLA's version.
            out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        return self.proj(out.reshape(b, n, d))


class Block(nnx.Module):
    """Pre-norm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float,
        *,
        attention: str | None = "auto",
        dtype,
        param_dtype,
        rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        hidden = int(width * mlp_ratio)
        self.norm1 = nnx.LayerNorm(width, epsilon=LN_EPS, **kw)
        self.attn = Attention(width, num_heads, implementation=attention, **kw)
        self.norm2 = nnx.LayerNorm(width, epsilon=LN_EPS, **kw)
        self.fc1 = nnx.Linear(width, hidden, kernel_init=TRUNC_NORMAL, **kw)
        self.fc2 = nnx.Linear(hidden, width, kernel_init=TRUNC_NORMAL, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=False))
