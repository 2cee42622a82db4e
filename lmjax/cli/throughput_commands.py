"""The commands that measure a model's speed and memory: benchmark, compile-check."""

from __future__ import annotations

from absl import flags

from lmjax.cli.data_commands import write_json
from lmjax.cli.framework import Invocation, UsageError
from lmjax.cli.model_commands import define_output

# ---------------------------------------------------------------- benchmark


def define_benchmark(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("steps", 20, "timed train steps after warm-up", flag_values=fv)
    flags.DEFINE_enum(
        "data",
        "fake",
        ["fake", "real"],
        "fake: one batch kept on the devices; real: also time the training input pipeline",
        flag_values=fv,
    )
    flags.DEFINE_integer("infer_batch", 32, "batch of the inference throughput", flag_values=fv)
    define_output(fv, "the results")


def cmd_benchmark(inv: Invocation) -> int:
    from lmjax.train.trainers import trainer_for

    trainer = trainer_for(inv.config)
    if trainer.benchmark is None:
        raise UsageError(f"task.mode {inv.config.task.mode!r} has no benchmark")
    result = trainer.benchmark(
        inv.config,
        steps=inv.value("steps"),
        data=inv.value("data"),
        infer_batch=inv.value("infer_batch"),
    )
    print(trainer.format_benchmark(result))
    write_json(result, inv.value("output"))
    return 0


# ---------------------------------------------------------------- compile-check


def define_compile_check(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer(
        "devices",
        None,
        "devices of the mesh; on the CPU backend that many (fake) CPU devices, elsewhere "
        "it must equal the device count; default: all devices",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "device_memory_gb",
        None,
        "memory of one device in GiB for the fits verdict; default: what the runtime "
        "reports (nothing on CPU)",
        flag_values=fv,
    )
    define_output(fv, "the results")


def cmd_compile_check(inv: Invocation) -> int:
    import jax

    from lmjax.train.trainers import trainer_for

    trainer = trainer_for(inv.config)
    if trainer.compile_check is None:
        raise UsageError(f"task.mode {inv.config.task.mode!r} has no compile-check")
    devices = inv.value("devices")
    if devices is not None:
        if devices < 1:
            raise UsageError(f"--devices must be at least 1, got {devices}")
        # Only the CPU backend makes devices, and only before it starts, which
        # jax.device_count() below does.
        jax.config.update("jax_num_cpu_devices", devices)
        if jax.device_count() != devices:
            raise UsageError(
                f"--devices={devices}, but the {jax.default_backend()} backend has "
                f"{jax.device_count()} devices; JAX_PLATFORMS=cpu checks {devices} "
                "fake CPU devices"
            )
    result = trainer.compile_check(inv.config, device_memory_gb=inv.value("device_memory_gb"))
    print(trainer.format_compile_check(result))
    write_json(result, inv.value("output"))
    return 0 if result["fits"] is not False else 1
