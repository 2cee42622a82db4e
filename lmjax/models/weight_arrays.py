"""Array conversions for imported weights: layout transforms and shape fits.

`TRANSFORMS` turn a PyTorch array into the Flax layout (Linear `[out, in]` ->
`[in, out]`, OIHW conv -> HWIO, transposed convs flipped too); `FITS` adapt the
result to the shape of the model variable it fills (position tables resized
bicubically, RGB kernels summed for one-channel input). `Rule`s of
`lmjax.models.weights` name them by their keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# ---------------------------------------------------------------- layout transforms


def _conv(w: np.ndarray) -> np.ndarray:
    """PyTorch `[out, in, *k]` -> Flax `[*k, in, out]` (any number of spatial dims)."""
    if w.ndim < 3:
        raise ValueError(f"a conv kernel needs at least 3 dimensions, got shape {w.shape}")
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _conv_transpose(w: np.ndarray) -> np.ndarray:
    """PyTorch ConvTranspose `[in, out, *k]` -> Flax ConvTranspose `[*k, in, out]`.

    PyTorch's transposed conv is the gradient of a conv: the input is dilated by the
    stride and correlated with the spatially flipped kernel. Flax (transpose_kernel
    False) correlates the dilated input with the kernel as given, so the kernel is
    flipped here; PyTorch's `padding=p` becomes Flax's `k - 1 - p` on each side.
    """
    if w.ndim < 3:
        raise ValueError(f"a transposed conv kernel needs 3+ dimensions, got shape {w.shape}")
    spatial = tuple(range(2, w.ndim))
    flipped = np.flip(w, axis=spatial)
    return np.transpose(flipped, (*spatial, 0, 1))


def _linear(w: np.ndarray) -> np.ndarray:
    if w.ndim != 2:
        raise ValueError(f"a Linear weight needs 2 dimensions, got shape {w.shape}")
    return w.T


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda w: w,
    "linear": _linear,
    "conv": _conv,
    "conv1d": _conv,
    "conv2d": _conv,
    "conv3d": _conv,
    "conv_transpose": _conv_transpose,
    "conv_transpose2d": _conv_transpose,
    "conv_transpose3d": _conv_transpose,
}


# ---------------------------------------------------------------- shape fits


def _cubic(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    """Keys cubic weights of the samples at offsets -1, 0, 1, 2 for a fraction `t`."""
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return far(t + 1), near(t), near(1 - t), far(2 - t)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` resampling matrix of PyTorch's bicubic `F.interpolate`
    (align_corners=False: half-pixel centres, a = -0.75, edge samples repeated)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        for offset, weight in zip(range(-1, 3), _cubic(src - base), strict=True):
            m[i, min(max(base + offset, 0), n_in - 1)] += weight
    return m


def resize_grid(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`[h, w, D] -> [H, W, D]` bicubically, as mmpretrain/timm resize position tables."""
    mh, mw = bicubic_matrix(grid.shape[0], size[0]), bicubic_matrix(grid.shape[1], size[1])
    out = np.einsum("ih,hwd,jw->ijd", mh, grid.astype(np.float64), mw)
    return out.astype(grid.dtype)


def _token_grid(n: int, model_grid: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """`(extra tokens, (h, w))` of a `[n, D]` position table, judged by the model's grid.

    In order: the model's own grid; a grid of the model's aspect ratio; a square grid;
    each first without, then with one leading class token.
    """
    gh, gw = model_grid
    checks = (
        lambda h, w: (h, w) == (gh, gw),
        lambda h, w: h * gw == w * gh,
        lambda h, w: h == w,
    )
    for check in checks:
        for extra in (0, 1):
            m = n - extra
            for h in range(1, math.isqrt(m) + 1) if m > 0 else ():
                for hh, ww in ((h, m // h), (m // h, h)):
                    if hh * ww == m and check(hh, ww):
                        return extra, (hh, ww)
    raise ValueError(f"cannot tell the token grid of a position table with {n} tokens")


def _fit_pos_embed(value: np.ndarray, shape: tuple, *, cls: str) -> np.ndarray:
    if len(shape) != 4 or value.ndim not in (2, 3, 4):
        return value
    _, gh, gw, d = shape
    if value.ndim == 4:
        grid = value.reshape(value.shape[-3:])
    else:
        tokens = value.reshape(-1, value.shape[-1])
        extra, (h, w) = _token_grid(tokens.shape[0], (gh, gw))
        grid = tokens[extra:].reshape(h, w, -1)
        if extra and cls == "add":  # ViTPose adds the class position to every patch
            grid = grid + tokens[0]
    if grid.shape[-1] != d:
        return value
    if grid.shape[:2] != (gh, gw):
        grid = resize_grid(grid, (gh, gw))
    return grid[None]


def _fit_in_channels(value: np.ndarray, shape: tuple) -> np.ndarray:
    """Sums an RGB kernel `[..., 3, out]` over its inputs for a one-channel model: for
    a gray image replicated to RGB this gives exactly the same outputs."""
    if value.ndim == len(shape) >= 2 and shape[-2] == 1 and value.shape[-2] != 1:
        return value.sum(axis=-2, keepdims=True)
    return value


FITS: dict[str, Callable[[np.ndarray, tuple], np.ndarray]] = {
    # `[1, N(+1), D]`, `[N, D]` or `[1, h, w, D]` -> the model's `[1, gh, gw, D]`: a
    # leading class token is dropped, the grid resized bicubically when it differs.
    "pos_embed": lambda v, s: _fit_pos_embed(v, s, cls="drop"),
    # The same, but a leading class position is added to every patch (ViTPose).
    "pos_embed_add_cls": lambda v, s: _fit_pos_embed(v, s, cls="add"),
    "in_channels": _fit_in_channels,
}
