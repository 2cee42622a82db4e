"""Small layers shared by the model families. NHWC throughout.

`dtype` is the compute dtype (e.g. `jnp.bfloat16`), `param_dtype` the storage dtype
of the parameters (float32): mixed precision is these two arguments, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose

Dtype = Any

LEAKY_SLOPE = 0.01  # nnU-Net's leaky ReLU negative slope


def he_normal(negative_slope: float = LEAKY_SLOPE) -> nnx.Initializer:
    """He (Kaiming) normal init for a leaky ReLU, fan-in mode, as nnU-Net initialises."""
    return nnx.initializers.variance_scaling(2.0 / (1.0 + negative_slope**2), "fan_in", "normal")


NORMS = ("instance", "batch", "none")
BATCH_NORM_MOMENTUM = 0.9  # PyTorch's BatchNorm momentum 0.1 in Flax's convention


class ConvNormAct(nnx.Module):
    """Conv (k x k, 'same'-style symmetric padding) -> norm -> leaky ReLU.

    `[B, H, W, in_features] -> [B, ceil(H / strides), ceil(W / strides), out_features]`.

    `norm`: "instance" (nnU-Net's: per sample and channel over H, W, affine),
    "batch" (over B, H, W; running statistics for evaluation, PyTorch's momentum
    and epsilon, as nnU-Net's batch-norm variant) or "none" (conv with bias, then
    the activation; `self.norm` is None).

    With a norm the conv has no bias: the norm subtracts the per-channel mean right
    after, so a bias would be cancelled exactly (a parameter with zero gradient).
    Padding is `k // 2` on both sides, as PyTorch pads, so a stride-2 conv samples
    input pixels 0, 2, 4, ... (Flax's 'SAME' would pad only at the end and sample
    1, 3, 5, ...).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 3,
        strides: int = 1,
        norm: Literal["instance", "batch", "none"] = "instance",
        negative_slope: float = LEAKY_SLOPE,
        epsilon: float = 1e-5,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        pad = kernel_size // 2
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size=(kernel_size, kernel_size),
            strides=(strides, strides),
            padding=((pad, pad), (pad, pad)),
            use_bias=norm == "none",
            kernel_init=he_normal(negative_slope),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        kw = dict(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Statistics in float32 (Flax promotes bf16 inputs); scale and bias per
        # channel; epsilon 1e-5 as PyTorch/nnU-Net.
        if norm == "instance":
            self.norm = nnx.InstanceNorm(out_features, **kw)
        elif norm == "batch":
            self.norm = nnx.BatchNorm(out_features, momentum=BATCH_NORM_MOMENTUM, **kw)
        else:
            self.norm = None
        self.negative_slope = negative_slope

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return nnx.leaky_relu(x, self.negative_slope)


class ConvBlock(nnx.Module):
    """Two `ConvNormAct` in a row; the first may be strided (nnU-Net's downsampling).

    `[B, H, W, in_features] -> [B, H / strides, W / strides, out_features]`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        norm: Literal["instance", "batch", "none"] = "instance",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(norm=norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.first = ConvNormAct(in_features, out_features, strides=strides, **kw)
        self.second = ConvNormAct(out_features, out_features, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.second(self.first(x))


def upsample2x_nearest(x: jax.Array) -> jax.Array:
    """`[B, H, W, C] -> [B, 2H, 2W, C]`, each pixel copied to a 2 x 2 block."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def _bilinear2x_axis(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    return out.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1 :])


def upsample2x_bilinear(x: jax.Array) -> jax.Array:
    """`[B, H, W, C] -> [B, 2H, 2W, C]` bilinear, half-pixel centres, edges clamped.

    Equals `jax.image.resize(x, ..., "bilinear")` (and PyTorch's `align_corners=False`)
    for a factor of exactly 2, written as shifted weighted sums: those fuse into one
    elementwise kernel, where the general resize builds dense interpolation matrices.
    """
    return _bilinear2x_axis(_bilinear2x_axis(x, 1), 2)


class Upsample(nnx.Module):
    """Doubles H and W and maps `in_features` to `out_features` channels.

    `[B, H, W, in_features] -> [B, 2H, 2W, out_features]`.

    mode="transpose": transposed conv, kernel 2, stride 2 (nnU-Net).
    mode="resize": `resize_method` ("bilinear" | "nearest") upsampling by 2 and a
      `resize_kernel` x `resize_kernel` conv (1 or 3), because transposed convolutions
      are slow under XLA on GPU. A 1 x 1 conv is applied before the resize: both are
      linear, one per pixel and one per channel, so they commute, and the conv then
      runs on 4x fewer pixels. A 3 x 3 conv runs after the resize.
    No bias: the result is concatenated with a skip and fed to a conv + instance norm.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        mode: Literal["transpose", "resize"] = "transpose",
        resize_method: Literal["bilinear", "nearest"] = "bilinear",
        resize_kernel: int = 1,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if mode not in ("transpose", "resize"):
            raise ValueError(f"upsample mode must be 'transpose' or 'resize', got {mode!r}")
        if resize_method not in ("bilinear", "nearest"):
            raise ValueError(
                f"resize_method must be 'bilinear' or 'nearest', got {resize_method!r}"
            )
        if resize_kernel not in (1, 3):
            raise ValueError(f"resize_kernel must be 1 or 3, got {resize_kernel!r}")
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        self.resize_method = resize_method
        self.resize_kernel = resize_kernel
        if mode == "transpose":
            self.conv = ConvTranspose(
                in_features, out_features, kernel_size=(2, 2), strides=(2, 2), padding="VALID", **kw
            )
        else:
            k, pad = resize_kernel, resize_kernel // 2
            self.conv = nnx.Conv(
                in_features, out_features, (k, k), padding=((pad, pad), (pad, pad)), **kw
            )

    def _resize(self, x: jax.Array) -> jax.Array:
        if self.resize_method == "nearest":
            return upsample2x_nearest(x)
        return upsample2x_bilinear(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "transpose":
            return self.conv(x)
        if self.resize_kernel == 1:
            return self._resize(self.conv(x))
        return self.conv(self._resize(x))


# --------------------------------------------------- Keras-style blocks (cephalogram paper)

KERAS_BN_EPSILON = 1e-3  # tf.keras BatchNormalization defaults: epsilon 1e-3, momentum 0.99
KERAS_BN_MOMENTUM = 0.99


def keras_batch_norm(
    features: int,
    *,
    momentum: float = KERAS_BN_MOMENTUM,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """Batch norm over B, H, W with tf.keras's defaults (epsilon 1e-3, momentum 0.99).

    Each training step sets the running statistics to `momentum * running + (1 -
    momentum) * batch`. Statistics are computed in float32 even for bf16 inputs (Flax
    promotes them).
    """
    return nnx.BatchNorm(
        features,
        momentum=momentum,
        epsilon=KERAS_BN_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class ConvReluBNBlock(nnx.Module):
    """`num_convs` 3x3 convs with bias and ReLU, batch norm between consecutive convs.

    `[B, H, W, in_features] -> [B, H, W, out_features]`.

    The cephalogram paper's block, written as tf.keras layers: `Conv2D(activation="relu",
    kernel_initializer="he_normal", padding="same")`, then `BatchNormalization()`, then
    the next conv; with `norm_last` a batch norm also follows the last conv (the FPN's
    ConvBlock). The convs keep their bias: a ReLU, not a norm, comes right after them.
    He normal is Keras's: truncated normal, variance 2 / fan_in.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_convs: int = 2,
        norm_last: bool = False,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.convs = nnx.List(
            [
                nnx.Conv(
                    in_features if i == 0 else out_features,
                    out_features,
                    kernel_size=(3, 3),
                    padding=((1, 1), (1, 1)),
                    kernel_init=nnx.initializers.he_normal(),
                    **kw,
                )
                for i in range(num_convs)
            ]
        )
        num_norms = num_convs if norm_last else num_convs - 1
        self.norms = nnx.List(
            [keras_batch_norm(out_features, momentum=bn_momentum, **kw) for _ in range(num_norms)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, conv in enumerate(self.convs):
            x = nnx.relu(conv(x))
            if i < len(self.norms):
                x = self.norms[i](x)
        return x


def max_pool2x(x: jax.Array) -> jax.Array:
    """`[B, H, W, C] -> [B, H // 2, W // 2, C]`, the maximum of each 2 x 2 block."""
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def size_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """`(H, W)` from a model's `input_size`: an int (square) or a pair."""
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def check_divisible(h: int, w: int, factor: int, what: str) -> None:
    """ValueError naming `what` unless both `h` and `w` are multiples of `factor`."""
    if h % factor or w % factor:
        raise ValueError(f"{what} needs H and W divisible by {factor}, got {h} x {w}")
