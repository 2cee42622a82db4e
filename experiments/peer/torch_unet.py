"""PyTorch port of lmjax's heatmap U-Net (`lmjax.models.unet.UNet`) and its training step.

A benchmark peer only: lmjax never imports it (`pip install lmjax[peer]` brings torch).
The network is the same layer for layer, NCHW instead of NHWC:

  ConvNormAct  3x3 conv without bias, padding 1 on both sides (stride 1 or 2),
               InstanceNorm2d(affine, eps 1e-5), LeakyReLU(0.01)
  ConvBlock    two ConvNormAct, the first strided in every encoder level but the first
  Upsample     "transpose": ConvTranspose2d(kernel 2, stride 2, no bias); "resize":
               1x1 conv then 2x bilinear/nearest (resize_kernel 1) or 2x resize then
               3x3 conv (resize_kernel 3), as `lmjax.models.layers.Upsample`
  heads        1x1 convs with bias at decoder levels 0 .. n - 1 (deep supervision)

`copy_from_lmjax` loads an lmjax UNet's parameters so both compute the same function.
`HeatmapObjective` is the loss of lmjax's train step for a heatmap task (Gaussian
targets rendered in the step from coordinates, per-example MSE with nnU-Net deep
supervision weights and area-downsampled targets, plus an optional coordinate L1 on
the soft-argmax of the full-resolution maps); `make_optimizer` is lmjax's Adam with
global-norm clipping and linear-warmup cosine schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01


class ConvNormAct(nn.Module):
    """`[B, C_in, H, W] -> [B, C_out, ceil(H / s), ceil(W / s)]`."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)
        self.norm = nn.InstanceNorm2d(cout, eps=1e-5, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), LEAKY_SLOPE)


class ConvBlock(nn.Module):
    """Two ConvNormAct; `[B, C_in, H, W] -> [B, C_out, H / s, W / s]`."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1):
        super().__init__()
        self.first = ConvNormAct(cin, cout, stride=stride)
        self.second = ConvNormAct(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class Upsample(nn.Module):
    """`[B, C_in, H, W] -> [B, C_out, 2H, 2W]`, as `lmjax.models.layers.Upsample`."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        mode: str = "transpose",
        resize_method: str = "bilinear",
        resize_kernel: int = 1,
    ):
        super().__init__()
        if mode not in ("transpose", "resize"):
            raise ValueError(f"upsample mode must be 'transpose' or 'resize', got {mode!r}")
        self.mode, self.resize_method, self.resize_kernel = mode, resize_method, resize_kernel
        if mode == "transpose":
            self.conv = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
        else:
            k = resize_kernel
            self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_method == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transpose":
            return self.conv(x)
        if self.resize_kernel == 1:
            return self._resize(self.conv(x))
        return self.conv(self._resize(x))


class TorchUNet(nn.Module):
    """`images [B, C, H, W] -> {"heatmaps": [B, K, H, W], "deep_supervision": [...]}`.

    Same constructor arguments and outputs as `lmjax.models.unet.UNet` (channels
    first); `deep_supervision` may be switched off after building, as in lmjax.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        num_levels: int,
        features: int = 32,
        max_features: int = 512,
        upsample: str = "transpose",
        resize_method: str = "bilinear",
        resize_kernel: int = 1,
        deep_supervision: bool = True,
        num_deep_supervision: int | None = None,
    ):
        super().__init__()
        n_decoder = num_levels - 1
        if num_deep_supervision is None:
            num_deep_supervision = max(1, n_decoder - 1)
        ch = [min(features * 2**i, max_features) for i in range(num_levels)]
        self.num_levels, self.channels = num_levels, tuple(ch)
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else ch[i - 1], ch[i], stride=1 if i == 0 else 2)
            for i in range(num_levels)
        )
        up_kw = dict(mode=upsample, resize_method=resize_method, resize_kernel=resize_kernel)
        self.up = nn.ModuleList(Upsample(ch[i + 1], ch[i], **up_kw) for i in range(n_decoder))
        self.decoder = nn.ModuleList(ConvBlock(2 * ch[i], ch[i]) for i in range(n_decoder))
        self.heads = nn.ModuleList(
            nn.Conv2d(ch[i], num_outputs, 1) for i in range(num_deep_supervision)
        )

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        x, skips = images, []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        outputs: dict[int, torch.Tensor] = {}
        for i in reversed(range(self.num_levels - 1)):
            x = self.decoder[i](torch.cat([self.up[i](x), skips[i]], dim=1))
            if i < len(self.heads) and (self.deep_supervision or i == 0):
                outputs[i] = self.heads[i](x)
        if self.num_levels == 1:
            outputs[0] = self.heads[0](x)
        result: dict[str, Any] = {"heatmaps": outputs[0]}
        if self.deep_supervision:
            result["deep_supervision"] = [outputs[i] for i in range(len(self.heads))]
        return result


def from_lmjax(model: Any) -> TorchUNet:
    """A TorchUNet with the architecture (not yet the weights) of an lmjax UNet."""
    up = model.up[0] if len(model.up) else None
    channels = list(model.channels)
    return TorchUNet(
        int(model.encoder[0].first.conv.in_features),
        int(model.heads[0].out_features),
        num_levels=model.num_levels,
        features=channels[0],
        max_features=max(channels),
        upsample=up.mode if up is not None else "transpose",
        resize_method=up.resize_method if up is not None else "bilinear",
        resize_kernel=up.resize_kernel if up is not None else 1,
        deep_supervision=model.deep_supervision,
        num_deep_supervision=len(model.heads),
    )


def _conv_weight(kernel: np.ndarray, *, transpose: bool) -> np.ndarray:
    """Flax kernel `[kh, kw, in, out]` -> torch Conv2d `[out, in, kh, kw]` or, for a
    transposed conv, torch ConvTranspose2d `[in, out, kh, kw]`.

    Flax's ConvTranspose (transpose_kernel=False) is a fractionally strided
    convolution with the kernel as stored; torch's is the gradient of a convolution,
    which applies the kernel mirrored, so the spatial axes are flipped.
    """
    if transpose:
        return np.ascontiguousarray(kernel[::-1, ::-1].transpose(2, 3, 0, 1))
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def _torch_name(path: Sequence[Any]) -> str:
    """lmjax parameter path (`("encoder", 0, "first", "conv", "kernel")`) -> torch key."""
    names = [str(p) for p in path]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[names[-1]]
    return ".".join([*names[:-1], leaf])


def copy_from_lmjax(model: Any, port: TorchUNet) -> int:
    """Copies every parameter of the lmjax `model` into `port`; returns how many.

    Raises KeyError or ValueError if a parameter has no counterpart or another shape,
    so a port that drifts from the original fails loudly.
    """
    from flax import nnx

    target = port.state_dict()
    copied = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var[...] if hasattr(var, "__getitem__") else var.value, np.float32)
        key = _torch_name(path)
        if key not in target:
            raise KeyError(f"lmjax parameter {'/'.join(map(str, path))} has no torch {key}")
        if value.ndim == 4:
            is_transpose = isinstance(port.get_submodule(key.rsplit(".", 1)[0]), nn.ConvTranspose2d)
            value = _conv_weight(value, transpose=is_transpose)
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"{key}: lmjax shape {value.shape}, torch {tuple(target[key].shape)}")
        copied[key] = torch.from_numpy(value.copy())
    missing = sorted(set(target) - set(copied))
    if missing:
        raise KeyError(f"torch parameters with no lmjax counterpart: {missing}")
    port.load_state_dict(copied)
    return len(copied)


def num_parameters(port: nn.Module) -> int:
    return sum(p.numel() for p in port.parameters())


# ------------------------------------------------------------------ training objective


def gaussian_heatmaps(
    coords: torch.Tensor, visible: torch.Tensor, shape: tuple[int, int], sigma: float
) -> torch.Tensor:
    """`coords [B, K, 2]` (x, y) in map pixels -> `[B, K, H, W]`, 1 at the centre.

    Separable, as `lmjax.ops.targets.gaussian_heatmaps`; invisible or non-finite
    landmarks render zero channels.
    """
    h, w = shape
    valid = visible & torch.isfinite(coords).all(-1)
    safe = torch.where(valid[..., None], coords, torch.zeros_like(coords))
    inv = -0.5 / sigma**2
    xs = torch.arange(w, dtype=coords.dtype, device=coords.device)
    ys = torch.arange(h, dtype=coords.dtype, device=coords.device)
    gx = torch.exp((xs - safe[..., 0:1]) ** 2 * inv)  # [B, K, W]
    gy = torch.exp((ys - safe[..., 1:2]) ** 2 * inv) * valid[..., None]  # [B, K, H]
    return gy[..., :, None] * gx[..., None, :]


def soft_argmax(maps: torch.Tensor, temperature: float) -> torch.Tensor:
    """`[B, K, H, W]` -> expected (x, y) `[B, K, 2]` under a spatial softmax."""
    b, k, h, w = maps.shape
    p = torch.softmax(maps.reshape(b, k, h * w) / temperature, dim=-1).reshape(b, k, h, w)
    x = p.sum(2) @ torch.arange(w, dtype=maps.dtype, device=maps.device)
    y = p.sum(3) @ torch.arange(h, dtype=maps.dtype, device=maps.device)
    return torch.stack([x, y], dim=-1)


def _mean_visible(per_k: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """`[B, K]` -> `[B]` mean over visible landmarks (0 where none)."""
    total = torch.where(vis, per_k, torch.zeros_like(per_k)).sum(-1)
    return total / vis.sum(-1).clamp(min=1).to(total.dtype)


class HeatmapObjective:
    """lmjax's heatmap-task loss in torch: `(outputs, landmarks, visible, valid) -> loss`.

    sigma: Gaussian sigma in input pixels; losses: {"heatmap_mse": w, "coord_l1": w}
    (the names lmjax uses; others are refused); temperature: soft-argmax temperature
    of the coordinate term; deep_supervision: supervise every head, weights `2**-i`
    normalised to 1, target area-averaged to each head's size (lmjax's defaults).
    """

    def __init__(
        self,
        *,
        sigma: float,
        losses: Mapping[str, float],
        temperature: float = 1.0,
        deep_supervision: bool = True,
    ):
        unknown = sorted(set(losses) - {"heatmap_mse", "coord_l1"})
        if unknown:
            raise ValueError(f"losses {unknown} have no torch port; use heatmap_mse, coord_l1")
        self.sigma, self.losses, self.temperature = sigma, dict(losses), temperature
        self.deep_supervision = deep_supervision

    def _mse(self, outputs, target, vis) -> torch.Tensor:
        maps = outputs["heatmaps"]
        scales = outputs.get("deep_supervision") if self.deep_supervision else None
        scales = scales or [maps]
        weights = [0.5**i for i in range(len(scales))]
        total = 0.0
        for wgt, pred in zip(weights, scales, strict=True):
            fh, fw = target.shape[2] // pred.shape[2], target.shape[3] // pred.shape[3]
            t = F.avg_pool2d(target, (fh, fw)) if (fh, fw) != (1, 1) else target
            t = torch.where(vis[:, :, None, None], t, torch.zeros_like(t))
            err = ((pred - t) ** 2).mean(dim=(2, 3))
            total = total + (wgt / sum(weights)) * _mean_visible(err, vis)
        return total

    def __call__(self, outputs, landmarks, visible, valid) -> tuple[torch.Tensor, dict]:
        maps = outputs["heatmaps"]
        vis = visible & torch.isfinite(landmarks).all(-1)
        terms = {}
        if "heatmap_mse" in self.losses:
            target = gaussian_heatmaps(landmarks, visible, tuple(maps.shape[2:]), self.sigma)
            terms["heatmap_mse"] = self._mse(outputs, target, vis)
        if "coord_l1" in self.losses:
            d = soft_argmax(maps, self.temperature) - torch.nan_to_num(landmarks)
            terms["coord_l1"] = _mean_visible(d.abs().sum(-1), vis)
        n = valid.sum().clamp(min=1).to(maps.dtype)
        terms = {k: torch.where(valid, v, torch.zeros_like(v)).sum() / n for k, v in terms.items()}
        loss = sum(self.losses[k] * v for k, v in terms.items())
        return loss, terms


def make_optimizer(
    params,
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    schedule: str = "constant",
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with lmjax's schedule: linear warmup from 0, then constant or cosine to 0."""
    opt = torch.optim.Adam(params, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)
    decay = max((total_steps or 0) - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if schedule == "cosine":
            t = min(step - warmup_steps, decay) / decay
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_step(
    model: TorchUNet,
    objective: HeatmapObjective,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    batch: Mapping[str, torch.Tensor],
    *,
    clip_norm: float | None = 1.0,
) -> dict[str, torch.Tensor]:
    """One update, as lmjax's train step: targets rendered here, loss, clipped Adam.

    `batch`: image `[B, C, H, W]`, landmarks `[B, K, 2]`, visible `[B, K]`, valid `[B]`.
    A non-finite loss or gradient norm skips the update, as in lmjax.
    """
    model.train()
    opt.zero_grad(set_to_none=True)
    outputs = model(batch["image"])
    loss, terms = objective(outputs, batch["landmarks"], batch["visible"], batch["valid"])
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    if clip_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    if torch.isfinite(loss) and torch.isfinite(norm):
        opt.step()
    sched.step()
    return {"loss": loss.detach(), "grad_norm": norm.detach(), **terms}
