"""Flax variable writes that keep tracing linear in the size of the model.

Flax writes `variable[...] = value` (BatchNorm's running statistics, every draw from
`nnx.Rngs`) through `Variable.set_value(value, index=...)`, which compares the
shardings of the old and the new value. A tracer has no sharding: asking raises an
AttributeError whose message walks every equation traced so far. Each write then costs
time proportional to the trace, and a model's trace is quadratic in its number of
norms and random draws: on 2 CPU cores HRNet-W32 took 40 s to trace one training
forward pass and longer to build abstractly (`nnx.eval_shape`, which every restore
uses).

A write of a tracer over the whole variable, with its shape and dtype, is a plain
replacement (Flax's own outcome when both values are tracers), so `install` sends
those writes down Flax's replacement path. Every other write is Flax's unchanged.
"""

from __future__ import annotations

import jax
from flax.nnx import variablelib

_flax_set_value = variablelib.Variable.set_value


def _set_value(self, value, *, index=variablelib.MISSING):
    if index is Ellipsis and isinstance(value, jax.core.Tracer):
        raw = self._raw_value
        if (
            isinstance(raw, jax.Array)
            and not variablelib.is_array_ref(raw)
            and value.shape == raw.shape
            and value.dtype == raw.dtype
        ):
            return _flax_set_value(self, value)
    return _flax_set_value(self, value, index=index)


def install() -> None:
    """Idempotent; lmjax.models calls it on import."""
    variablelib.Variable.set_value = _set_value
