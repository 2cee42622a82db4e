"""Host side of SAM decoder training: the model, its embedding cache, and every image's
item geometry in the model input frame.

Frames: an image is resized on its longest side to the model input `S x S` and
padded (`lmjax.data.sam_preprocess`); `to_original` maps model-input pixels back.
Item geometry, box prompts and predictions live in the model frame; errors are
measured after mapping back, in mm of the original image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
from flax import nnx

from lmjax import models
from lmjax.configs.base import MODEL_FIELDS
from lmjax.data import affine
from lmjax.data.embedding_cache import EmbeddingCache, file_sha256
from lmjax.data.items import item_vertices
from lmjax.data.sam_preprocess import input_hw
from lmjax.data.types import Dataset, LandmarkDataError
from lmjax.models.sam import Sam

# Decoder-only training: the mask decoder's parameters, nothing else.
DECODER = nnx.All(nnx.Param, nnx.PathContains("mask_decoder"))
EMBEDDINGS_FOLDER = "sam_embeddings"


class PromptedDecoder(nnx.Module):
    """SAM's prompt encoder and mask decoder without the image encoder.

    What decoder-only training carries. Its state paths are `Sam`'s, so
    `nnx.update(sam, nnx.state(view))` writes a trained view back into a full model.
    """

    def __init__(self, sam: Sam):
        self.image_size = tuple(sam.image_size)
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    decode = Sam.decode


def decoder_optimizer(config):
    """The optax transformation `config.optim` names, over `config.train.steps`."""
    from lmjax.train.optim import OptimConfig, make_optimizer

    optim = OptimConfig.from_any({**config.optim.to_dict(), "total_steps": config.train.steps})
    return make_optimizer(optim)[0]


def decoder_state(config, model: Sam, tx):
    """`(graphdef, TrainState)` of `model`'s `PromptedDecoder`: the decoder's parameters
    train, the prompt encoder rides along in `model_state`."""
    import jax
    import jax.numpy as jnp

    from lmjax.train.state import TrainState

    graphdef, params, rest = nnx.split(PromptedDecoder(model), DECODER, ...)
    step, key = jnp.zeros((), jnp.int32), jax.random.key(config.train.seed)
    return graphdef, TrainState(step, params, rest, tx.init(params), key, jnp.ones(()))


def model_options(config) -> dict:
    """`config.model` without the fields every family shares (the builder's options)."""
    return {k: v for k, v in config.model.to_dict().items() if k not in MODEL_FIELDS}


def input_side(config) -> int:
    """The square model input side `config.data.input_size` names."""
    h, w = (int(v) for v in config.data.input_size)
    if h != w:
        raise ValueError(f"data.input_size must be square for SAM, got {h}x{w}")
    return h


def build_sam(config, *, log=print) -> tuple[Sam, str]:
    """`(model, weights_id)`: SAM from `config.model.pretrained` (an `lmjax convert`
    output or any SAM checkpoint), else built at random from `config.train.seed`.

    `weights_id` names the encoder for the embedding cache: the file's sha256, or a
    hash of the random model's options and seed.

    Raises:
      ValueError: the weights' input size is not `data.input_size`, or their
        `lmjax convert` sidecar says another preprocessing than `sam.preprocess`.
    """
    side = input_side(config)
    options = model_options(config)
    path = config.model.pretrained
    if path:
        from lmjax.models.sam_convert import load_sam

        heads = int(options.get("decoder_heads") or 8)
        model, info = load_sam(path, decoder_heads=heads)
        sidecar = pathlib.Path(str(path) + ".json")
        if sidecar.exists():
            mode = json.loads(sidecar.read_text()).get("preprocessing", {}).get("mode")
            if mode and mode != config.sam.preprocess:
                raise ValueError(
                    f"{path}: converted for {mode} preprocessing (its sidecar "
                    f"{sidecar.name}), but sam.preprocess is {config.sam.preprocess!r}"
                )
        wid = weights_id(config)
        log(f"SAM weights {path} ({info['layout']} layout, sha256 {wid[:12]})")
    else:
        model = models.build_model(
            "sam",
            input_size=(side, side),
            in_channels=3,
            rngs=nnx.Rngs(config.train.seed),
            **options,
        )
        wid = weights_id(config)
    if tuple(model.image_size) != (side, side):
        raise ValueError(
            f"the SAM weights take {model.image_size[0]} px input, data.input_size is {side}"
        )
    return model, wid


def weights_id(config) -> str:
    """`build_sam`'s `weights_id` of `config`, without building or loading the model."""
    path = config.model.pretrained
    if path:
        return file_sha256(path)
    blob = json.dumps(
        [model_options(config), input_side(config), config.train.seed], sort_keys=True, default=str
    )
    return "random:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def embedding_cache(config, workdir, weights_id: str) -> EmbeddingCache:
    """The cache of this config's encoder (`data.cache_dir`, default `<workdir>/cache`)."""
    root = pathlib.Path(config.data.cache_dir or pathlib.Path(workdir) / "cache")
    prep = {
        "mode": config.sam.preprocess,
        "resample": config.sam.resample,
        "input_size": input_side(config),
        "in_channels": 3,
    }
    return EmbeddingCache(root / EMBEDDINGS_FOLDER, weights_id=weights_id, preprocessing=prep)


@dataclasses.dataclass
class PromptSet:
    """Everything the decoder steps read about N images with K items each.

    Geometry and sizes are in model-input pixels; `vertices_original` and
    `*_original` sizes in original pixels (for scoring masks there).
    """

    embeddings: np.ndarray  # [N, g, g, D] bfloat16
    vertices: np.ndarray  # [N, K, V, 2] float32, NaN padded
    vertex_valid: np.ndarray  # [N, K, V] bool
    visible: np.ndarray  # [N, K] bool
    radius: np.ndarray  # [N] landmark disc radius
    width: np.ndarray  # [N] outline stroke width
    jitter: np.ndarray  # [N] sam.jitter_mm
    shift: np.ndarray  # [N] sam.shift_mm
    to_original: np.ndarray  # [N, 3, 3]
    original_hw: np.ndarray  # [N, 2] int
    input_hw: np.ndarray  # [N, 2] int: the un-padded image in the model frame
    vertices_original: np.ndarray  # [N, K, V, 2]
    radius_original: np.ndarray  # [N]
    width_original: np.ndarray  # [N]
    kinds: tuple[str, ...]
    side: int  # the model input side S
    # [N, K, 4] a detector's per-class boxes in the model frame, NaN where not found
    detector_boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.embeddings)

    def subset(self, idx) -> PromptSet:
        """The prompt set of images `idx` only."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        keep = {"kinds", "side"}
        return PromptSet(**{k: v if k in keep or v is None else v[idx] for k, v in fields.items()})

    def batch(self, idx) -> dict[str, np.ndarray]:
        """The train step's inputs for images `idx` (with `detector_boxes` if set)."""
        keys = ("embeddings", "vertices", "vertex_valid", "visible", "radius", "width")
        out = {k: getattr(self, k)[idx] for k in (*keys, "jitter", "shift")}
        if self.detector_boxes is not None:
            out["detector_boxes"] = self.detector_boxes[idx].astype(np.float32)
        return out

    def with_detector_boxes(self, boxes_original: np.ndarray) -> PromptSet:
        """A copy whose `detector_boxes` are `boxes_original [N, K, 4]` (original
        pixels, NaN where not found) moved to the model frame."""
        boxes_original = np.asarray(boxes_original, np.float64)
        if boxes_original.shape != (*self.visible.shape, 4):
            raise ValueError(
                f"detector boxes {boxes_original.shape} do not match {len(self)} images "
                f"of {self.visible.shape[1]} items"
            )
        moved = np.stack(
            [
                affine.apply_boxes(b, np.linalg.inv(m))
                for b, m in zip(boxes_original, self.to_original, strict=True)
            ]
        )
        return dataclasses.replace(self, detector_boxes=moved)


def _mm_to_model_px(value_mm: float, spacing, from_original: np.ndarray) -> float:
    """mm -> model pixels, averaged over the axes (discs stay round)."""
    row_mm, col_mm = spacing
    return float(value_mm * (from_original[0, 0] / col_mm + from_original[1, 1] / row_mm) / 2)


def prompt_set(dataset: Dataset, config, cache: EmbeddingCache, model: Sam, *, log=print):
    """The `PromptSet` of every record of `dataset` (embeddings computed if not cached).

    Raises:
      LandmarkDataError: a record without a pixel spacing (sizes and jitter are in
        mm), or a visible outline or patch without vertices.
    """
    records = dataset.records
    for r in records:
        if r.spacing is None:
            raise LandmarkDataError(
                f"{r.name}: no pixel spacing; SAM prompts are sized in mm (set data.spacing)"
            )
    embeddings, metas = cache.embed_dataset(
        model, records, batch_size=config.sam.embed_batch, log=log, return_meta=True
    )
    ls = dataset.landmark_set
    vertices, _ = item_vertices(records, ls)
    n = len(records)
    side = input_side(config)
    to_original = np.zeros((n, 3, 3))
    original_hw = np.zeros((n, 2), np.int64)
    sizes = np.zeros((n, 6), np.float32)
    moved = np.empty_like(vertices)
    for i, (r, meta) in enumerate(zip(records, metas, strict=True)):
        original_hw[i] = meta["original_hw"]
        to_original[i] = np.asarray(meta["to_original"], np.float64)
        inv = np.linalg.inv(to_original[i])
        flat = vertices[i].reshape(-1, 2)
        moved[i] = affine.apply(flat, inv).reshape(vertices[i].shape)
        s = r.spacing
        sizes[i] = [
            _mm_to_model_px(ls.radius_mm, s, inv),
            _mm_to_model_px(ls.width_mm, s, inv),
            _mm_to_model_px(config.sam.jitter_mm, s, inv),
            _mm_to_model_px(config.sam.shift_mm, s, inv),
            ls.radius_mm / float(np.mean(s)),
            ls.width_mm / float(np.mean(s)),
        ]
    return PromptSet(
        embeddings=np.stack(embeddings),
        vertices=moved.astype(np.float32),
        vertex_valid=np.isfinite(moved).all(axis=-1),
        visible=np.stack([r.visible for r in records]) & np.isfinite(vertices[..., 0, 0]),
        radius=sizes[:, 0],
        width=sizes[:, 1],
        jitter=sizes[:, 2],
        shift=sizes[:, 3],
        to_original=to_original,
        original_hw=original_hw,
        input_hw=np.array([input_hw(tuple(hw), side) for hw in original_hw], np.int64),
        vertices_original=vertices,
        radius_original=sizes[:, 4],
        width_original=sizes[:, 5],
        kinds=tuple(ls.item_kinds),
        side=side,
    )


def checkpointer(workdir, config, *, read_only: bool = False):
    """Checkpoints ranked by validation mask IoU over every item (higher is better);
    `read_only` for readers (see `lmjax.train.checkpoint`)."""
    from lmjax.train import checkpoint as ckpt_lib

    return ckpt_lib.Checkpointer(
        workdir,
        max_to_keep=config.train.keep,
        best_metric="val_mask_iou",
        best_mode="max",
        read_only=read_only,
    )


def restore(workdir, *, which: str = "best"):
    """`(config, model, graphdef, state)` of the best (or "latest") checkpoint in `workdir`."""
    from lmjax.train import checkpoint as ckpt_lib
    from lmjax.train.restore import read_config

    if not ckpt_lib.has_checkpoint(workdir):
        raise FileNotFoundError(f"{workdir}: no checkpoint found; train with lmjax train first")
    config = read_config(workdir)
    model, _ = build_sam(config, log=lambda _: None)
    graphdef, state = decoder_state(config, model, decoder_optimizer(config))
    reader = checkpointer(workdir, config, read_only=True)
    state = ckpt_lib.restore_state(reader, state, which=which)
    return config, model, graphdef, state
