"""Pretrained weights from the user's own checkpoint files into NNX models.

Nothing is downloaded: the user brings a file (`.safetensors`, `.npz`, or PyTorch's
`.pth`/`.pt`/`.bin` when PyTorch is installed) and names a mapping table:

    report = load_pretrained(model, "sapiens_0.3b.safetensors", "vit_sapiens")
    print(report.summary())

A table is a list of `Rule`s. Each rule matches checkpoint keys with a regular
expression (`re.fullmatch`), names the model parameter it fills (a dot-separated
path such as `blocks.3.attn.qkv.kernel`, which may use the match's groups), the
layout transform (`TRANSFORMS`: PyTorch `[out, in]` Linear -> Flax `[in, out]`,
OIHW conv -> HWIO, ...) and optionally a `fit` (`FITS`) that adapts the array to
the model's shape (position-table resizing, summing RGB kernels for gray input).
A rule whose target is None names a known key the model has no use for; such keys
are listed as `skipped`, not `unexpected`.

The model is changed in place: every target is cast to the dtype of the variable
it fills, and everything no rule fills keeps its initial value. Targets may be any
variable of the model (parameters and batch statistics); `missing` lists the
parameters and batch statistics no rule filled, less `ignore_missing` and, by
default, LoRA adapters (`LoRAParam`), which no base checkpoint holds. On a model
with LoRA applied a rule's target `....qkv.kernel` also finds the wrapped
`....qkv.base.kernel`, so tables are written for the plain model.

Model families register their tables with `register_weight_table`; the ViT tables
("vit_sapiens", "vit_timm", "vitpose") are at the end of this file. The training
loop calls `load_from_config` with `config.model`:

    model.pretrained         path of the checkpoint ("" = train from scratch)
    model.pretrained_table   table name (default: the model's, e.g. vit_pose -> vit_sapiens)
    model.pretrained_strict  raise unless every parameter is filled and every key used
    model.pretrained_ignore  more patterns of model paths allowed to stay missing
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models.lora import LoRALinear, LoRAParam

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = (".safetensors", ".npz", *TORCH_SUFFIXES)
_WRAPPERS = ("state_dict", "model", "module")  # nested dicts that hold the weights


# ---------------------------------------------------------------- reading files


def _to_numpy_dtype(name: str, key: str, value: np.ndarray) -> np.ndarray:
    if value.dtype == object:
        raise ValueError(f"{name}: entry {key!r} is not a numeric array")
    # bf16/fp8 (ml_dtypes) are widened: NumPy arithmetic on them is slow or absent.
    if value.dtype.name == "bfloat16" or value.dtype.name.startswith("float8"):
        return value.astype(np.float32)
    return value


def _torch_state(path: pathlib.Path) -> Mapping:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path}: reading a PyTorch checkpoint needs PyTorch, which is not installed. "
            "Install it (pip install torch), or convert the file to safetensors once on a "
            "machine that has it:\n"
            "  import torch; from safetensors.torch import save_file\n"
            f"  sd = torch.load('{path.name}', map_location='cpu', weights_only=True)\n"
            "  sd = sd.get('state_dict', sd)\n"
            "  save_file({k: v.contiguous() for k, v in sd.items()}, 'weights.safetensors')"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects beyond tensors and plain containers
        raise ValueError(
            f"{path}: PyTorch cannot load it with weights_only=True ({err}); load it in a "
            "trusted session and save its state dict as safetensors"
        ) from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype in (torch.bfloat16, torch.float16):
                value = value.float()
            return value.numpy()
        return value

    def convert(d):
        return {k: convert(v) if isinstance(v, Mapping) else to_numpy(v) for k, v in d.items()}

    return convert(state)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a checkpoint file, by key, as NumPy (bf16/fp16 widened to float32).

    `.safetensors` and `.npz` are read with NumPy alone; `.pth`/`.pt`/`.bin` need
    PyTorch and are loaded with `weights_only=True` (no pickled code runs). The
    weights of a training checkpoint are taken from its nested "state_dict" /
    "model" / "module" dict, and a leading "module." (DataParallel) is stripped
    from the keys.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown suffix, or entries that are not arrays (named).
      ImportError: a PyTorch file without PyTorch (the message says how to convert).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        state = load_file(str(path))
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except ValueError as err:  # object arrays need pickle: not weights
            raise ValueError(f"{path}: not a plain array archive ({err})") from None
    elif suffix in TORCH_SUFFIXES:
        state = _torch_state(path)
    else:
        raise ValueError(
            f"{path}: unknown checkpoint suffix {path.suffix!r}; known: {', '.join(SUFFIXES)}"
        )
    while True:  # unwrap {"state_dict": {...}, "meta": ...} and the like
        inner = [w for w in _WRAPPERS if isinstance(state.get(w), Mapping)]
        if not inner:
            break
        state = state[inner[0]]
    bad = sorted(k for k, v in state.items() if not isinstance(v, np.ndarray))
    if bad:
        kinds = ", ".join(f"{k} ({type(state[k]).__name__})" for k in bad[:5])
        raise ValueError(f"{path}: {len(bad)} entries are not arrays: {kinds}")
    out = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        out[name] = _to_numpy_dtype(str(path), key, value)
    return out


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


# ---------------------------------------------------------------- rules and report


@dataclasses.dataclass(frozen=True)
class Rule:
    """Checkpoint keys matching `source` (re.fullmatch) fill the model path `target`.

    `target`: a dot path that may use `\\1` / `\\g<name>` (`re.Match.expand`), a
    function of the match, or None for keys to skip on purpose. `transform` names
    an entry of `TRANSFORMS`, `fit` (optional) one of `FITS`, applied after it with
    the model variable's shape.
    """

    source: str
    target: str | Callable[[re.Match], str] | None
    transform: str = "identity"
    fit: str | None = None

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"unknown transform {self.transform!r}; known: {', '.join(TRANSFORMS)}"
            )
        if self.fit is not None and self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}; known: {', '.join(FITS)}")
        re.compile(self.source)


@dataclasses.dataclass
class ImportReport:
    """What `load_pretrained` did; `ok` when nothing was missing, unexpected or mismatched."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, str, tuple, tuple]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    # checkpoint key -> the target its rule named, for unexpected keys with no such path
    no_target: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, first: int = 5) -> str:
        """Counts, and the first `first` names of each problem."""

        def some(items: Sequence[str]) -> str:
            more = f", ... ({len(items) - first} more)" if len(items) > first else ""
            return ", ".join(items[:first]) + more

        lines = [
            f"pretrained weights: {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched, "
            f"{len(self.skipped)} skipped"
        ]
        if self.missing:
            lines.append(f"  missing (kept their initial values): {some(self.missing)}")
        if self.unexpected:
            named = [
                f"{k} (-> {self.no_target[k]}: not in the model)" if k in self.no_target else k
                for k in self.unexpected
            ]
            lines.append(f"  unexpected (not loaded): {some(named)}")
        if self.mismatched:
            shown = [
                f"{k} -> {p}: {tuple(a)} vs model {tuple(b)}" for k, p, a, b in self.mismatched
            ]
            lines.append(f"  shape mismatch (not loaded): {some(shown)}")
        return "\n".join(lines)


WEIGHT_TABLES: dict[str, list[Rule]] = {}
TABLE_IGNORE: dict[str, tuple[str, ...]] = {}  # per table: model paths usually not in it
MODEL_TABLES: dict[str, str] = {}  # model registry name -> its default table


def register_weight_table(
    name: str,
    rules: Sequence[Rule],
    *,
    ignore_missing: Sequence[str] = (),
    model: str | Sequence[str] | None = None,
) -> None:
    """Adds the table `name` (a taken name is an error).

    `ignore_missing`: patterns of model paths the table never fills (e.g. "head"),
    applied whenever the table is used by name. `model`: registry name(s) of the
    model(s) this table is the default for (`config.model.pretrained_table` may then
    be omitted); a model keeps the first table registered for it.
    """
    if name in WEIGHT_TABLES:
        raise ValueError(f"weight table {name!r} is already registered")
    WEIGHT_TABLES[name] = list(rules)
    TABLE_IGNORE[name] = tuple(ignore_missing)
    for model_name in (model,) if isinstance(model, str) else (model or ()):
        MODEL_TABLES.setdefault(model_name, name)


def _dot(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def _variables(model: nnx.Module) -> tuple[dict, dict[str, str]]:
    """`{dot path: (path, variable)}` of every non-RNG variable, and LoRA aliases
    (`a.qkv.kernel` -> `a.qkv.base.kernel`)."""
    found = {
        _dot(p): (p, v)
        for p, v in nnx.to_flat_state(nnx.state(model))
        if not isinstance(v, nnx.RngState)
    }
    wrapped = [p for p, node in nnx.iter_graph(model) if isinstance(node, LoRALinear)]
    aliases = {}
    for path in wrapped:
        inner = _dot((*path, "base")) + "."
        for key in found:
            if key.startswith(inner):
                aliases[_dot(path) + "." + key[len(inner) :]] = key
    return found, aliases


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) or path.startswith(p + ".") for p in patterns)


def _rules(table: str | Sequence[Rule]) -> tuple[list[Rule], tuple[str, ...]]:
    if isinstance(table, str):
        if table not in WEIGHT_TABLES:
            known = ", ".join(sorted(WEIGHT_TABLES))
            raise ValueError(f"unknown weight table {table!r}; known: {known}")
        return WEIGHT_TABLES[table], TABLE_IGNORE[table]
    return list(table), ()


def load_pretrained(
    model: nnx.Module,
    checkpoint: str | os.PathLike | Mapping[str, np.ndarray],
    table: str | Sequence[Rule],
    *,
    strict: bool = False,
    ignore_missing: Sequence[str] = (),
    ignore_lora: bool = True,
) -> ImportReport:
    """Fills the variables of `model` that `table` maps from `checkpoint`, in place.

    Args:
      model: any NNX module (LoRA adapters applied or not).
      checkpoint: a file for `read_checkpoint`, or a dict of arrays.
      table: a registered table name (its `ignore_missing` patterns apply too) or rules.
      strict: raise instead of loading when anything is missing, unexpected or
        mismatched.
      ignore_missing: patterns of model paths (re.fullmatch, or a path prefix such as
        "head") that may stay unfilled without being reported missing.
      ignore_lora: LoRA adapter matrices are never reported missing.
    Returns:
      The `ImportReport`.
    Raises:
      ValueError: two keys fill the same variable; or, with `strict`, the report's
        summary when it is not `ok` (the model is then left unchanged).
    """
    arrays = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    rules, table_ignore = _rules(table)
    ignore = (*table_ignore, *ignore_missing)
    found, aliases = _variables(model)
    compiled = [(re.compile(r.source), r) for r in rules]
    report = ImportReport()
    writers: dict[str, str] = {}  # model path -> checkpoint key
    updates = []
    for key in sorted(arrays):
        hit = next(((m, r) for rx, r in compiled if (m := rx.fullmatch(key))), None)
        if hit is None:
            report.unexpected.append(key)
            continue
        match, rule = hit
        if rule.target is None:
            report.skipped.append(key)
            continue
        target = rule.target(match) if callable(rule.target) else match.expand(rule.target)
        path = target if target in found else aliases.get(target)
        if path is None:
            report.unexpected.append(key)
            report.no_target[key] = target
            continue
        if path in writers:
            raise ValueError(f"checkpoint keys {writers[path]!r} and {key!r} both fill {path}")
        writers[path] = key
        flat_path, var = found[path]
        shape = tuple(var[...].shape)
        value = np.asarray(arrays[key])
        try:
            value = TRANSFORMS[rule.transform](value)
            if rule.fit is not None:
                value = FITS[rule.fit](value, shape)
        except ValueError:
            pass  # the shape check below reports it
        if tuple(value.shape) != shape:
            report.mismatched.append((key, path, tuple(value.shape), shape))
            continue
        report.loaded.append(path)
        updates.append((flat_path, var.replace(jnp.asarray(value, var[...].dtype))))
    for path, (_, var) in found.items():
        if path in writers or not isinstance(var, nnx.Param | nnx.BatchStat):
            continue
        if ignore_lora and isinstance(var, LoRAParam):
            continue
        alias = next((a for a, p in aliases.items() if p == path), path)
        if not (_ignored(path, ignore) or _ignored(alias, ignore)):
            report.missing.append(path)
    report.loaded.sort()
    report.missing.sort()
    if strict and not report.ok:
        raise ValueError(report.summary(first=20))
    if updates:
        nnx.update(model, nnx.from_flat_state(updates))
    return report


CONFIG_KEYS = ("pretrained", "pretrained_table", "pretrained_strict", "pretrained_ignore")


def load_from_config(model: nnx.Module, model_config, *, log=print) -> ImportReport | None:
    """Loads `model_config.pretrained` (if set) into `model`; logs the summary.

    `model_config` is `config.model` (a ConfigDict or dict) with the keys in
    `CONFIG_KEYS` (see the module docstring); returns None when no file is set.
    """
    get = model_config.get
    path = get("pretrained", "") or ""
    if not path:
        return None
    table = get("pretrained_table", "") or MODEL_TABLES.get(get("name", ""), "")
    if not table:
        raise ValueError(
            f"model.pretrained is set but model {get('name', '')!r} has no default weight "
            f"table; set model.pretrained_table to one of {', '.join(sorted(WEIGHT_TABLES))}"
        )
    report = load_pretrained(
        model,
        path,
        table,
        strict=bool(get("pretrained_strict", False)),
        ignore_missing=tuple(get("pretrained_ignore", ()) or ()),
    )
    log(f"{path} ({table}):\n{report.summary()}")
    return report


# ---------------------------------------------------------------- ViT tables

_BACKBONE = r"(?:backbone\.)?"


def _vit_rules(
    *,
    patch: str,
    block: str,
    norm1: str,
    norm2: str,
    fc1: str,
    fc2: str,
    final_norm: str,
    pos_fit: str,
    skip: Sequence[str],
) -> list[Rule]:
    """Rules for a ViT whose checkpoint names are given as regex fragments."""
    b, n = _BACKBONE, rf"{block}\.(\d+)\."
    rules = [
        Rule(rf"{b}{patch}\.weight", "patch_embed.kernel", "conv2d", fit="in_channels"),
        Rule(rf"{b}{patch}\.bias", "patch_embed.bias"),
        Rule(rf"{b}pos_embed", "pos_embed", fit=pos_fit),
    ]
    for src, dst in ((norm1, "norm1"), (norm2, "norm2")):
        rules += [
            Rule(rf"{b}{n}{src}\.weight", rf"blocks.\1.{dst}.scale"),
            Rule(rf"{b}{n}{src}\.bias", rf"blocks.\1.{dst}.bias"),
        ]
    for src, dst in (
        (r"attn\.qkv", "attn.qkv"),
        (r"attn\.proj", "attn.proj"),
        (fc1, "fc1"),
        (fc2, "fc2"),
    ):
        rules += [
            Rule(rf"{b}{n}{src}\.weight", rf"blocks.\1.{dst}.kernel", "linear"),
            Rule(rf"{b}{n}{src}\.bias", rf"blocks.\1.{dst}.bias"),
        ]
    rules += [
        Rule(rf"{b}{final_norm}\.weight", "norm.scale"),
        Rule(rf"{b}{final_norm}\.bias", "norm.bias"),
    ]
    return rules + [Rule(s, None) for s in skip]


# mmpretrain's VisionTransformer as Sapiens and MedSapiens use it (mmpose checkpoints
# prefix it with "backbone."). The final norm is "ln1"; the heatmap head ("head.*")
# is skipped: its conv biases would have to be folded into batch norms, and its
# output layer rarely has the landmark count of the new task.
register_weight_table(
    "vit_sapiens",
    _vit_rules(
        patch=r"patch_embed\.projection",
        block="layers",
        norm1="ln1",
        norm2="ln2",
        fc1=r"ffn\.layers\.0\.0",
        fc2=r"ffn\.layers\.1",
        final_norm="ln1",
        pos_fit="pos_embed",
        skip=(rf"{_BACKBONE}cls_token", r"head\..*", r"data_preprocessor\..*"),
    ),
    ignore_missing=("head",),
    model="vit_pose",
)

# timm's VisionTransformer (and DeiT/MAE encoders in its layout): the class token is
# dropped from the position table; the classifier ("head", "fc_norm") is skipped.
register_weight_table(
    "vit_timm",
    _vit_rules(
        patch=r"patch_embed\.proj",
        block="blocks",
        norm1="norm1",
        norm2="norm2",
        fc1=r"mlp\.fc1",
        fc2=r"mlp\.fc2",
        final_norm="norm",
        pos_fit="pos_embed",
        skip=(rf"{_BACKBONE}cls_token", r"head\..*", r"fc_norm\..*"),
    ),
    ignore_missing=("head",),
)

# The original ViTPose code: timm names under "backbone.", final norm "last_norm",
# and a position table whose first (class) entry is added to every patch position.
register_weight_table(
    "vitpose",
    _vit_rules(
        patch=r"patch_embed\.proj",
        block="blocks",
        norm1="norm1",
        norm2="norm2",
        fc1=r"mlp\.fc1",
        fc2=r"mlp\.fc2",
        final_norm="last_norm",
        pos_fit="pos_embed_add_cls",
        skip=(rf"{_BACKBONE}cls_token", r"keypoint_head\..*"),
    ),
    ignore_missing=("head",),
)
