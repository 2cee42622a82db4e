"""Segment Anything (SAM) in Flax NNX, registered as "sam": image encoder, prompt encoder
and mask decoder, decoding many box prompts per image in one batched call.

`embed(images [B, H, W, C]) -> [B, h, w, D]` runs the encoder once per image (cache it
for decoder-only training); `decode(embeddings, boxes [B, K, 4])` folds the K prompts
into the decoder's batch. Boxes are `(x0, y0, x1, y1)` pixels of the model input frame;
images come already normalised and padded as the weights expect. Submodule and
parameter names mirror `segment_anything`'s, so a checkpoint key maps to a state path
by renaming its leaf (`weight` -> `kernel`, `scale` or `embedding`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype
from lmjax.models.registry import register_model
from lmjax.models.sam_decoder import MaskDecoder
from lmjax.models.sam_encoder import ImageEncoderViT
from lmjax.models.sam_prompt import PromptEncoder


@dataclasses.dataclass(frozen=True)
class SamSize:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    image_size: int = 1024
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256


SAM_SIZES: dict[str, SamSize] = {
    # A 10 x 10 token grid at 80 px, padded to 12 by the 4 x 4 windows.
    "tiny": SamSize(
        32,
        3,
        2,
        (2,),
        window_size=4,
        patch_size=8,
        image_size=80,
        prompt_dim=32,
        mask_in_chans=8,
        decoder_heads=2,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    ),  # fmt: skip
    "vit_b": SamSize(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSize(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSize(1280, 32, 16, (7, 15, 23, 31)),
}


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def postprocess_masks(
    masks: jax.Array,
    *,
    image_size: int | Sequence[int],
    input_size: Sequence[int],
    original_size: Sequence[int],
) -> jax.Array:
    """Low-res logits `[..., h, w, M]` -> logits `[..., H0, W0, M]` in the original frame.

    Bilinear to the model input frame `image_size`, crop the un-padded `input_size`
    region, bilinear to `original_size`; half-pixel centres without antialiasing, as
    PyTorch's `interpolate(align_corners=False)`. Threshold the result at 0.
    """
    lead, m = masks.shape[:-3], masks.shape[-1]
    x = jax.image.resize(masks, (*lead, *_hw(image_size), m), "bilinear", antialias=False)
    x = x[..., : input_size[0], : input_size[1], :]
    return jax.image.resize(x, (*lead, *original_size, m), "bilinear", antialias=False)


class Sam(nnx.Module):
    """`(images [B, H, W, C], boxes [B, K, 4]) -> {"masks": [B, K, 4h, 4w, M], "iou": [B, K, M]}`.

    Masks are low-resolution logits (h, w: the token grid); M is 1, or
    `num_multimask_outputs` with `multimask_output=True`. A prompt with
    `box_valid[b, k]` False (default: any non-finite coordinate) is computed on a
    zero box and its outputs are NaN; the other prompts do not see it.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 1024,
        size: SamSize,
        num_multimask_outputs: int = 3,
        mlp_ratio: float = 4.0,
        remat: bool = False,
        attention: str | None = None,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        s, hw = size, _hw(image_size)
        self.image_size = hw
        self.image_encoder = ImageEncoderViT(
            image_size=hw,
            patch_size=s.patch_size,
            in_channels=in_channels,
            embed_dim=s.embed_dim,
            depth=s.depth,
            num_heads=s.num_heads,
            mlp_ratio=mlp_ratio,
            out_chans=s.prompt_dim,
            window_size=s.window_size,
            global_attn_indexes=tuple(s.global_attn_indexes),
            remat=remat,
            attention=attention,
            **kw,
        )
        self.prompt_encoder = PromptEncoder(
            s.prompt_dim, self.image_encoder.grid, hw, s.mask_in_chans, **kw
        )
        self.mask_decoder = MaskDecoder(
            s.prompt_dim,
            num_multimask_outputs=num_multimask_outputs,
            depth=s.decoder_depth,
            num_heads=s.decoder_heads,
            mlp_dim=s.decoder_mlp_dim,
            iou_head_hidden_dim=s.iou_head_hidden_dim,
            **kw,
        )

    def embed(self, images: jax.Array) -> jax.Array:
        """`[B, H, W, C] -> [B, h, w, prompt_dim]` image embeddings (compute dtype)."""
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: jax.Array,
        boxes: jax.Array,
        *,
        box_valid: jax.Array | None = None,
        multimask_output: bool = False,
    ) -> dict[str, jax.Array]:
        """Decodes `boxes [B, K, 4]` against `embeddings [B, h, w, D]` in one decoder call."""
        b, k = boxes.shape[:2]
        if box_valid is None:
            valid = jnp.all(jnp.isfinite(boxes), axis=-1)
        else:
            valid = jnp.asarray(box_valid, bool)
        # A zero box keeps non-finite padding out of the forward pass and the gradients.
        boxes = jnp.where(valid[..., None], boxes, 0.0)
        sparse = self.prompt_encoder.embed_boxes(boxes).reshape(b * k, 2, -1)
        # The no-mask embedding is the same for every prompt: add it before repeating.
        src = embeddings.astype(jnp.float32) + self.prompt_encoder.no_mask()
        src = jnp.repeat(src, k, axis=0)  # image b's rows are b * K .. b * K + K - 1
        masks, iou = self.mask_decoder(
            src, self.prompt_encoder.dense_pe(), sparse, None, multimask_output
        )
        masks = masks.reshape(b, k, *masks.shape[1:])
        iou = iou.reshape(b, k, -1)
        return {
            "masks": jnp.where(valid[:, :, None, None, None], masks, jnp.nan),
            "iou": jnp.where(valid[:, :, None], iou, jnp.nan),
        }

    def __call__(
        self,
        images: jax.Array,
        boxes: jax.Array,
        *,
        box_valid: jax.Array | None = None,
        multimask_output: bool = False,
    ) -> dict[str, Any]:
        return self.decode(
            self.embed(images), boxes, box_valid=box_valid, multimask_output=multimask_output
        )


def _size(name: str) -> SamSize:
    if name not in SAM_SIZES:
        raise ValueError(f"unknown SAM size {name!r}; known: {', '.join(SAM_SIZES)}")
    return SAM_SIZES[name]


@register_model("sam")
def build_sam(
    *,
    num_outputs: int | None = None,
    input_size: int | Sequence[int] | None = None,
    in_channels: int = 3,
    rngs: nnx.Rngs,
    size: str = "vit_b",
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    global_attn_indexes: Sequence[int] | None = None,
    window_size: int | None = None,
    patch_size: int | None = None,
    prompt_dim: int | None = None,
    mask_in_chans: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
    decoder_mlp_dim: int | None = None,
    iou_head_hidden_dim: int | None = None,
    num_multimask_outputs: int = 3,
    mlp_ratio: float = 4.0,
    remat: bool = False,
    attention: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> Sam:
    """SAM of `size` ("tiny" | "vit_b" | "vit_l" | "vit_h"), any field overridable.

    `input_size` is the model input frame (default: the size's, 1024 for the ViTs).
    SAM's outputs are per prompt, so `num_outputs` is not used; it is accepted so that
    every model builds the same way.
    """
    del num_outputs
    overrides = dict(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        global_attn_indexes=None if global_attn_indexes is None else tuple(global_attn_indexes),
        window_size=window_size,
        patch_size=patch_size,
        prompt_dim=prompt_dim,
        mask_in_chans=mask_in_chans,
        decoder_depth=decoder_depth,
        decoder_heads=decoder_heads,
        decoder_mlp_dim=decoder_mlp_dim,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    s = dataclasses.replace(_size(size), **{k: v for k, v in overrides.items() if v is not None})
    return Sam(
        in_channels=in_channels,
        image_size=s.image_size if input_size is None else input_size,
        size=s,
        num_multimask_outputs=num_multimask_outputs,
        mlp_ratio=mlp_ratio,
        remat=remat,
        attention=attention,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
