"""Per-class heatmap detector on a map backbone (registered as "heatmap_detector").

CenterNet's "objects as points" (Zhou, Wang and Kraehenbuehl 2019) in its simplest
form, for the cascade's detector role (`shared/design/cascade.md` section 4.4): every
class occurs at most once per image, so one heatmap channel per class gives identity,
presence (the peak's score) and location (the peak), and a 2-channel map regresses the
box's `log(w, h)` at the centre (its scale for SAM). Targets, losses and decoding are in
`lmjax.ops.point_detection`.

Any registered map backbone (the U-Net by default) is built with `C + 2` outputs (and
deep supervision off where it has that option); its `"heatmaps"` are split into the
`C` heat logits and the 2 size channels. As in CenterNet the heat channels start at
`sigmoid = heat_prior` (0.01, bias -4.6) so the focal loss does not start swamped by
the background: the bias of the backbone's output conv(s) is set where the head is
known (`HEAD_PATHS`), otherwise the same constant is added to the heat logits in
`__call__`, which is the same function with the same gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.registry import build_model, builder_options, register_model
from lmjax.ops.point_detection import decode

# Attribute path from a backbone to its output conv(s) (a conv or a list of them), whose
# bias receives the heat prior. Checked when used: a path that does not lead to convs with
# a `[C + 2]` bias falls back to the constant offset.
HEAD_PATHS: dict[str, tuple[str, ...]] = {
    "unet": ("heads",),
    "ceph_unet": ("head",),
    "ceph_fpn": ("head",),
    "hrnet": ("landmark_decoder", "head"),
    "vit_pose": ("head", "final"),
    "swin_unetr": ("out", "conv", "conv"),
}


def _output_convs(backbone: nnx.Module, path: Sequence[str], channels: int) -> list | None:
    """The modules at `path` when each has a bias `nnx.Param` of shape `[channels]`."""
    node: Any = backbone
    for name in path:
        node = getattr(node, name, None)
        if node is None:
            return None
    convs = list(node) if isinstance(node, (list, tuple, nnx.List)) else [node]
    for conv in convs:
        bias = getattr(conv, "bias", None)
        if not isinstance(bias, nnx.Param) or bias.get_value() is None:
            return None
        if tuple(bias.get_value().shape) != (channels,):
            return None
    return convs or None


def _map_scale(backbone: nnx.Module, size: tuple[int, int], in_channels: int) -> tuple:
    """`(scale, channels)` of the backbone's `"heatmaps"`, from an abstract forward pass."""
    graphdef, state = nnx.split(backbone)
    image = jax.ShapeDtypeStruct((1, *size, in_channels), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x)["heatmaps"], state, image)
    _, h, w, channels = out.shape
    sy, sx = h / size[0], w / size[1]
    if not math.isclose(sy, sx):
        raise ValueError(f"backbone maps {h} x {w} for {size[0]} x {size[1]}: unequal scales")
    return sy, channels


class HeatmapDetector(nnx.Module):
    """`images [B, H, W, Cin] -> {"heat", "size", "heatmaps", "boxes", ...}`.

    - `"heat"`: `[B, h, w, C]` per-class centre logits;
    - `"size"`: `[B, h, w, 2]` predicted `log(w, h)` of the box, in input pixels;
    - `"heatmaps"`: the same array as `"heat"`, for tooling that looks for maps;
    - `"boxes"` `[B, C, 4]`, `"scores"`, `"found"` `[B, C]`: `decode`'s per-class
      top-1 (NaN below `score_threshold`), `"coords"` `[B, C, 2]` the box centres;
    - `"map_scale"`: `scale` below, for the loss.

    `h, w = H * scale, W * scale` with `scale` (map pixels per input pixel) the
    backbone's: 1 for the U-Net, 1/4 for ViTPose. Pass it to the loss and decoder.
    """

    def __init__(
        self,
        backbone: nnx.Module,
        num_classes: int,
        *,
        scale: float,
        heat_offset: float,
        score_threshold: float = 0.3,
    ) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.scale = scale
        self.heat_offset = heat_offset
        self.score_threshold = float(score_threshold)

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        maps = self.backbone(images)["heatmaps"]
        heat = maps[..., : self.num_classes]
        if self.heat_offset:
            heat = heat + self.heat_offset
        size = maps[..., self.num_classes :]
        boxes, scores, found = decode(heat, size, self.scale, threshold=self.score_threshold)
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        return {
            "heat": heat,
            "size": size,
            "heatmaps": heat,
            "map_scale": self.scale,  # map pixels per input pixel (a Python float)
            "boxes": boxes,
            "scores": scores,
            "found": found,
            "coords": centre,
        }


@register_model("heatmap_detector")
def build_heatmap_detector(
    *,
    num_outputs: int,
    input_size: int | Sequence[int],
    in_channels: int = 1,
    rngs: nnx.Rngs,
    backbone: str = "unet",
    backbone_options: Mapping[str, Any] | None = None,
    heat_prior: float = 0.01,
    score_threshold: float = 0.3,
) -> HeatmapDetector:
    """A heatmap detector for `num_outputs` classes on the registered model `backbone`.

    Args:
      num_outputs: number of classes C.
      input_size: int or `(H, W)`, passed to the backbone.
      backbone: registry name of the map backbone.
      backbone_options: further keywords of the backbone's builder; `deep_supervision`
        is set to False where the builder has it (True is refused: only the final map
        is used).
      heat_prior: initial `sigmoid` of the heat channels (CenterNet: 0.01).
    """
    if backbone == "heatmap_detector":
        raise ValueError("the backbone of a heatmap_detector cannot be a heatmap_detector")
    if not 0.0 < heat_prior < 1.0:
        raise ValueError(f"heat_prior must lie in (0, 1), got {heat_prior}")
    opts = dict(backbone_options or {})
    known = builder_options(backbone)
    if known is None or "deep_supervision" in known:
        if opts.get("deep_supervision", False):
            raise ValueError("heatmap_detector uses the final map only: deep_supervision=True")
        if known is not None:
            opts["deep_supervision"] = False
    channels = num_outputs + 2
    net = build_model(
        backbone,
        num_outputs=channels,
        input_size=input_size,
        in_channels=in_channels,
        rngs=rngs,
        **opts,
    )
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    scale, out_channels = _map_scale(net, (int(size[0]), int(size[1])), in_channels)
    if out_channels != channels:
        raise ValueError(f"backbone {backbone!r} gives {out_channels} channels, not {channels}")
    prior = math.log(heat_prior / (1.0 - heat_prior))
    convs = _output_convs(net, HEAD_PATHS[backbone], channels) if backbone in HEAD_PATHS else None
    if convs:
        for conv in convs:
            conv.bias[...] = conv.bias[...].at[:num_outputs].set(prior)
    return HeatmapDetector(
        net,
        num_outputs,
        scale=scale,
        heat_offset=0.0 if convs else prior,
        score_threshold=score_threshold,
    )
