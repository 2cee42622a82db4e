"""Images prepared for a SAM image encoder, with the affine back to the original.

The longest side is resized to `size` (aspect kept, SAM's `ResizeLongestSide`), the
intensities are scaled for the weights (`mode`), and the result is zero-padded at the
bottom and right to a `size x size` square, as `segment_anything` and the HF MedSAM
processor do. Only the resize moves pixels, so the returned affine is that of
`lmjax.data.affine.resize` inverted: prompts map into the model frame with
`inv(to_original)` and predictions map back with `to_original`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lmjax.data import affine

MODES = ("sam", "medsam")
# segment_anything's Sam.pixel_mean / pixel_std, on 0-255 input.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def input_hw(src_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """The un-padded shape in the model frame: SAM's `int(old * s + 0.5)` per side."""
    s = size / max(src_hw)
    return (int(src_hw[0] * s + 0.5), int(src_hw[1] * s + 0.5))


def _resize(pixels: np.ndarray, hw: tuple[int, int], resample: str) -> np.ndarray:
    if tuple(pixels.shape[:2]) == hw:
        return pixels
    # Pillow's filters widen when shrinking (anti-aliased) and align pixel edges, like
    # affine.resize; segment_anything also resizes through PIL with its bilinear filter.
    flt = _RESAMPLE[resample]
    chans = [Image.fromarray(np.ascontiguousarray(pixels[..., c])) for c in range(pixels.shape[2])]
    out = [np.asarray(ch.resize(hw[::-1], flt), np.float32) for ch in chans]
    return np.stack(out, axis=-1)


def _channels(pixels: np.ndarray, in_channels: int) -> np.ndarray:
    x = np.asarray(pixels, np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"expected [H, W] or [H, W, C] pixels, got shape {x.shape}")
    c = x.shape[2]
    if c == in_channels:
        return x
    if c == 1:  # grey replicated, as MedSAM and the HF processor do
        return np.repeat(x, in_channels, axis=2)
    if in_channels == 1:
        return x.mean(axis=2, keepdims=True)
    raise ValueError(f"cannot make {in_channels} channels from {c}")


def sam_preprocess(
    pixels: np.ndarray,
    *,
    mode: str = "sam",
    size: int = 1024,
    in_channels: int = 3,
    resample: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray]:
    """`(image [size, size, in_channels] float32, to_original 3x3)` for a SAM encoder.

    Args:
      pixels: float `[H, W]` or `[H, W, C]`, any range (a radiograph as read).
      mode: "sam" (min-max to 0-255, then `PIXEL_MEAN`/`PIXEL_STD`) or "medsam"
        (min-max to [0, 1], no mean/std: MedSAM bypassed `Sam.preprocess`).
      size: model input side (the encoder's `image_size`).
      in_channels: 3 replicates a grey image; 1 keeps it (for weights loaded with
        `in_channels=1`, normalised with the channel-averaged mean and std).
      resample: "bilinear" (SAM's) or "bicubic" (the MedSAM processors').

    `to_original` maps model-input pixels (centres on integers) to original pixels.
    """
    if mode not in MODES:
        raise ValueError(f"unknown SAM preprocessing mode {mode!r}; known: {', '.join(MODES)}")
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; known: {', '.join(_RESAMPLE)}")
    x = _channels(pixels, in_channels)
    src_hw = (x.shape[0], x.shape[1])
    hw = input_hw(src_hw, size)
    x = _resize(x, hw, resample)
    # Min-max after the resize over all channels, as MedSAM_Inference does: the input
    # then spans the full range the weights saw, whatever the bit depth of the source
    # (bicubic overshoot included). Values stay float: rounding to SAM's uint8 would
    # throw away the extra bits of 12-16-bit radiographs.
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    x = (x - lo) / max(hi - lo, 1e-8)
    if mode == "sam":
        mean, std = np.asarray(PIXEL_MEAN, np.float32), np.asarray(PIXEL_STD, np.float32)
        if in_channels != 3:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        x = (x * np.float32(255.0) - mean) / std
    # Padding after normalisation, as segment_anything: zeros are the mean colour there.
    out = np.zeros((size, size, in_channels), np.float32)
    out[: hw[0], : hw[1]] = x
    return out, np.linalg.inv(affine.resize(src_hw, hw))
