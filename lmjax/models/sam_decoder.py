"""SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding,
then a 4x upscaler and per-mask hypernetwork MLPs, plus an IoU head.

NHWC; names follow `segment_anything`'s `MaskDecoder` and `TwoWayTransformer`. The
k=2, s=2 transposed convs of the upscaler are written as one matmul plus
depth-to-space (`Up2x`): they do not overlap, so this is the same map, and XLA:CPU
differentiates it several times faster than a transposed convolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models.layers import Dtype
from lmjax.models.sam_encoder import MLPBlock, exact_gelu
from lmjax.models.sam_prompt import token_embedding
from lmjax.models.vit_blocks import LN_EPS

TRANSFORMER_LN_EPS = 1e-5  # the two-way transformer uses torch's default LayerNorm eps


class Up2x(nnx.Module):
    """`ConvTranspose2d(in, out, kernel_size=2, stride=2)` as matmul + depth-to-space.

    `kernel [in, 4 * out]` is laid out `(dy, dx, out)` along its second axis, i.e. a
    torch weight `W [in, out, 2, 2]` is `W.transpose(0, 2, 3, 1).reshape(in, 4 * out)`;
    output pixel `(2i + dy, 2j + dx)` is `x[i, j] @ kernel[:, (dy, dx, :)] + bias`.
    """

    def __init__(self, in_features: int, out_features: int, *, dtype, param_dtype, rngs):
        self.out_features, self.dtype = out_features, dtype
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (in_features, 4 * out_features), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        kernel, bias = self.kernel[...].astype(self.dtype), self.bias[...].astype(self.dtype)
        y = x.astype(self.dtype) @ kernel
        y = y.reshape(b, h, w, 2, 2, self.out_features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(b, 2 * h, 2 * w, self.out_features) + bias


class Attention(nnx.Module):
    """Multi-head attention `(q [N, Tq, D], k [N, Tk, D], v [N, Tk, D]) -> [N, Tq, D]`.

    q, k, v are projected to `D / downsample_rate` channels before splitting into heads.
    """

    def __init__(
        self, dim: int, num_heads: int, downsample_rate: int = 1, *, dtype, param_dtype, rngs
    ):
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the inner width {inner}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(dim, inner, **kw)
        self.k_proj = nnx.Linear(dim, inner, **kw)
        self.v_proj = nnx.Linear(dim, inner, **kw)
        self.out_proj = nnx.Linear(inner, dim, **kw)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        def heads(x):
            return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

        q, k, v = heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v))
        out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


class TwoWayAttentionBlock(nnx.Module):
    """Token self-attention, tokens -> image, token MLP, image -> tokens; each then LN.

    The first block (`skip_first_layer_pe`) replaces the tokens by their self-attention
    output, without positional encoding and without a residual.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        downsample_rate: int,
        skip_first_layer_pe: bool,
        *,
        dtype,
        param_dtype,
        rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(epsilon=TRANSFORMER_LN_EPS, use_fast_variance=False, **kw)
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(dim, num_heads, **kw)
        self.norm1 = nnx.LayerNorm(dim, **norm)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate, **kw)
        self.norm2 = nnx.LayerNorm(dim, **norm)
        self.mlp = MLPBlock(dim, mlp_dim, jax.nn.relu, **kw)
        self.norm3 = nnx.LayerNorm(dim, **norm)
        self.norm4 = nnx.LayerNorm(dim, **norm)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate, **kw)

    def __call__(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    """`(image [N, h, w, D], image_pe [h, w, D], tokens [N, T, D]) -> (tokens, image [N, hw, D])`.

    The initial tokens are the tokens' positional encoding in every block.
    """

    def __init__(
        self,
        depth: int,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        downsample_rate: int = 2,
        *,
        dtype,
        param_dtype,
        rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [
                TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, i == 0, **kw)
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate, **kw)
        self.norm_final_attn = nnx.LayerNorm(
            dim, epsilon=TRANSFORMER_LN_EPS, use_fast_variance=False, **kw
        )

    def __call__(self, image, image_pe, tokens):
        n, h, w, d = image.shape
        keys = image.reshape(n, h * w, d)
        key_pe = image_pe.reshape(1, h * w, d).astype(keys.dtype)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MLP(nnx.Module):
    """`num_layers` Linears with ReLU between them (the hypernetworks and the IoU head)."""

    def __init__(self, in_dim, hidden, out_dim, num_layers, *, dtype, param_dtype, rngs):
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nnx.List([nnx.Linear(a, b, **kw) for a, b in pairs])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class MaskDecoder(nnx.Module):
    """Masks and IoU predictions, one prompt per batch row.

    `__call__(image_embeddings [N, h, w, D], image_pe [h, w, D], sparse [N, T, D],
    dense [N or 1, h, w, D] or None (already added), multimask_output)` returns
    low-resolution mask logits `[N, 4h, 4w, M]` and IoU predictions `[N, M]` (float32):
    M = `num_multimask_outputs` masks (tokens 1..) with `multimask_output`, else the
    single mask of token 0.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_multimask_outputs: int = 3,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.num_mask_tokens = num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim, **kw)
        self.iou_token = token_embedding(1, dim, param_dtype=param_dtype, rngs=rngs)
        self.mask_tokens = token_embedding(
            self.num_mask_tokens, dim, param_dtype=param_dtype, rngs=rngs
        )
        # Keys are the original Sequential's indices (2 and 4 are the GELUs).
        self.output_upscaling = nnx.Dict(
            {
                "0": Up2x(dim, dim // 4, **kw),
                "1": nnx.LayerNorm(dim // 4, epsilon=LN_EPS, use_fast_variance=False, **kw),
                "3": Up2x(dim // 4, dim // 8, **kw),
            }
        )
        self.output_hypernetworks_mlps = nnx.List(
            [MLP(dim, dim, dim // 8, 3, **kw) for _ in range(self.num_mask_tokens)]
        )
        self.iou_prediction_head = MLP(
            dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, **kw
        )

    def upscale(self, x: jax.Array) -> jax.Array:
        """`[N, h, w, D] -> [N, 4h, 4w, D / 8]`."""
        up = self.output_upscaling
        return exact_gelu(up["3"](exact_gelu(up["1"](up["0"](x)))))

    def __call__(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
        n = sparse.shape[0]
        out_tokens = jnp.concatenate(
            [self.iou_token.embedding[...], self.mask_tokens.embedding[...]], axis=0
        )
        tokens = jnp.concatenate(
            [jnp.broadcast_to(out_tokens, (n, *out_tokens.shape)), sparse.astype(out_tokens.dtype)],
            axis=1,
        ).astype(self.dtype)
        src = image_embeddings if dense is None else image_embeddings + dense
        src = src.astype(self.dtype)
        hs, src = self.transformer(src, image_pe, tokens)
        _, h, w, d = image_embeddings.shape
        upscaled = self.upscale(src.reshape(n, h, w, d))
        hyper = jnp.stack(
            [mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )  # [N, M, D / 8]
        masks = jnp.einsum("nmc,nyxc->nyxm", hyper, upscaled)
        iou = self.iou_prediction_head(hs[:, 0])
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[..., keep].astype(jnp.float32), iou[:, keep].astype(jnp.float32)
