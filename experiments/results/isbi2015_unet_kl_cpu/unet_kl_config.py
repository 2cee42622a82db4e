"""experiments/configs/isbi2015_unet_heatmap.py with the fluoroscopy paper's heatmap
loss in place of MSE + soft-argmax L1: KL divergence between the Gaussian target and
the spatial softmax of each channel, coordinates by argmax (as `isbi2015_hrnet.py`).
Everything else (network, deep supervision, schedule, augmentation) is unchanged.
The argument is passed on: `unet_kl_config.py:cpu`."""

import pathlib

from lmjax import configs

_BASE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "isbi2015_unet_heatmap.py"


def get_config(arg: str = "cpu"):
    c = configs.load(f"{_BASE}:{arg}", resolved=False)
    c.task.losses = {"kl_heatmap": 1.0}
    c.task.extractor = "sigmoid_argmax"
    return c
