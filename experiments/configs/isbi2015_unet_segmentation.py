"""Segmentation U-Net on ISBI 2015 (lower-limb paper: circle masks, Method 3 centroids).

Each landmark is a disc of radius r; the U-Net predicts one sigmoid channel per
landmark, trained with Dice-CE, and coordinates come from the lower-limb paper's
Method 3 on the host (pixels above the channel's min-max midpoint, largest
component, probability-weighted centroid). The paper's best radius is r=15 at
512x512; r scales with the input here (7.5 px at 256 rows). Everything else (data,
splits, U-Net, schedule) is the heatmap config's. Arguments as there:

  cpu  256x192 input, 16 features, r = 7.5 px, 800 steps: about 35 minutes on 2
       CPU cores.
  gpu  640x512 input, 32 features, r = 15 px, bf16.

    lmjax train --workdir=runs/isbi_seg \
        --config=experiments/configs/isbi2015_unet_segmentation.py:cpu
    lmjax evaluate --workdir=runs/isbi_seg --split=test1 --ground_truth=senior
"""

import pathlib

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")


def _heatmap_config(arg: str):
    return configs.load(f"{_HEATMAP}:{arg}", resolved=False)


def get_config(arg: str = "cpu"):
    c = _heatmap_config(arg)
    c.paper = (
        "lower-limb paper: U-Net segmentation of circle masks (r=15 at 512x512), "
        "Dice-CE, Method 3 coordinates (ISBI 2015)"
    )
    c.data.augment = "lower_limb"
    c.task.mode = "segmentation"
    c.task.target = "circle"
    c.task.radius = 15.0 * c.data.input_size[0] / 512
    c.task.losses = {"dice_ce": 1.0}
    c.task.extractor = "midpoint"
    if arg in ("cpu",):
        c.train.steps = 800  # the recorded run: test1 MRE 1.94 mm in 37 minutes of steps
    return c
