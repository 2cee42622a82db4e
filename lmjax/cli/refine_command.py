"""`lmjax refine`: train the refinement stage of a finished map-head run."""

from __future__ import annotations

from absl import flags

from lmjax.cli.framework import Invocation, UsageError


def define_refine(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir",
        None,
        "the trained run's folder; the stage goes to WORKDIR/refine",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "evaluate", True, "evaluate the refined run on its default split afterwards", flag_values=fv
    )


def refine_settings(workdir: str, overrides: list[str]):
    """The run's `refine` section with `--config.refine.FIELD=VALUE` overrides."""
    from lmjax import configs
    from lmjax.train.restore import read_config

    others = [o for o in overrides if not o.removeprefix("config.").startswith("refine.")]
    if others:
        raise UsageError(
            f"lmjax refine takes only --config.refine.FIELD overrides, got --config.{others[0]}"
        )
    config = read_config(workdir)
    if overrides:
        config = configs.apply_overrides(config, overrides)
    return config.refine


def cmd_refine(inv: Invocation) -> int:
    from lmjax.cli.model_commands import _evaluate_workdir
    from lmjax.task import HEADS
    from lmjax.train import checkpoint as ckpt_lib
    from lmjax.train.refine import train_refine
    from lmjax.train.restore import read_config

    workdir = inv.value("workdir")
    if not workdir:
        raise UsageError("--workdir is required")
    if not ckpt_lib.has_checkpoint(workdir):
        raise FileNotFoundError(f"{workdir}: no checkpoint found; train with lmjax train first")
    if inv.present("config"):
        raise UsageError("lmjax refine reads the run's own config; give --config.refine.FIELD only")
    mode = read_config(workdir).task.mode
    if mode not in HEADS:
        raise UsageError(f"{workdir}: task.mode {mode!r} has no refinement stage (map heads only)")
    settings = refine_settings(workdir, inv.overrides)
    summary = train_refine(workdir, refine_config=settings)
    if inv.value("evaluate"):
        _evaluate_workdir(workdir, None, None)
    del summary
    return 0
