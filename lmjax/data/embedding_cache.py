"""SAM image embeddings computed once per image and kept on disk in bf16.

A frozen encoder is a fixed function of (image, preprocessing, weights), so
decoder-only training reads its output instead of re-running ~1 TFLOP per image.
The key hashes the image content (sha256 of the file's bytes, not its path, so a copy
or a move still hits), the preprocessing dict, the weights id and an optional view id
(for augmented views). Entries follow `lmjax.data.cache`: `<key>.npy` (the bf16 bits
as uint16, which any NumPy reads back) and a `<key>.json` sidecar, both written to a
temporary name and renamed, the JSON last; an entry counts only when both are there.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from lmjax import progress
from lmjax.data.cache import _atomic_write
from lmjax.data.sam_preprocess import sam_preprocess
from lmjax.data.types import Record

EMBEDDING_CACHE_VERSION = 2  # 2: sidecars carry original_hw
BF16 = np.dtype(ml_dtypes.bfloat16)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha256(pixels: np.ndarray) -> str:
    """Content hash of an in-memory image; dtype and shape count, not just the bytes."""
    x = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    digest.update(x.tobytes())
    return digest.hexdigest()


def image_digest(image: str | os.PathLike | np.ndarray | Record) -> str:
    if isinstance(image, Record):
        image = image.image
    if isinstance(image, np.ndarray):
        return array_sha256(image)
    return file_sha256(image)


def _pixels(image: str | os.PathLike | np.ndarray | Record) -> np.ndarray:
    if isinstance(image, Record):
        image = image.image
    if isinstance(image, np.ndarray):
        return image
    from lmjax.data.image_io import read_radiograph

    return read_radiograph(image).pixels


def _embed(graphdef, state, images):
    import jax.numpy as jnp
    from flax import nnx

    # The bf16 cast happens on device: half the transfer, and the same rounding
    # (nearest-even) as ml_dtypes would apply on the host.
    return nnx.merge(graphdef, state).embed(images).astype(jnp.bfloat16)


_embed_jit = None


def _jitted_embed(model) -> Callable[[np.ndarray], Any]:
    """`images -> bf16 embeddings` of `model`'s current weights. One jitted function
    for all calls, the graph static: a second call with the same model shape reuses
    the compiled program (`lmjax predict` calls this once per batch of files)."""
    import jax
    from flax import nnx

    global _embed_jit
    if _embed_jit is None:
        _embed_jit = jax.jit(_embed, static_argnums=0)
    graphdef, state = nnx.split(model)
    return lambda images: _embed_jit(graphdef, state, images)


class EmbeddingCache:
    """Embeddings of one encoder (`weights_id`) under one `preprocessing` in `folder`.

    Args:
      folder: cache folder (created on the first write).
      weights_id: names the weights, e.g. the `source_sha256` of `lmjax convert`'s
        sidecar (add the compute dtype if it varies).
      preprocessing: how images are prepared; its "mode" ("sam" | "medsam"),
        "in_channels" and "resample" are passed to `sam_preprocess`, and its
        "input_size" (or "size"), when given, must be the model's (the `lmjax
        convert` sidecar's dict fits as is).
    """

    def __init__(self, folder: str | os.PathLike, *, weights_id: str, preprocessing: dict):
        self.folder = pathlib.Path(folder)
        self.weights_id = str(weights_id)
        self.preprocessing = dict(preprocessing)
        if self.preprocessing.get("mode") is None:
            raise ValueError("preprocessing needs a 'mode' ('sam' or 'medsam')")
        # Canonical JSON, so equal dicts give equal keys whatever their order.
        self._prep_json = json.dumps(self.preprocessing, sort_keys=True, default=str)
        self.hits = 0
        self.misses = 0

    def preprocess(self, pixels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """`sam_preprocess` with this cache's settings, for a model of input `size`."""
        p = self.preprocessing
        want = p.get("input_size") or p.get("size")
        if want is not None and int(want) != size:
            raise ValueError(f"preprocessing is for {want} px input, the model takes {size}")
        return sam_preprocess(
            pixels,
            mode=p["mode"],
            size=size,
            in_channels=int(p.get("in_channels", 3)),
            resample=p.get("resample", "bilinear"),
        )

    def key(self, image: str | os.PathLike | np.ndarray | Record, view: str | int = 0) -> str:
        """Key of an image file, in-memory array or record (by content), and view id."""
        ident = [
            EMBEDDING_CACHE_VERSION,
            image_digest(image),
            self._prep_json,
            self.weights_id,
            str(view),
        ]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[pathlib.Path, pathlib.Path]:
        return self.folder / f"{key}.npy", self.folder / f"{key}.json"

    def get(self, key: str) -> np.ndarray | None:
        """The bf16 embedding stored under `key`, or None (also for a damaged entry)."""
        npy, js = self._paths(key)
        if not (npy.exists() and js.exists()):
            return None
        try:
            meta = json.loads(js.read_text())
            bits = np.load(npy, allow_pickle=False)
            if bits.dtype != np.uint16 or list(bits.shape) != meta["shape"]:
                raise ValueError(f"holds {bits.dtype} {bits.shape}, sidecar says {meta['shape']}")
        except Exception as err:  # noqa: BLE001 - any damage means: compute it again
            msg = f"embedding cache entry {npy} is unreadable ({err}); recomputing"
            warnings.warn(msg, stacklevel=2)
            return None
        return bits.view(BF16)

    def meta(self, key: str) -> dict | None:
        """The sidecar of the entry under `key`, or None."""
        js = self._paths(key)[1]
        try:
            return json.loads(js.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, array: np.ndarray, meta: dict | None = None) -> None:
        """Stores `array` (cast to bf16) under `key`; readers never see half an entry."""
        bits = np.ascontiguousarray(np.asarray(array).astype(BF16)).view(np.uint16)
        info = {
            "version": EMBEDDING_CACHE_VERSION,
            "shape": list(bits.shape),
            "dtype": "bfloat16",
            "weights_id": self.weights_id,
            "preprocessing": self.preprocessing,
            **(meta or {}),
        }
        npy, js = self._paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(npy, lambda f: np.save(f, bits, allow_pickle=False))
        _atomic_write(js, lambda f: f.write(json.dumps(info, default=str).encode()))

    def embed_dataset(
        self,
        model,
        items: Sequence[str | os.PathLike | np.ndarray | Record],
        *,
        batch_size: int = 4,
        view: str | int = 0,
        log: Callable[[str], Any] | None = print,
        return_meta: bool = False,
    ) -> list[np.ndarray] | tuple[list[np.ndarray], list[dict]]:
        """bf16 `[h, w, D]` embeddings of `items` (paths, arrays or records), in order.

        Only missing entries are encoded, `batch_size` at a time with one jitted
        `model.embed`; the last batch is zero-padded so that every call has one shape
        and compiles once. Each entry's sidecar keeps `to_original`, the affine from
        the model input back to the image, and `original_hw`, the image's shape;
        `return_meta` also returns those sidecars.
        """
        keys = [self.key(item, view) for item in items]
        out: list[np.ndarray | None] = [self.get(k) for k in keys]
        todo = [i for i, e in enumerate(out) if e is None]
        self.hits += len(items) - len(todo)
        self.misses += len(todo)
        if todo:
            size = int(model.image_size[0])
            embed = _jitted_embed(model)
            with progress.Progress(len(todo), "SAM embeddings", unit="image") as bar:
                for start in range(0, len(todo), batch_size):
                    idx = todo[start : start + batch_size]
                    pixels = [_pixels(items[i]) for i in idx]
                    prepared = [self.preprocess(px, size) for px in pixels]
                    batch = np.stack([img for img, _ in prepared])
                    if len(idx) < batch_size:
                        pad = np.zeros((batch_size - len(idx), *batch.shape[1:]), batch.dtype)
                        batch = np.concatenate([batch, pad])
                    emb = np.asarray(embed(batch))
                    for j, i in enumerate(idx):
                        src = items[i].image if isinstance(items[i], Record) else items[i]
                        meta = {
                            "to_original": prepared[j][1].tolist(),
                            "original_hw": list(pixels[j].shape[:2]),
                            "source": None if isinstance(src, np.ndarray) else str(src),
                            "view": str(view),
                        }
                        self.put(keys[i], emb[j], meta)
                        out[i] = emb[j]
                    bar.advance(len(idx))
        if log is not None:
            log(
                f"SAM embeddings: {len(items) - len(todo)} cached, {len(todo)} computed "
                f"({self.folder})"
            )
        if return_meta:
            return out, [self.meta(k) or {} for k in keys]  # type: ignore[return-value]
        return out  # type: ignore[return-value]
