"""The pelvis paper's U-Net (section 3.1) on ISBI 2015 cephalograms.

Paper vs this config ("=": the same):

  blocks        paper: two per level, 3x3 conv + InstanceNorm + LeakyReLU(0.01)
                here:  = (`unet`, `norm="instance"`)
  down / up     paper: strided convolution / transposed convolution
                here:  = (`upsample="transpose"`)
  features      paper: 32, doubling per level
                here:  `gpu` 32; `cpu` 16 (2-core budget)
  levels        paper: "configured automatically by adding encoder steps"
                here:  6, what nnU-Net's rule (`unet_num_levels`) gives both inputs
  input         paper: 512
                here:  `gpu` 512 x 416 (ISBI's aspect, 512 rows); `cpu` 256 x 192
  loss          paper: MSE between Gaussian target and predicted heatmaps
                here:  = (`heatmap_mse` only)
  sigma         paper: a tuned hyperparameter, value not given
                here:  5 px at 512 rows, 2.5 at 256 (lmjax's choice)
  deep sup.     paper: "losses at every layer"
                here:  every decoder level (`num_deep_supervision = levels - 1`),
                       weights halving per level (weights not given)
  augmentation  paper: rotation, translation, shear, scale; no reflection
                here:  `pelvis` preset (ranges not given: lmjax's, see the preset)
  schedule      paper: 500 epochs; optimizer not given
                here:  Adam, 2e-3 (`cpu`) or 1e-3 (`gpu`), cosine with warm-up,
                       clipping at norm 1; `gpu` 8 400 x 16 (~1000 epochs of the
                       135 images: halve `train.steps` for 500); `cpu` 600 x 8
  decoding      paper: not given
                here:  local soft-argmax around the maximum (sub-pixel at ~1 mm/px)
  data          paper: 8 (then 72) pelvic landmarks, private
                here:  ISBI 2015: 19 cephalometric landmarks, 150 training images
                       less a tenth for validation, test1

Arguments: `gpu` (the paper's setting as far as ISBI allows), `cpu` (a 2-core
budget, the same as the KL recipe's 600 x 8 steps), `smoke` (2 steps).

    lmjax train --config=experiments/configs/isbi2015_pelvis_unet.py:cpu --workdir=runs/pelvis_unet
    lmjax evaluate --workdir=runs/pelvis_unet --split=test1 --ground_truth=senior
"""

import pathlib

from lmjax import configs

_BASE = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")


def get_config(arg: str = "cpu"):
    if arg not in ("cpu", "gpu", "smoke"):
        raise ValueError(f"argument must be cpu, gpu or smoke, got {arg!r}")
    c = configs.load(f"{_BASE}:{arg}", resolved=False)
    c.paper = "pelvis paper (000), section 3.1: nnU-Net-style heatmap U-Net, on ISBI 2015"
    c.data.augment = "pelvis"
    c.model.upsample = "transpose"
    c.task.target = "gaussian"
    c.task.losses = {"heatmap_mse": 1.0}
    c.task.extractor = "local_soft_argmax"
    c.task.deep_supervision = True
    c.model.num_levels = 6  # nnU-Net's rule for 512 x 416 and for 256 x 192 alike
    c.model.num_deep_supervision = c.model.num_levels - 1
    if arg == "gpu":
        c.data.input_size = (512, 416)
        c.model.features = 32
        c.task.sigma = 5.0
        c.train.steps = 8400
    else:
        c.task.sigma = 2.5
        if arg == "cpu":
            c.train.steps = 600
    return c
