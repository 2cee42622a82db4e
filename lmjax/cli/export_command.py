"""`lmjax export`: a trained run as one file for `lmjax predict --model`."""

from __future__ import annotations

from absl import flags

from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import tta_scales

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's lowering platforms


def define_export(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "the trained run's folder (required)", flag_values=fv)
    flags.DEFINE_string(
        "output", None, "the exported model file to write, e.g. model.lmjax (required)",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "format",
        "stablehlo",
        ["stablehlo", "onnx"],
        "stablehlo: a jax.export program (runs wherever jax does); onnx: an ONNX graph "
        "for onnxruntime (needs jax2onnx: pip install 'lmjax[onnx]')",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "flip_tta",
        False,
        "also average with the prediction on the mirrored image, inside the program "
        "(done anyway when the config says train.flip_tta)",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "tta_scales",
        None,
        "multi-scale TTA factors inside the program, replacing the config's "
        "train.tta_scales (--tta_scales= for none)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "refine",
        True,
        "include the run's refinement stage (WORKDIR/refine) in the program; "
        "--norefine exports the global model only (ONNX always does)",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "platforms",
        "cpu,cuda",
        "what the StableHLO program is lowered for (cpu, cuda, rocm, tpu)",
        flag_values=fv,
    )


def cmd_export(inv: Invocation) -> int:
    from lmjax.export import export_workdir

    workdir, output = inv.value("workdir"), inv.value("output")
    if not workdir or not output:
        raise UsageError("--workdir and --output are required")
    scales = tta_scales(inv)  # given but empty: (), which drops the config's
    platforms = tuple(inv.value("platforms") or ())
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if not platforms or unknown:
        raise UsageError(
            f"--platforms: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; "
            f"choose from {', '.join(PLATFORMS)}"
        )
    meta = export_workdir(
        workdir,
        output,
        fmt=inv.value("format"),
        flip_tta=inv.value("flip_tta"),
        tta_scales=scales,
        platforms=platforms,
        refine=inv.value("refine"),
    )
    stages = " + ".join(meta["stages"])
    print(
        f"wrote {output}: {meta['program']['serialization']} program ({stages}, "
        f"{len(meta['landmark_set']['names'])} landmarks, input "
        f"{'x'.join(map(str, meta['preprocessing']['input_size']))}) for "
        f"{', '.join(meta['program']['platforms'])}"
    )
    return 0
