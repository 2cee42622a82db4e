"""Configuration: the schema of every field (`base`), the built-in phantom default
(`phantom`) and the one loader of config files (`load`)."""

from lmjax.configs.loader import (
    CONFIG_FILE,
    DEFAULT,
    ConfigError,
    apply_overrides,
    format_config,
    load,
    read_json,
    resolve,
    save_json,
    split_spec,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT",
    "ConfigError",
    "apply_overrides",
    "format_config",
    "load",
    "read_json",
    "resolve",
    "save_json",
    "split_spec",
]
