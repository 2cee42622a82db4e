"""SAM checkpoints (`segment_anything`, MedSAM, HF `SamModel`) into the NNX `Sam`, and back.

Loading is strict: every checkpoint tensor fills exactly one model variable of the
same shape, and every variable is filled; each error is one line naming the file and
the key. The model's size is read off the tensors' shapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.sam import Sam, build_sam
from lmjax.models.sam_decoder import Up2x
from lmjax.models.sam_keys import IGNORED, detect_layout, hf_to_original

__all__ = [
    "detect_layout",
    "hf_to_original",
    "infer_sam_config",
    "load_sam",
    "nnx_to_original",
    "original_shapes",
    "original_to_nnx",
]

_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.attn\.rel_pos_h$")
_DECODER_LAYER = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.norm1\.weight$")


def _torch_leaf(module, leaf: str) -> tuple[str, str]:
    """`(torch parameter name, transform kind)` of NNX variable `leaf` of `module`."""
    if leaf == "kernel":
        if isinstance(module, Up2x):
            return "weight", "up2x"
        return "weight", "conv" if isinstance(module, nnx.Conv) else "linear"
    if leaf in ("scale", "embedding"):
        return "weight", "same"
    return leaf, "same"  # bias, pos_embed, rel_pos_*, the Fourier matrix


def _variables(model: Sam) -> dict[str, tuple[nnx.Variable, str]]:
    """Every variable of `model` by its `segment_anything` key, with its transform kind."""
    nodes = dict(nnx.iter_graph(model))
    out = {}
    for path, node in nodes.items():
        if isinstance(node, nnx.Variable):
            name, kind = _torch_leaf(nodes[path[:-1]], str(path[-1]))
            out[".".join(map(str, (*path[:-1], name)))] = (node, kind)
    return dict(sorted(out.items()))


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "linear":
        return shape[::-1]
    if kind == "conv":  # (kh, kw, in, out) <- (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "up2x":  # [in, 4 * out] <- ConvTranspose2d's (in, out, 2, 2)
        return (shape[0], shape[1] // 4, 2, 2)
    return tuple(shape)


def _to_nnx(kind: str, w: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return w.T
    if kind == "conv":
        return w.transpose(2, 3, 1, 0)
    if kind == "up2x":
        return w.transpose(0, 2, 3, 1).reshape(w.shape[0], 4 * w.shape[1])
    return w


def _to_torch(kind: str, k: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return k.T
    if kind == "conv":
        return k.transpose(3, 2, 0, 1)
    if kind == "up2x":
        return k.reshape(k.shape[0], 2, 2, k.shape[1] // 4).transpose(0, 3, 1, 2)
    return k


def original_shapes(model: Sam) -> dict[str, tuple[int, ...]]:
    """`segment_anything` key -> tensor shape of `model` (also of an `nnx.eval_shape` one)."""
    return {
        key: _torch_shape(kind, tuple(var.get_value().shape))
        for key, (var, kind) in _variables(model).items()
    }


def nnx_to_original(model: Sam) -> dict[str, np.ndarray]:
    """`model`'s variables as a `segment_anything` state dict of NumPy arrays."""
    return {
        key: np.ascontiguousarray(_to_torch(kind, np.asarray(var.get_value())))
        for key, (var, kind) in _variables(model).items()
    }


def original_to_nnx(sd: Mapping[str, np.ndarray], model: Sam, *, name: str = "checkpoint") -> Sam:
    """Fills every variable of `model` from `segment_anything` state dict `sd`; returns it.

    `pixel_mean`/`pixel_std` are skipped (preprocessing, not weights). Values are cast
    to each variable's dtype. Raises ValueError, one line naming `name` and the key, on
    a missing, unexpected or wrong-shape tensor.
    """
    table = _variables(model)
    keys = [k for k in sd if k not in IGNORED]
    missing = sorted(set(table) - set(keys))
    extra = sorted(set(keys) - set(table))
    for what, found in (("missing key", missing), ("unexpected key", extra)):
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise ValueError(f"{name}: {what} {found[0]!r} for SAM{more}")
    for key, (var, kind) in table.items():
        w = np.asarray(sd[key])
        want = _torch_shape(kind, tuple(var.get_value().shape))
        if w.shape != want:
            raise ValueError(f"{name}: {key!r} has shape {w.shape}, the model's is {want}")
        if not np.issubdtype(w.dtype, np.floating):
            raise ValueError(f"{name}: {key!r} holds {w.dtype}, not floats")
        var.set_value(jnp.asarray(_to_nnx(kind, w), dtype=var.get_value().dtype))
    return model


def _shape(sd: Mapping, key: str, name: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"{name}: missing key {key!r} for SAM")
    return tuple(np.shape(sd[key]))


def infer_sam_config(
    sd: Mapping[str, np.ndarray], *, decoder_heads: int = 8, name: str = "checkpoint"
) -> dict:
    """`build_sam` keyword arguments read off the shapes of a `segment_anything` state dict.

    Values may be arrays or anything with a `.shape`. The decoder's head count leaves
    no trace in the shapes: it is `decoder_heads` (8 in every released SAM).
    """
    dim, in_ch, patch, _ = _shape(sd, "image_encoder.patch_embed.proj.weight", name)
    _, gh, gw, _ = _shape(sd, "image_encoder.pos_embed", name)
    blocks = sorted(int(m[1]) for k in sd if (m := _BLOCK.match(k)))
    if not blocks:
        raise ValueError(f"{name}: no key 'image_encoder.blocks.N.attn.rel_pos_h' for SAM")
    rows = {i: _shape(sd, f"image_encoder.blocks.{i}.attn.rel_pos_h", name) for i in blocks}
    head_dim = rows[blocks[0]][1]
    global_rows = 2 * gh - 1
    windows = {(r + 1) // 2 for i, (r, _) in rows.items() if r != global_rows}
    if len(windows) > 1:
        raise ValueError(f"{name}: blocks have different window sizes {sorted(windows)}")
    mask_in = _shape(sd, "prompt_encoder.mask_downscaling.3.weight", name)[0]
    layers = sorted(int(m[1]) for k in sd if (m := _DECODER_LAYER.match(k)))
    hidden = _shape(sd, "image_encoder.blocks.0.mlp.lin1.weight", name)[0]
    size = (gh * patch, gw * patch)
    return {
        "embed_dim": dim,
        "depth": len(blocks),
        "num_heads": dim // head_dim,
        "global_attn_indexes": tuple(i for i, (r, _) in rows.items() if r == global_rows),
        "window_size": windows.pop() if windows else 0,
        "patch_size": patch,
        "image_size": size[0] if size[0] == size[1] else size,
        "in_channels": in_ch,
        "mlp_ratio": hidden / dim,
        "prompt_dim": _shape(sd, "prompt_encoder.no_mask_embed.weight", name)[1],
        "mask_in_chans": mask_in,
        "decoder_depth": len(layers),
        "decoder_heads": decoder_heads,
        "decoder_mlp_dim": _shape(sd, "mask_decoder.transformer.layers.0.mlp.lin1.weight", name)[0],
        "iou_head_hidden_dim": _shape(sd, "mask_decoder.iou_prediction_head.layers.0.weight", name)[
            0
        ],
        "num_multimask_outputs": _shape(sd, "mask_decoder.mask_tokens.weight", name)[0] - 1,
    }


def abstract_sam(config: Mapping) -> Sam:
    """A `Sam` of `config` (from `infer_sam_config`) without allocating its weights."""
    kw = dict(config)
    image_size = kw.pop("image_size")
    return nnx.eval_shape(
        lambda: build_sam(size="vit_b", input_size=image_size, rngs=nnx.Rngs(0), **kw)
    )


def _adapt_channels(sd: dict, in_channels: int, name: str) -> dict:
    key = "image_encoder.patch_embed.proj.weight"
    have = np.shape(sd[key])[1]
    if in_channels == have:
        return sd
    if in_channels == 1 and have == 3:
        # Summing over RGB equals feeding the grey image replicated to three channels.
        return {**sd, key: np.asarray(sd[key]).sum(axis=1, keepdims=True)}
    raise ValueError(f"{name}: {key!r} takes {have} channels; cannot make {in_channels}")


def to_original(
    sd: Mapping[str, np.ndarray], *, layout: str = "auto", name: str = "checkpoint"
) -> tuple[dict, str]:
    """`(state dict in segment_anything's names, the layout it came in)`."""
    if layout not in ("auto", "original", "hf"):
        raise ValueError(f"unknown SAM layout {layout!r}; known: auto, original, hf")
    found = detect_layout(sd, name=name)
    if layout != "auto" and layout != found:
        raise ValueError(f"{name}: --layout={layout}, but its keys are in the {found} layout")
    return (hf_to_original(sd, name=name) if found == "hf" else dict(sd)), found


def load_sam(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    in_channels: int = 3,
    decoder_heads: int = 8,
) -> tuple[Sam, dict]:
    """`(model, info)`: a `Sam` of the size the checkpoint file at `path` holds.

    `info` has the detected `layout` and the inferred `config`. `in_channels=1` folds
    a three-channel patch embedding for grey input.
    """
    from lmjax.models.weight_files import read_checkpoint

    name = str(path)
    sd, found = to_original(read_checkpoint(path), layout=layout, name=name)
    config = infer_sam_config(sd, decoder_heads=decoder_heads, name=name)
    sd = _adapt_channels(sd, in_channels, name)
    config["in_channels"] = in_channels
    model = original_to_nnx(sd, abstract_sam(config), name=name)
    return model, {"layout": found, "config": config}
