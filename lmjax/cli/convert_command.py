"""`lmjax convert`: a SAM checkpoint (segment_anything, MedSAM or HF layout) to lmjax's
safetensors file, with a JSON sidecar saying where it came from and how to feed it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile

from absl import flags

from lmjax.cli.framework import Invocation, UsageError, one_line

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def define_convert(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum(
        "layout",
        "auto",
        ["auto", "original", "hf"],
        "key layout of SRC: segment_anything's (also MedSAM's) or HF SamModel's; "
        "auto: detected from the keys",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "preprocessing",
        "sam",
        ["sam", "medsam"],
        "the input the weights expect, recorded in the sidecar: sam: ImageNet mean/std "
        "on 0-255; medsam: [0,1] scaling, no mean/std; both longest side to the input "
        "size, zero-padded bottom/right",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "decoder_heads",
        8,
        "attention heads of the mask decoder, which the weights' shapes do not show",
        lower_bound=1,
        flag_values=fv,
    )


def preprocessing(mode: str, size) -> dict:
    """How images are prepared for weights trained with `mode` ("sam" or "medsam")."""
    common = {
        "mode": mode,
        "resize": "longest_side",
        "input_size": size,
        "pad": "zeros, bottom and right, after scaling",
    }
    if mode == "sam":
        return {**common, "scale": "0-255", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return {**common, "scale": "min-max to [0, 1]", "mean": None, "std": None}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lmjax")
    except metadata.PackageNotFoundError:
        import lmjax

        return lmjax.__version__


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(src: pathlib.Path) -> dict:
    from lmjax.models.weight_files import read_checkpoint

    try:
        return read_checkpoint(src)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # a truncated or foreign file fails in many ways
        raise ValueError(f"{src}: not a readable checkpoint ({one_line(e)})") from None


def convert(src, dst, *, layout="auto", mode="sam", decoder_heads=8) -> dict:
    """Writes `dst` (safetensors, segment_anything names) and `dst.json`; returns the latter.

    Both files appear only once complete (written beside `dst`, then renamed).
    """
    from safetensors.numpy import save_file

    from lmjax.models import sam_convert

    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: the destination is the source")
    if not dst.parent.is_dir():
        raise NotADirectoryError(f"{dst.parent}: no such folder for the destination")
    name = str(src)
    sd, found = sam_convert.to_original(_read(src), layout=layout, name=name)
    config = sam_convert.infer_sam_config(sd, decoder_heads=decoder_heads, name=name)
    model = sam_convert.original_to_nnx(sd, sam_convert.abstract_sam(config), name=name)
    state = sam_convert.nnx_to_original(model)
    info = {
        "source": str(src),
        "source_sha256": _sha256(src),
        "layout": found,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "preprocessing": preprocessing(mode, config["image_size"]),
        "tensors": len(state),
        "ignored": sorted(k for k in sd if k not in state),
        "lmjax_version": _version(),
    }
    sidecar = dst.with_name(dst.name + ".json")
    temps = []
    try:
        for suffix in (".safetensors", ".json"):
            fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=suffix)
            os.close(fd)
            temps.append(pathlib.Path(tmp))
        save_file(state, str(temps[0]), metadata={"format": "segment_anything"})
        temps[1].write_text(json.dumps(info, indent=2) + "\n")
        os.replace(temps[1], sidecar)
        os.replace(temps[0], dst)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if not dst.exists():
            with contextlib.suppress(FileNotFoundError):
                sidecar.unlink()
        raise
    return info


def cmd_convert(inv: Invocation) -> int:
    if len(inv.args) != 2:
        raise UsageError(f"convert takes SRC and DST, got {len(inv.args)} arguments")
    src, dst = inv.args
    info = convert(
        src,
        dst,
        layout=inv.value("layout"),
        mode=inv.value("preprocessing"),
        decoder_heads=inv.value("decoder_heads"),
    )
    c = info["config"]
    print(
        f"{dst}: {info['tensors']} tensors from {src} ({info['layout']} layout; "
        f"width {c['embed_dim']}, depth {c['depth']}, input {c['image_size']}; "
        f"{info['preprocessing']['mode']} preprocessing); sidecar {dst}.json"
    )
    return 0
