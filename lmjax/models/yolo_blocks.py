"""YOLO11 building blocks in Flax NNX, NHWC (`lmjax.models.yolo` assembles them).

A clean-room port written from the architecture description in the project's design
brief (`shared/design/cascade.md` section 4.1, which summarises Ultralytics 8.4's
YOLO11): Conv-BN-SiLU, depthwise conv, the bottleneck, C2f / C3k2 / C3k, SPPF, and the
position-sensitive attention of C2PSA. No Ultralytics code was copied.

Submodules carry the original names (`cv1`, `cv2`, `cv3`, `m`, `attn`, `qkv`, `proj`,
`pe`, `ffn`, `conv`, `bn`), and lists are `nnx.List`s indexed like PyTorch's
`Sequential`/`ModuleList`, so a checkpoint key such as `model.2.m.0.cv1.conv.weight`
maps to `model.2.m.0.cv1.conv.kernel` by renaming leaves (weight -> kernel with
OIHW -> HWIO, bn weight -> scale, running_mean/var -> mean/var). Channels are
concatenated and split on the last axis in the same order as PyTorch does on axis 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97  # PyTorch momentum 0.03: running = 0.97 * running + 0.03 * batch


def torch_conv_init() -> nnx.Initializer:
    """PyTorch's default conv weight init (kaiming uniform, a = sqrt 5): U(+-1/sqrt(fan_in))."""
    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Conv(nnx.Module):
    """Conv2d (k x k, stride s, padding k // 2, no bias) -> BatchNorm -> SiLU (if `act`).

    `[B, H, W, c1] -> [B, ceil(H / s), ceil(W / s), c2]`; `groups` splits the channels
    as PyTorch's `groups` (the kernel is `[k, k, c1 // groups, c2]`).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        *,
        groups: int = 1,
        act: bool = True,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        pad = k // 2
        self.conv = nnx.Conv(
            c1,
            c2,
            (k, k),
            strides=(s, s),
            padding=((pad, pad), (pad, pad)),
            feature_group_count=groups,
            use_bias=False,
            kernel_init=torch_conv_init(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            c2,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(self.conv(x))
        return jax.nn.silu(x) if self.act else x


def DWConv(c1: int, c2: int, k: int = 1, s: int = 1, *, act: bool = True, **kw) -> Conv:
    """Depthwise(-style) `Conv`: `groups = gcd(c1, c2)` (fully depthwise when c1 == c2)."""
    return Conv(c1, c2, k, s, groups=math.gcd(c1, c2), act=act, **kw)


class Bottleneck(nnx.Module):
    """`cv1` k0 x k0 conv to `int(c2 * e)`, `cv2` k1 x k1 conv to c2, plus x when
    `shortcut` and c1 == c2."""

    def __init__(
        self,
        c1: int,
        c2: int,
        *,
        shortcut: bool = True,
        k: Sequence[int] = (3, 3),
        e: float = 0.5,
        **kw,
    ) -> None:
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], **kw)
        self.cv2 = Conv(hidden, c2, k[1], **kw)
        self.add = shortcut and c1 == c2

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nnx.Module):
    """C3 block: `cv3(cat(m(cv1(x)), cv2(x)))` with hidden `int(c2 * e)` channels and `n`
    Bottlenecks (k x k, k x k, e = 1.0) in `m`."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 2,
        *,
        shortcut: bool = True,
        e: float = 0.5,
        k: int = 3,
        **kw,
    ) -> None:
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, **kw)
        self.cv2 = Conv(c1, hidden, 1, **kw)
        self.cv3 = Conv(2 * hidden, c2, 1, **kw)
        self.m = nnx.List(
            [Bottleneck(hidden, hidden, shortcut=shortcut, k=(k, k), e=1.0, **kw) for _ in range(n)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv1(x)
        for block in self.m:
            y = block(y)
        return self.cv3(jnp.concatenate([y, self.cv2(x)], axis=-1))


class C2f(nnx.Module):
    """CSP block with two convs: `cv1` 1x1 to 2c (c = `int(c2 * e)`), split into halves
    (a, b); each of the `n` blocks in `m` is applied to the last chunk and appended;
    `cv2` 1x1 maps the `(2 + n) c` concatenation to c2.

    Plain C2f's inner block is Bottleneck(c, c, k=(3, 3), e=1.0); `C3k2` changes it.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        *,
        shortcut: bool = False,
        e: float = 0.5,
        **kw,
    ) -> None:
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, **kw)
        self.cv2 = Conv((2 + n) * self.c, c2, 1, **kw)
        self.m = nnx.List([self._inner(shortcut, kw) for _ in range(n)])

    def _inner(self, shortcut: bool, kw: dict) -> nnx.Module:
        return Bottleneck(self.c, self.c, shortcut=shortcut, k=(3, 3), e=1.0, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv1(x)
        chunks = [y[..., : self.c], y[..., self.c :]]
        for block in self.m:
            chunks.append(block(chunks[-1]))
        return self.cv2(jnp.concatenate(chunks, axis=-1))


class C3k2(C2f):
    """YOLO11's C2f variant: the inner blocks are Bottleneck(c, c, k=(3, 3), e=0.5), or
    C3k(c, c, n=2) when `c3k`. The shortcut defaults to on."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        *,
        c3k: bool = False,
        e: float = 0.5,
        shortcut: bool = True,
        **kw,
    ) -> None:
        self.c3k = c3k
        super().__init__(c1, c2, n, shortcut=shortcut, e=e, **kw)

    def _inner(self, shortcut: bool, kw: dict) -> nnx.Module:
        if self.c3k:
            return C3k(self.c, self.c, 2, shortcut=shortcut, **kw)
        return Bottleneck(self.c, self.c, shortcut=shortcut, k=(3, 3), e=0.5, **kw)


def max_pool_same(x: jax.Array, k: int) -> jax.Array:
    """k x k max pool, stride 1, padding k // 2 with -inf (PyTorch's MaxPool2d padding)."""
    pad = k // 2
    # A Python scalar init lets JAX see the max monoid, which it can differentiate
    # under jit (an array init cannot be linearised there).
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, k, k, 1),
        (1, 1, 1, 1),
        ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


class SPPF(nnx.Module):
    """Spatial pyramid pooling, fast: `cv1` 1x1 (with SiLU) to c1 // 2, three chained
    k x k stride-1 max pools, concatenation of the four maps, `cv2` 1x1 to c2."""

    def __init__(self, c1: int, c2: int, k: int = 5, **kw) -> None:
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, **kw)
        self.cv2 = Conv(4 * hidden, c2, 1, **kw)
        self.k = k

    def __call__(self, x: jax.Array) -> jax.Array:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(max_pool_same(ys[-1], self.k))
        return self.cv2(jnp.concatenate(ys, axis=-1))


class Attention(nnx.Module):
    """Multi-head self-attention over all pixels, with a depthwise positional conv.

    heads = `num_heads`, head_dim = c // heads, key_dim = int(head_dim * attn_ratio).
    `qkv` (1x1, no act) gives c + 2 heads key_dim channels, grouped per head as
    `[q (key_dim), k (key_dim), v (head_dim)]`. Per head: attn = softmax over keys of
    `(q scale)^T k` (scale = key_dim^-1/2), out = v attn^T; the heads' outputs and v
    are laid back to c channels head-major, `pe` (3x3 depthwise, no act) of v is added,
    and `proj` (1x1, no act) maps the sum.
    """

    def __init__(self, c: int, num_heads: int, *, attn_ratio: float = 0.5, **kw) -> None:
        self.num_heads = num_heads
        self.head_dim = c // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = Conv(c, c + 2 * num_heads * self.key_dim, 1, act=False, **kw)
        self.proj = Conv(c, c, 1, act=False, **kw)
        self.pe = Conv(c, c, 3, groups=c, act=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        nh, kd, hd = self.num_heads, self.key_dim, self.head_dim
        qkv = self.qkv(x).reshape(b, h * w, nh, 2 * kd + hd)
        q, k, v = qkv[..., :kd], qkv[..., kd : 2 * kd], qkv[..., 2 * kd :]
        logits = jnp.einsum("bqnd,bknd->bnqk", q * self.scale, k)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bknd,bnqk->bqnd", v, attn).reshape(b, h, w, c)
        return self.proj(out + self.pe(v.reshape(b, h, w, c)))


class PSABlock(nnx.Module):
    """`x + attn(x)`, then `+ ffn(.)` with ffn = Conv1x1(c -> 2c, SiLU), Conv1x1(2c -> c)."""

    def __init__(self, c: int, num_heads: int, *, attn_ratio: float = 0.5, **kw) -> None:
        self.attn = Attention(c, num_heads, attn_ratio=attn_ratio, **kw)
        self.ffn = nnx.List([Conv(c, 2 * c, 1, **kw), Conv(2 * c, c, 1, act=False, **kw)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(x)
        y = x
        for layer in self.ffn:
            y = layer(y)
        return x + y


def psa_heads(c: int) -> int:
    """Heads of C2PSA's attention on c channels: c // 64, at least 1.

    The floor of 1 only matters for widths below YOLO11-n's (c < 64), which the
    original does not support (it would divide by zero heads).
    """
    return max(c // 64, 1)


class C2PSA(nnx.Module):
    """`cv1` 1x1 to 2c (c = `int(c1 * e)`), split (a, b); b through `n` PSABlocks in `m`
    (c // 64 heads); `cv2` 1x1 of cat(a, b) back to c1 (c2 must equal c1)."""

    def __init__(self, c1: int, c2: int, n: int = 1, *, e: float = 0.5, **kw) -> None:
        if c1 != c2:
            raise ValueError(f"C2PSA keeps its width: c1 = {c1} != c2 = {c2}")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, **kw)
        self.cv2 = Conv(2 * self.c, c1, 1, **kw)
        heads = psa_heads(self.c)
        self.m = nnx.List([PSABlock(self.c, heads, attn_ratio=0.5, **kw) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv1(x)
        a, b = y[..., : self.c], y[..., self.c :]
        for block in self.m:
            b = block(b)
        return self.cv2(jnp.concatenate([a, b], axis=-1))
