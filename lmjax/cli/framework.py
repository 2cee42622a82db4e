"""What every `lmjax COMMAND` shares: its own flags, help, one-line errors, exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator

from absl import flags

from lmjax.cli.metavars import COMMAND_METAVARS, METAVARS

EXIT_OK = 0
EXIT_NO = 1  # the command ran and its result says no
EXIT_USAGE = 2  # a usage or input error, told in one line

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")
CONFIG_PREFIX = "--config."
LOGGERS = ("absl", "orbax", "jax")  # third-party loggers hidden below --verbosity=1


class UsageError(ValueError):
    """A missing or contradictory flag or argument; the message is one line."""


@dataclasses.dataclass
class Invocation:
    """One run of a command: its parsed flags, positional arguments and config."""

    command: str
    flags: flags.FlagValues
    args: list[str]
    overrides: list[str]  # FIELD=VALUE of each --config.FIELD=VALUE, in order
    config: object = None  # the resolved config of commands that take --config

    def value(self, name: str):
        return self.flags[name].value

    def present(self, name: str) -> bool:
        return bool(self.flags[name].present)


@dataclasses.dataclass(frozen=True)
class Command:
    """A row of the command table: the one source of its synopsis, help and flags."""

    name: str
    synopsis: str  # `lmjax NAME ...`, as the README shows it
    description: str  # one line
    define: Callable[[flags.FlagValues], None]  # declares the command's own flags
    run: Callable[[Invocation], int]
    positional: bool = False  # takes file arguments
    config: bool = False  # takes --config and --config.FIELD=VALUE
    device: bool = False  # compiles: --compilation_cache_dir and the multi-process flags
    # Reads a trained run: the compilation cache is on by default (a per-user folder).
    cache_by_default: bool = False

    def flag_values(self) -> flags.FlagValues:
        fv = flags.FlagValues()
        if self.config:
            from lmjax import configs

            flags.DEFINE_string(
                "config",
                configs.DEFAULT,
                "config file whose get_config(ARG) gives the run's config; default: "
                "the phantom U-Net, lmjax/configs/phantom.py",
                flag_values=fv,
            )
        self.define(fv)
        if self.device:
            define_device_flags(fv, cache_by_default=self.cache_by_default)
        flags.DEFINE_integer(
            "verbosity",
            0,
            "1: also show the INFO logs of absl, Orbax and JAX; 0: warnings and errors only",
            flag_values=fv,
        )
        return fv


def define_device_flags(fv: flags.FlagValues, *, cache_by_default: bool = False) -> None:
    # The default is resolved in `_prepare` (`compilation.enable_for_command`), so that
    # help and flag parsing do not import jax.
    fallback = "$XDG_CACHE_HOME/lmjax/jax (~/.cache/lmjax/jax)" if cache_by_default else "off"
    flags.DEFINE_string(
        "compilation_cache_dir",
        None,
        "JAX's persistent compilation cache folder, so a later run loads compiled "
        f"programs instead of compiling them; default: $LMJAX_COMPILATION_CACHE, else "
        f"{fallback}; empty or 0: off",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "multi-process: where process 0's coordinator listens (with --num_processes "
        "and --process_id)",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_processes", None, "multi-process: how many processes form the job", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", None, "multi-process: this process's index, 0 to N-1", flag_values=fv
    )
    flags.DEFINE_enum(
        "cpu_collectives",
        None,
        ["gloo", "mpi"],
        "multi-process: cross-process collectives on CPU",
        flag_values=fv,
    )


def list_formats() -> list[str]:
    """The dataset formats `--format` accepts, from the format registry."""
    try:
        from lmjax.data.formats import list_formats as registered
    except ImportError:  # a tree without the registry module
        from lmjax.data.datasets import FORMATS

        return list(FORMATS)
    return list(registered())


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------- help


def _flags_in_order(fv: flags.FlagValues) -> list[flags.Flag]:
    seen, out = set(), []
    for name in fv:
        flag = fv[name]
        if id(flag) not in seen:
            seen.add(id(flag))
            out.append(flag)
    return out


def flag_usage(flag: flags.Flag, command: str = "") -> str:
    """`--name=METAVAR`, `--[no]name` for booleans."""
    if isinstance(flag, flags.BooleanFlag):
        return f"--[no]{flag.name}"
    metavar = COMMAND_METAVARS.get((command, flag.name), METAVARS.get(flag.name))
    if metavar is None:
        enum = getattr(flag.parser, "enum_values", None)
        if enum and len(enum) <= 4:
            metavar = "|".join(enum)
        elif enum:
            metavar = "NAME"
        else:
            metavar = {"int": "N", "float": "X", "list": "A,B"}.get(flag.flag_type(), "TEXT")
    return f"--{flag.name}={metavar}"


def _flag_help(flag: flags.Flag) -> str:
    text = flag.help
    enum = getattr(flag.parser, "enum_values", None)
    if enum:  # absl puts the choices in front; the usage column shows them already
        text = text.removeprefix(f"<{'|'.join(enum)}>: ")
    if enum and len(enum) > 4:
        text += f"; one of {', '.join(enum)}"
    if "default" not in text:
        if isinstance(flag, flags.BooleanFlag):
            text += f" (default: {'true' if flag.default else 'false'})"
        elif flag.default not in (None, "", []):
            default = flag.default
            if isinstance(default, list):
                default = ",".join(map(str, default))
            text += f" (default: {default})"
    return text


def _entry(left: str, text: str, width: int = 100, column: int = 30) -> list[str]:
    lead = f"  {left}"
    body = textwrap.wrap(text, width - column) or [""]
    if len(lead) + 2 > column:
        lines = [lead]
    else:
        lines = [lead.ljust(column) + body.pop(0)]
    return lines + [" " * column + line for line in body]


def format_help(command: Command, fv: flags.FlagValues) -> str:
    """What `lmjax COMMAND --help` prints: synopsis, description, the command's flags."""
    lines = [f"usage: {command.synopsis}", "", command.description, "", "flags:"]
    for flag in _flags_in_order(fv):
        lines += _entry(flag_usage(flag, command.name), _flag_help(flag))
        if flag.name == "config" and command.config:
            lines += _entry(
                "--config.FIELD=VALUE",
                "set one field of the config, e.g. --config.train.steps=100 (repeatable; "
                "every field with its default: lmjax.configs.base)",
            )
    return "\n".join(lines)


def format_usage(commands: dict[str, Command]) -> str:
    """What `lmjax --help` prints: the commands, one line each."""
    width = max(len(name) for name in commands) + 2
    lines = [
        "usage: lmjax COMMAND [--flag=value ...]",
        "       lmjax COMMAND --help | lmjax --help | lmjax --version",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}{c.description}" for name, c in commands.items()]
    lines += [
        "",
        "`lmjax COMMAND --help` lists that command's flags. Exit status: 0 done; 1 the "
        "result says no;",
        "2 a usage or input error, told in one line naming the flag or file.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- parsing


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """`(other args, FIELD=VALUE of every --config.FIELD=VALUE)`; `--` ends the flags."""
    rest, overrides = [], []
    for i, arg in enumerate(args):
        if arg == "--":
            rest += args[i:]
            break
        if arg.startswith(CONFIG_PREFIX):
            overrides.append(arg.removeprefix(CONFIG_PREFIX))
        else:
            rest.append(arg)
    return rest, overrides


def _unknown_flag(error: flags.UnrecognizedFlagError, fv: flags.FlagValues) -> str:
    name = error.flagname
    known = [f.name for f in _flags_in_order(fv)]
    close = difflib.get_close_matches(name.removeprefix("no"), known, n=1, cutoff=0.6)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return f"unknown flag --{name}{hint}"


def wants_help(args: list[str]) -> bool:
    head = args[: args.index("--")] if "--" in args else args
    return any(a in HELP_FLAGS for a in head)


def parse(command: Command, fv: flags.FlagValues, args: list[str]) -> Invocation:
    """Parses `args` against the command's own flags.

    Raises:
      UsageError: an unknown flag, a bad value, or positional arguments that the
        command does not take.
    """
    rest, overrides = split_overrides(args) if command.config else (args, [])
    try:
        positional = fv([f"lmjax {command.name}", *rest])[1:]
    except flags.UnrecognizedFlagError as e:
        raise UsageError(_unknown_flag(e, fv)) from None
    except flags.Error as e:
        raise UsageError(one_line(e)) from None
    if positional and not command.positional:
        raise UsageError(f"unexpected arguments: {' '.join(positional)}")
    return Invocation(command.name, fv, positional, overrides)


# ---------------------------------------------------------------- running


@contextlib.contextmanager
def log_levels(verbosity: int) -> Iterator[None]:
    """Library INFO logs (Orbax's checkpoint lines, ...) only at `verbosity >= 1`.

    The previous levels come back afterwards, for callers that run commands in-process.
    """
    from absl import logging as absl_logging

    level = logging.INFO if verbosity >= 1 else logging.WARNING
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    saved_absl = absl_logging.get_verbosity()
    if verbosity >= 1:
        # The absl handler formats the INFO lines; it logs to stderr only once the
        # global flags count as parsed (this command parses its own).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO if verbosity >= 1 else absl_logging.WARNING)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        absl_logging.set_verbosity(saved_absl)
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)


def _prepare(inv: Invocation, command: Command) -> None:
    """Joins a multi-process job and turns on the compilation cache, before any compile."""
    from lmjax import parallel

    if command.device:
        parallel.initialize(
            coordinator_address=inv.value("coordinator_address"),
            num_processes=inv.value("num_processes"),
            process_id=inv.value("process_id"),
            cpu_collectives=inv.value("cpu_collectives"),
        )
        from lmjax.compilation import enable_for_command

        # JAX opens the cache once per process, at the first compile.
        enable_for_command(inv.value("compilation_cache_dir"), reader=command.cache_by_default)
    else:
        parallel.initialize()  # under SLURM every process of the job must join


def _error(command: str, message: str) -> None:
    print(f"lmjax {command}: error: {one_line(message)}", file=sys.stderr)


# Input that cannot be used; everything else raised is a bug and keeps its traceback.
INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def execute(command: Command, args: list[str]) -> int:
    """Runs `lmjax COMMAND ARGS...`; returns the exit status."""
    fv = command.flag_values()
    if wants_help(args):
        print(format_help(command, fv))
        return EXIT_OK
    try:
        inv = parse(command, fv, args)
    except UsageError as e:
        _error(command.name, str(e))
        return EXIT_USAGE
    with log_levels(inv.value("verbosity")), warnings.catch_warnings():
        # Data problems are listed by the command itself, once.
        warnings.simplefilter("ignore", UserWarning)
        try:
            if command.config:
                from lmjax import configs

                inv.config = configs.load(inv.value("config"), inv.overrides)
            _prepare(inv, command)
            return command.run(inv)
        except INPUT_ERRORS as e:
            _error(command.name, str(e))
            return EXIT_USAGE
        except RuntimeError as e:
            from lmjax.train.loop import TrainingError

            if not isinstance(e, TrainingError):
                raise
            _error(command.name, str(e))
            return EXIT_NO
        except KeyboardInterrupt:
            print(f"lmjax {command.name}: interrupted", file=sys.stderr)
            return 130
