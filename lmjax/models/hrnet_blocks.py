"""HRNet's building blocks (`lmjax.models.hrnet` assembles them).

Conv-BN(-ReLU), the ResNet basic block and bottleneck, the fusion paths between
branches of different resolution (1x1 conv and nearest upsampling into a finer
branch, stride-2 3x3 convs into a coarser one), the multi-resolution module and the
transition that adds a branch. Batch norms use PyTorch's momentum and epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype, he_normal

BOTTLENECK_EXPANSION = 4
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1: running = 0.9 * running + 0.1 * batch


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """`[B, H, W, C] -> [B, f H, f W, C]`, each pixel copied to an f x f block."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, factor * h, factor * w, c)


class Identity(nnx.Module):
    """`x -> x`: the fusion of a branch with itself, a transition that keeps a branch."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class ConvBN(nnx.Module):
    """k x k conv (symmetric `k // 2` padding, no bias) -> batch norm [-> ReLU]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 3,
        strides: int = 1,
        relu: bool = True,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        pad = kernel_size // 2
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            strides=(strides, strides),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=he_normal(0.0),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.norm = nnx.BatchNorm(
            out_features,
            momentum=BN_MOMENTUM,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.relu = relu

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(self.conv(x))
        return jax.nn.relu(x) if self.relu else x


class ResidualBlock(nnx.Module):
    """ResNet basic block: conv-BN-ReLU, conv-BN, plus the skip, then ReLU.

    The skip is the identity when shapes allow (`in_features == out_features`,
    stride 1), else a 1x1 conv-BN. HRNet's branches and the decoders use it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = ConvBN(in_features, out_features, strides=strides, **kw)
        self.conv2 = ConvBN(out_features, out_features, relu=False, **kw)
        if strides == 1 and in_features == out_features:
            self.skip = Identity()
        else:
            self.skip = ConvBN(
                in_features, out_features, kernel_size=1, strides=strides, relu=False, **kw
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.conv2(self.conv1(x)) + self.skip(x))


class Bottleneck(nnx.Module):
    """ResNet bottleneck: 1x1, 3x3, 1x1 (x4 channels) conv-BN, skip, ReLU (HRNet stage 1)."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        out = planes * BOTTLENECK_EXPANSION
        self.conv1 = ConvBN(in_features, planes, kernel_size=1, **kw)
        self.conv2 = ConvBN(planes, planes, **kw)
        self.conv3 = ConvBN(planes, out, kernel_size=1, relu=False, **kw)
        if in_features == out:
            self.skip = Identity()
        else:
            self.skip = ConvBN(in_features, out, kernel_size=1, relu=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.conv3(self.conv2(self.conv1(x))) + self.skip(x))


class FuseUp(nnx.Module):
    """Branch j into a finer branch i: 1x1 conv-BN, nearest upsampling by `factor`."""

    def __init__(self, in_features: int, out_features: int, factor: int, **kw: Any) -> None:
        self.proj = ConvBN(in_features, out_features, kernel_size=1, relu=False, **kw)
        self.factor = factor

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_nearest(self.proj(x), self.factor)


class FuseDown(nnx.Module):
    """Branch j into a coarser branch i: i - j stride-2 3x3 conv-BN, ReLU between them."""

    def __init__(self, in_features: int, out_features: int, steps: int, **kw: Any) -> None:
        self.convs = nnx.List(
            [
                ConvBN(
                    in_features,
                    out_features if s == steps - 1 else in_features,
                    strides=2,
                    relu=s < steps - 1,
                    **kw,
                )
                for s in range(steps)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = conv(x)
        return x


def _fuse_layer(channels: Sequence[int], j: int, i: int, kw: dict[str, Any]) -> nnx.Module:
    """The path from branch j to branch i of a module's fusion."""
    if j == i:
        return Identity()
    if j > i:
        return FuseUp(channels[j], channels[i], 2 ** (j - i), **kw)
    return FuseDown(channels[j], channels[i], i - j, **kw)


class HighResolutionModule(nnx.Module):
    """Parallel branches of residual blocks, then the exchange between resolutions.

    `[x_b [B, H / 2**b, W / 2**b, channels[b]] for b] -> the same list` (or only the
    finest entry when not `multi_scale_output`).
    """

    def __init__(
        self,
        channels: Sequence[int],
        num_blocks: int,
        *,
        multi_scale_output: bool = True,
        **kw: Any,
    ) -> None:
        n = len(channels)
        self.branches = nnx.List(
            [nnx.List([ResidualBlock(c, c, **kw) for _ in range(num_blocks)]) for c in channels]
        )
        outputs = range(n if multi_scale_output else 1)
        self.fuse = nnx.List(
            [nnx.List([_fuse_layer(channels, j, i, kw) for j in range(n)]) for i in outputs]
        )

    def __call__(self, xs: list[jax.Array]) -> list[jax.Array]:
        ys = []
        for branch, x in zip(self.branches, xs, strict=True):
            for block in branch:
                x = block(x)
            ys.append(x)
        if len(ys) == 1:
            return ys
        return [jax.nn.relu(sum(f(y) for f, y in zip(row, ys, strict=True))) for row in self.fuse]


class Transition(nnx.Module):
    """Stage s-1's branches -> stage s's, which has one more, coarser branch.

    Existing branch b: identity, or a 3x3 conv-BN-ReLU when its width changes (the
    256-channel stage-1 output). New branch: a stride-2 3x3 conv-BN-ReLU from the
    coarsest existing branch.
    """

    def __init__(self, previous: Sequence[int], current: Sequence[int], **kw: Any) -> None:
        if len(current) != len(previous) + 1:
            raise ValueError(f"a transition adds one branch: {previous} -> {current}")
        layers: list[nnx.Module] = [
            Identity() if p == c else ConvBN(p, c, **kw)
            for p, c in zip(previous, current, strict=False)
        ]
        layers.append(ConvBN(previous[-1], current[-1], strides=2, **kw))
        self.layers = nnx.List(layers)

    def __call__(self, xs: list[jax.Array]) -> list[jax.Array]:
        return [layer(x) for layer, x in zip(self.layers, [*xs, xs[-1]], strict=True)]
