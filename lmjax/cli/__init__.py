"""The `lmjax` command: `lmjax COMMAND [--flag=value ...]`.

Each command takes only its own flags (`lmjax COMMAND --help` lists them); the
commands that take a config also take `--config=PATH[:ARG]` and any number of
`--config.FIELD=VALUE`. Library INFO logs appear with `--verbosity=1`.

Exit status:
  0  done;
  1  the command ran and its result says no: compile-check does not fit,
     inspect found unusable files, training stopped (non-finite loss);
  2  a usage or input error (unknown command or flag, bad value, config or data
     that cannot be used), told in one line naming the flag or file.
A traceback means a bug in lmjax.
"""

from lmjax.cli.main import COMMANDS, main, run, version

# test_distributed evaluates a workdir the way `lmjax train` does.
from lmjax.cli.model_commands import _evaluate_workdir as _evaluate_workdir

__all__ = ["COMMANDS", "main", "run", "version"]
