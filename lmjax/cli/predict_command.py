"""The commands that read a finished run's predictions: calibrate and predict."""

from __future__ import annotations

import os

from absl import flags

from lmjax.cli.data_commands import write_json
from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import define_anonymize, define_output, tta_scales

# ---------------------------------------------------------------- calibrate


def define_calibrate(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir",
        None,
        "the trained run's folder (required); it must hold a calibration split "
        "(trained with data.calib_fraction > 0)",
        flag_values=fv,
    )
    define_output(fv, "the radii (as <workdir>/conformal.json)")


def cmd_calibrate(inv: Invocation) -> int:
    from lmjax.train.calibration import calibrate_workdir, fit_shape_model
    from lmjax.train.restore import read_config
    from lmjax.train.setup import load_calibration

    workdir = inv.value("workdir")
    if not workdir:
        raise UsageError("--workdir is required")
    if load_calibration(read_config(workdir)) is None:
        raise UsageError(
            f"{workdir}: the run has no calibration split; set data.calib_fraction "
            "(e.g. --config.data.calib_fraction=0.2) when training"
        )
    fit_shape_model(workdir)
    write_json(calibrate_workdir(workdir), inv.value("output"))
    return 0


# ---------------------------------------------------------------- predict


def define_predict(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir", None, "the trained run's folder (this or --model)", flag_values=fv
    )
    flags.DEFINE_string(
        "model",
        None,
        "a file written by lmjax export, run without the training code or config "
        "(this or --workdir)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "where <stem>.json, <stem>.png, <stem>.labelme.json and predictions.csv go (required)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "flip_tta", False, "average with the prediction on the mirrored image", flag_values=fv
    )
    flags.DEFINE_list(
        "tta_scales",
        None,
        "multi-scale TTA: also predict on the input zoomed about its centre by these "
        "factors (e.g. 0.9,1.1) and average; replaces the config's train.tta_scales",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "review",
        False,
        "also write review.csv and review.json: images and their landmarks ranked "
        "most doubtful first (missed, implausible shape, conformal radius scaled by "
        "confidence)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "skip_existing",
        False,
        "keep the outputs of images an earlier run of the same model wrote whole (resume a "
        "large job); predictions.csv, provenance.json and the review still list every image",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "overlays",
        True,
        "write <stem>.png, the landmarks drawn on the image (--nooverlays: only the JSON, "
        "LabelMe and table files; encoding the PNGs is most of the time per image)",
        flag_values=fv,
    )
    define_anonymize(
        fv,
        "the outputs' names (flat in --output_dir) and every path written into them; "
        "the console still names failed files",
    )
    flags.DEFINE_string(
        "name_map",
        None,
        "with --anonymize_names: also write this CSV of input -> output name (keep it "
        "apart from the outputs: it names the inputs)",
        flag_values=fv,
    )


def cmd_predict(inv: Invocation) -> int:
    from lmjax.predict import predict_files

    workdir, model = inv.value("workdir"), inv.value("model")
    if bool(workdir) == bool(model) or not inv.value("output_dir"):
        raise UsageError("--output_dir and one of --workdir and --model are required")
    if model and not os.path.isfile(model):
        raise UsageError(f"--model={model}: not a file (a training folder goes to --workdir)")
    if not inv.args:
        raise UsageError("name at least one image file or folder to predict")
    scales = tta_scales(inv)  # before any file is read
    output_dir = inv.value("output_dir")
    anonymize = inv.value("anonymize_names")
    if not anonymize and (inv.value("anonymize_salt") or inv.value("name_map")):
        raise UsageError("--anonymize_salt and --name_map go with --anonymize_names")
    done = predict_files(
        model or workdir,
        inv.args,
        output_dir,
        flip_tta=inv.value("flip_tta"),
        review=inv.value("review"),
        tta_scales=scales,
        skip_existing=inv.value("skip_existing"),
        anonymize_names=anonymize,
        anonymize_salt=inv.value("anonymize_salt"),
        name_map=inv.value("name_map"),
        overlays=inv.value("overlays"),
    )
    kept = f" (kept {done.kept} from an earlier run)" if done.kept else ""
    print(f"wrote {done.written} of {len(done.inputs)} predictions to {output_dir}{kept}")
    # Every failure was listed on stderr; a script must not take the job as complete.
    return 1 if done.failed else 0
