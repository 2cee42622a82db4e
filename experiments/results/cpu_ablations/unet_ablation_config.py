"""experiments/configs/isbi2015_unet_heatmap.py with `model.norm` declared, so that
`--config.model.norm=batch|none` can override it (ConfigDict flags only set existing
fields). The argument is passed on: `unet_ablation_config.py:cpu`."""

import pathlib

from lmjax import configs

_BASE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "isbi2015_unet_heatmap.py"


def get_config(arg: str = "cpu"):
    c = configs.load(f"{_BASE}:{arg}", resolved=False)
    c.model.norm = "instance"  # the U-Net's default
    return c
