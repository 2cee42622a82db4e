"""YOLO11 detector in Flax NNX (registered as "yolo11"): backbone, PAN neck, Detect head.

A clean-room port written from the architecture description in the project's design
brief (`shared/design/cascade.md` section 4.1, summarising Ultralytics 8.4's YOLO11
detection model); no Ultralytics code was copied and no weights are shipped.

Channels are `make_divisible(min(c, max_channels) * width, 8)` of the base widths
64..1024, repeats `max(round(n * depth), 1)`; scale n (depth 0.50, width 0.25) gives:

  0  Conv in->16 s2        1  Conv 16->32 s2         2  C3k2 32->64 (e 0.25)
  3  Conv 64->64 s2        4  C3k2 64->128 (e 0.25) (P3)
  5  Conv 128->128 s2      6  C3k2 128->128 c3k     (P4)
  7  Conv 128->256 s2      8  C3k2 256->256 c3k     9  SPPF 256 (k 5)
  10 C2PSA 256 (P5)
  11 upsample x2  12 cat(11, 6)  13 C3k2 384->128
  14 upsample x2  15 cat(14, 4)  16 C3k2 256->64               -> Detect level 0 (stride 8)
  17 Conv 64->64 s2   18 cat(17, 13)  19 C3k2 192->128         -> level 1 (stride 16)
  20 Conv 128->128 s2 21 cat(20, 10)  22 C3k2 384->256 c3k     -> level 2 (stride 32)
  23 Detect

`self.model` is an `nnx.List` indexed like that, so checkpoint keys `model.{i}...`
map by renaming leaves (see `lmjax.models.yolo_blocks`). Detect (decoupled,
anchor-free), per level l with input channels x: `cv2[l]` = Conv3x3(c2), Conv3x3(c2),
Conv2d 1x1 -> 4 * 16 (with bias); `cv3[l]` = [DWConv3x3(x), Conv1x1(c3)],
[DWConv3x3(c3), Conv1x1(c3)], Conv2d 1x1 -> nc (with bias); c2 = max(16, ch0 // 4,
64), c3 = max(ch0, min(nc, 100)). Biases start at 2.0 (box) and log(5 / nc /
(640 / stride)^2) (class). The frozen `dfl` arange(16) conv is not a parameter
here: `dfl_decode` takes the expectation instead.

Output contract, `model(images [B, H, W, C])` with H, W divisible by 32 ->

  "box_dist" [B, A, 64] float32: raw DFL logits; channel `4 * 16` is side-major,
             `side * 16 + bin`, sides (left, top, right, bottom) distances from the
             anchor in units of the anchor's stride (bins 0..15)
  "cls"      [B, A, nc] float32: class logits (sigmoid gives per-class scores)
  "anchors"  [A, 2] float32: anchor (x, y) = (col + 0.5, row + 0.5) * stride, input px
  "strides"  [A] float32: each anchor's stride (8, 16 or 32)
  "boxes"    [B, nc, 4] each class's best box (per-class top-1; NaN when its score is
             below `score_threshold`), "scores" [B, nc], "found" [B, nc], and
             "coords" [B, nc, 2] the boxes' centres (the paper's pilot landmark)

A = sum over levels of (H / s) (W / s); levels are concatenated in stride order (8,
16, 32), each level's cells row-major (row outer, column inner), as Ultralytics
flattens its NCHW maps. The model's outputs thus equal its `[B, 4*16 + nc, A]`
prediction transposed and split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.hrnet_blocks import upsample_nearest
from lmjax.models.layers import Dtype
from lmjax.models.registry import register_model
from lmjax.models.yolo_blocks import C2PSA, SPPF, C3k2, Conv, DWConv, torch_conv_init
from lmjax.ops.detection import top1_per_class

REG_MAX = 16
STRIDES = (8, 16, 32)
# scale: (depth, width, max_channels)
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.50, 0.25, 1024),
    "s": (0.50, 0.50, 1024),
}


def make_divisible(x: float, divisor: int = 8) -> int:
    """The smallest multiple of `divisor` that is >= x."""
    return int(math.ceil(x / divisor) * divisor)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 upsampling (no parameters; holds its layer index)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_nearest(x, 2)


class Concat(nnx.Module):
    """Channel concatenation (no parameters; holds its layer index)."""

    def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
        return jnp.concatenate(list(xs), axis=-1)


def _final_conv(c_in: int, c_out: int, bias: float, kw: dict) -> nnx.Conv:
    return nnx.Conv(
        c_in,
        c_out,
        (1, 1),
        use_bias=True,
        kernel_init=torch_conv_init(),
        bias_init=nnx.initializers.constant(bias),
        dtype=kw["dtype"],
        param_dtype=kw["param_dtype"],
        rngs=kw["rngs"],
    )


class Detect(nnx.Module):
    """Decoupled anchor-free head: per level a box branch `cv2[l]` and a class branch
    `cv3[l]` (see the module docstring); returns the output contract's dict."""

    def __init__(self, nc: int, ch: Sequence[int], *, strides: Sequence[int] = STRIDES, **kw):
        self.nc = nc
        self.strides = tuple(int(s) for s in strides)
        c2 = max(16, ch[0] // 4, 4 * REG_MAX)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nnx.List(
            [
                nnx.List(
                    [
                        Conv(x, c2, 3, **kw),
                        Conv(c2, c2, 3, **kw),
                        _final_conv(c2, 4 * REG_MAX, 2.0, kw),
                    ]
                )
                for x in ch
            ]
        )
        self.cv3 = nnx.List(
            [
                nnx.List(
                    [
                        nnx.List([DWConv(x, x, 3, **kw), Conv(x, c3, 1, **kw)]),
                        nnx.List([DWConv(c3, c3, 3, **kw), Conv(c3, c3, 1, **kw)]),
                        _final_conv(c3, nc, math.log(5 / nc / (640 / s) ** 2), kw),
                    ]
                )
                for x, s in zip(ch, self.strides, strict=True)
            ]
        )

    def __call__(self, feats: Sequence[jax.Array]) -> dict[str, jax.Array]:
        boxes, classes, anchors, strides = [], [], [], []
        for x, box_branch, cls_branch, s in zip(
            feats, self.cv2, self.cv3, self.strides, strict=True
        ):
            b, h, w, _ = x.shape
            y = x
            for layer in box_branch:
                y = layer(y)
            boxes.append(y.reshape(b, h * w, 4 * REG_MAX))
            y = x
            for block in cls_branch[:2]:
                for layer in block:
                    y = layer(y)
            y = cls_branch[2](y)
            classes.append(y.reshape(b, h * w, self.nc))
            anchors.append(make_anchors(h, w, s))
            strides.append(jnp.full((h * w,), s, jnp.float32))
        return {
            "box_dist": jnp.concatenate(boxes, axis=1).astype(jnp.float32),
            "cls": jnp.concatenate(classes, axis=1).astype(jnp.float32),
            "anchors": jnp.concatenate(anchors, axis=0),
            "strides": jnp.concatenate(strides, axis=0),
        }


def make_anchors(h: int, w: int, stride: int) -> jax.Array:
    """`[h * w, 2]` cell centres (x, y) in input pixels, row-major: `(j + 0.5, i + 0.5) * s`."""
    ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing="ij")
    return (jnp.stack([xs, ys], axis=-1).reshape(h * w, 2) * stride).astype(jnp.float32)


def dfl_decode(outputs: dict[str, jax.Array]) -> jax.Array:
    """Boxes `[B, A, 4]` (x1, y1, x2, y2) in input pixels from the model's outputs.

    Per side the distance is the expectation of softmax over the 16 bins (the frozen
    arange(16) conv of Ultralytics' DFL), times the anchor's stride; x1y1 = anchor -
    (left, top), x2y2 = anchor + (right, bottom).
    """
    logits = outputs["box_dist"].reshape(*outputs["box_dist"].shape[:-1], 4, REG_MAX)
    dist = jax.nn.softmax(logits, axis=-1) @ jnp.arange(REG_MAX, dtype=logits.dtype)
    dist = dist * outputs["strides"][:, None]
    anchors = outputs["anchors"]
    return jnp.concatenate([anchors - dist[..., :2], anchors + dist[..., 2:]], axis=-1)


class YOLO11(nnx.Module):
    """YOLO11 detection model; `self.model[i]` is layer i of the module docstring."""

    def __init__(
        self,
        in_channels: int,
        nc: int,
        *,
        depth: float,
        width: float,
        max_channels: int,
        score_threshold: float = 0.25,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score_threshold = float(score_threshold)
        ch = lambda c: make_divisible(min(c, max_channels) * width, 8)
        n = max(round(2 * depth), 1)  # every repeated layer of YOLO11 has base repeat 2
        self.nc = nc
        self.channels = tuple(ch(c) for c in (256, 512, 1024))  # P3, P4, P5 outputs
        self.model = nnx.List(
            [
                Conv(in_channels, ch(64), 3, 2, **kw),  # 0
                Conv(ch(64), ch(128), 3, 2, **kw),  # 1
                C3k2(ch(128), ch(256), n, c3k=False, e=0.25, **kw),  # 2
                Conv(ch(256), ch(256), 3, 2, **kw),  # 3
                C3k2(ch(256), ch(512), n, c3k=False, e=0.25, **kw),  # 4
                Conv(ch(512), ch(512), 3, 2, **kw),  # 5
                C3k2(ch(512), ch(512), n, c3k=True, **kw),  # 6
                Conv(ch(512), ch(1024), 3, 2, **kw),  # 7
                C3k2(ch(1024), ch(1024), n, c3k=True, **kw),  # 8
                SPPF(ch(1024), ch(1024), 5, **kw),  # 9
                C2PSA(ch(1024), ch(1024), n, **kw),  # 10
                Upsample(),  # 11
                Concat(),  # 12: 11 + 6
                C3k2(ch(1024) + ch(512), ch(512), n, c3k=False, **kw),  # 13
                Upsample(),  # 14
                Concat(),  # 15: 14 + 4
                C3k2(ch(512) + ch(512), ch(256), n, c3k=False, **kw),  # 16 (P3)
                Conv(ch(256), ch(256), 3, 2, **kw),  # 17
                Concat(),  # 18: 17 + 13
                C3k2(ch(256) + ch(512), ch(512), n, c3k=False, **kw),  # 19 (P4)
                Conv(ch(512), ch(512), 3, 2, **kw),  # 20
                Concat(),  # 21: 20 + 10
                C3k2(ch(512) + ch(1024), ch(1024), n, c3k=True, **kw),  # 22 (P5)
                Detect(nc, self.channels, **kw),  # 23
            ]
        )

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        h, w = images.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"YOLO11 needs H and W divisible by 32, got {h} x {w}")
        m = self.model
        x = images
        saved = {}
        for i in range(11):  # backbone
            x = m[i](x)
            saved[i] = x
        x = m[13](m[12]([m[11](x), saved[6]]))
        saved[13] = x
        p3 = m[16](m[15]([m[14](x), saved[4]]))
        p4 = m[19](m[18]([m[17](p3), saved[13]]))
        p5 = m[22](m[21]([m[20](p4), saved[10]]))
        out = m[23]([p3, p4, p5])
        # Every class occurs at most once: its best anchor is its detection (no NMS).
        boxes, scores, found = top1_per_class(
            jax.nn.sigmoid(out["cls"].astype(jnp.float32)), dfl_decode(out), self.score_threshold
        )
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        return out | {"boxes": boxes, "scores": scores, "found": found, "coords": centre}


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


@register_model("yolo11")
def build_yolo11(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    scale: str = "n",
    width: float | None = None,
    depth: float | None = None,
    max_channels: int | None = None,
    score_threshold: float = 0.25,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> YOLO11:
    """YOLO11-`scale` ("n" or "s") detecting `num_outputs` classes; `width`, `depth` and
    `max_channels` override the scale's multipliers (e.g. a tiny CPU variant with width
    0.125, depth 0.33, max_channels 128). `input_size` must be divisible by 32."""
    if scale not in SCALES:
        raise ValueError(f"unknown YOLO11 scale {scale!r}; known: {', '.join(SCALES)}")
    h, w = _hw(input_size)
    if h % 32 or w % 32:
        raise ValueError(f"input_size {h} x {w} is not divisible by 32 for YOLO11")
    d, wd, mc = SCALES[scale]
    return YOLO11(
        in_channels,
        num_outputs,
        depth=d if depth is None else depth,
        width=wd if width is None else width,
        max_channels=mc if max_channels is None else max_channels,
        score_threshold=score_threshold,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
