"""The exported program as an ONNX graph, by jax2onnx (`lmjax export --format=onnx`).

jax2onnx converts a function's jaxpr primitive by primitive; a model using a
primitive it has no converter for fails here with jax2onnx's own message, and
the StableHLO export (`lmjax export`, the default) remains. The graph has one
input `images` `[B, H, W, 1]` with a symbolic batch and the outputs `coords`
`[B, K, 2]` and `confidence` `[B, K]`, as `lmjax.exported` expects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lmjax.data.types import LandmarkDataError
from lmjax.exported import INPUT_NAME, OUTPUT_NAMES

OPSET = 23


def available() -> bool:
    """Whether jax2onnx is installed."""
    try:
        import jax2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def to_onnx_bytes(fn: Callable, input_hw: tuple[int, int]) -> bytes:
    """The serialized ONNX model of `fn(images [B, H, W, 1]) -> (coords, confidence)`.

    Raises:
      LandmarkDataError: jax2onnx is not installed, or cannot convert `fn`.
    """
    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise LandmarkDataError(
            "lmjax export --format=onnx needs jax2onnx (pip install 'lmjax[onnx]')"
        ) from e
    # Its IR serializer logs one line per constant of unset type; the graph is complete.
    logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
    try:
        model = to_onnx(
            fn,
            [("B", *input_hw, 1)],
            model_name="lmjax",
            opset=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
        )
    except Exception as e:  # jax2onnx raises several types for unsupported primitives
        raise LandmarkDataError(f"jax2onnx cannot convert this model: {e}") from e
    return model.SerializeToString()


__all__ = ["OPSET", "available", "to_onnx_bytes"]
