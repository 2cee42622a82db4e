"""experiments/configs/isbi2015_unet_heatmap.py with `model.norm` declared, so that
`--config.model.norm=batch|none` can override it (ConfigDict flags only set existing
fields). The argument is passed on: `unet_ablation_config.py:cpu`."""

import importlib.util
import pathlib

_BASE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "isbi2015_unet_heatmap.py"


def get_config(arg: str = "cpu"):
    spec = importlib.util.spec_from_file_location("isbi2015_unet_heatmap", _BASE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.model.norm = "instance"  # the U-Net's default
    return c
