"""SAM's prompt encoder: random Fourier position features, point/box tokens, dense prompts.

Coordinates are `(x, y)` pixels of the model input frame (the padded `image_size`
square SAM's encoder sees), pixel centres on integers. Names follow
`segment_anything`'s `PromptEncoder`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype
from lmjax.models.sam_encoder import exact_gelu
from lmjax.models.vit_blocks import LN_EPS

# torch's nn.Embedding draws N(0, 1); the tokens' scale matters next to the Fourier features.
EMBED_INIT = nnx.initializers.normal(stddev=1.0)


class FourierMatrix(nnx.Variable):
    """The random Fourier frequencies: a fixed buffer, never trained.

    Not an `nnx.Param`, so optimizers built with `wrt=nnx.Param` leave it alone and
    `count_params` does not count it.
    """


def token_embedding(n: int, dim: int, *, param_dtype, rngs) -> nnx.Embed:
    """An `[n, dim]` table used as a token (or a bias) by reading `.embedding` directly."""
    return nnx.Embed(n, dim, embedding_init=EMBED_INIT, param_dtype=param_dtype, rngs=rngs)


class PositionEmbeddingRandom(nnx.Module):
    """`pe(u) = [sin(2 pi (2u - 1) G), cos(2 pi (2u - 1) G)]` for `u` in `[0, 1]^2` as (x, y)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0, *, rngs: nnx.Rngs):
        scale = scale if scale > 0 else 1.0
        g = scale * jax.random.normal(rngs.params(), (2, num_pos_feats), jnp.float32)
        self.positional_encoding_gaussian_matrix = FourierMatrix(g)

    def encode(self, coords: jax.Array) -> jax.Array:
        """`[..., 2]` normalised `(x, y)` -> `[..., 2 * num_pos_feats]` float32."""
        g = jax.lax.stop_gradient(self.positional_encoding_gaussian_matrix[...])
        proj = 2 * math.pi * ((2 * coords.astype(jnp.float32) - 1) @ g.astype(jnp.float32))
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)

    def dense(self, size: tuple[int, int]) -> jax.Array:
        """`[h, w, 2 * num_pos_feats]`: the encoding at the centres of an `h x w` grid."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        xy = jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1)
        return self.encode(xy)

    def with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel `(x, y)` in an `(H, W)` frame -> encoding (normalised by W and H)."""
        h, w = image_size
        return self.encode(coords / jnp.asarray([w, h], jnp.float32))


class PromptEncoder(nnx.Module):
    """Sparse tokens for points and boxes, dense embeddings for masks (or "no mask").

    `image_embedding_size` is the encoder's token grid `(h, w)`, `input_image_size`
    the `(H, W)` input frame the prompt coordinates are given in. Sparse outputs are
    float32; `mask_downscaling` runs in `dtype`.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, rngs=rngs)
        emb = dict(param_dtype=param_dtype, rngs=rngs)
        # 0 / 1: negative / positive point, 2 / 3: top-left / bottom-right box corner.
        self.point_embeddings = nnx.List([token_embedding(1, embed_dim, **emb) for _ in range(4)])
        self.not_a_point_embed = token_embedding(1, embed_dim, **emb)
        self.no_mask_embed = token_embedding(1, embed_dim, **emb)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(epsilon=LN_EPS, use_fast_variance=False, **kw)
        c = mask_in_chans
        # Keys "0".."6" are the original Sequential's indices (2 and 5 are the GELUs).
        self.mask_downscaling = nnx.Dict(
            {
                "0": nnx.Conv(1, c // 4, (2, 2), (2, 2), padding="VALID", **kw),
                "1": nnx.LayerNorm(c // 4, **norm),
                "3": nnx.Conv(c // 4, c, (2, 2), (2, 2), padding="VALID", **kw),
                "4": nnx.LayerNorm(c, **norm),
                "6": nnx.Conv(c, embed_dim, (1, 1), **kw),
            }
        )

    def _token(self, table: nnx.Embed) -> jax.Array:
        return table.embedding[...].astype(jnp.float32)

    def dense_pe(self) -> jax.Array:
        """`[h, w, embed_dim]` positional encoding of the image-embedding grid."""
        return self.pe_layer.dense(self.image_embedding_size)

    def embed_points(self, points: jax.Array, labels: jax.Array, *, pad: bool) -> jax.Array:
        """`points [..., N, 2]`, `labels [..., N]` (1 positive, 0 negative, -1 padding).

        Returns `[..., N (+1 with pad), embed_dim]`; `pad` appends a padding point, as
        the original does when points come without a box.
        """
        points = points.astype(jnp.float32) + 0.5  # pixel centre
        if pad:
            points = jnp.concatenate([points, jnp.zeros((*points.shape[:-2], 1, 2))], axis=-2)
            labels = jnp.concatenate([labels, -jnp.ones((*labels.shape[:-1], 1), labels.dtype)], -1)
        pe = self.pe_layer.with_coords(points, self.input_image_size)
        lab = labels[..., None]
        pe = jnp.where(lab == -1, self._token(self.not_a_point_embed), pe)
        pe = pe + jnp.where(lab == 0, self._token(self.point_embeddings[0]), 0.0)
        return pe + jnp.where(lab == 1, self._token(self.point_embeddings[1]), 0.0)

    def embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """`boxes [..., 4]` as `(x0, y0, x1, y1)` -> corner tokens `[..., 2, embed_dim]`."""
        corners = (boxes.astype(jnp.float32) + 0.5).reshape(*boxes.shape[:-1], 2, 2)
        pe = self.pe_layer.with_coords(corners, self.input_image_size)
        corner = jnp.concatenate(
            [self._token(self.point_embeddings[2]), self._token(self.point_embeddings[3])]
        )
        return pe + corner

    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """`[B, 4h, 4w, 1]` mask logits -> dense embeddings `[B, h, w, embed_dim]`."""
        d = self.mask_downscaling
        x = exact_gelu(d["1"](d["0"](masks)))
        x = exact_gelu(d["4"](d["3"](x)))
        return d["6"](x)

    def no_mask(self) -> jax.Array:
        """`[1, 1, 1, embed_dim]`: the dense embedding when no mask is given."""
        return self._token(self.no_mask_embed).reshape(1, 1, 1, -1)
