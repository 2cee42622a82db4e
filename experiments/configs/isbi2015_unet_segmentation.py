"""Segmentation U-Net on ISBI 2015: the lower-limb paper's circle masks and Method 3.

Amador Sanchez et al., "Optimization and Benchmarking of Image Segmentation for
Improved Landmark Detection in Lower Limb X-Rays ..." (IEEE Access 2025), sections
II-A to II-F: one sigmoid channel per landmark segments a disc around it, trained
with Dice-CE; coordinates come from Method 3 on the host (pixels above the channel's
min-max midpoint, largest component, probability-weighted centroid). Only the task
is the paper's: network, input and schedule are those of lmjax's heatmap config
(`isbi2015_unet_heatmap.py`). The paper's own network (TernausNet-16) is
`isbi2015_vgg.py:unet`.

Paper vs this config ("=": the same):

  network       paper: U-Net with a VGG16 encoder (TernausNet-16), ImageNet weights
                here:  lmjax's nnU-Net-style `unet` (resize upsampling, instance norm),
                       random init; `gpu` 32 features, 7 levels; `cpu` 16, 6 levels
                       (the heatmap config's, so that the two compare like for like)
  deep sup.     paper: none (one output)
                here:  Dice-CE also on the coarser decoder outputs, weights halving
                       (inherited from the heatmap config)
  input         paper: 3 x 512 x 512 ROI of one joint, intensities divided by the
                       image's maximum
                here:  the whole cephalogram, one grey channel, per-image z-score;
                       `gpu` 640 x 512, `cpu` 256 x 192 (the heatmap config's)
  masks         paper: discs of radius 15 px at 512 x 512 (the U-Net's best of a single
                       pixel and radii 7, 15, 30, 45)
                here:  15 px scaled with the rows: 18.75 px at 640, 7.5 px at 256
  loss          paper: Dice + cross-entropy, uniform weights
                here:  = (`dice_ce`: sigmoid Dice, smoothing 1 (not given), + BCE)
  coordinates   paper: Method 3
                here:  = (`midpoint`)
  optimizer     paper: Adam with layer-wise learning-rate decay, 1e-5, batch 4, 25
                       epochs (Table 2, U-Net)
                here:  the heatmap config's: Adam, no layer decay, cosine with warm-up,
                       clipping at norm 1; `cpu` 2e-3, batch 8, 800 steps (47 epochs of
                       135); `gpu` 1e-3, batch 16, 20 000 steps
  plateau       paper: none
                here:  lmjax's reduce-on-plateau (patience 10 evaluations): can fire in
                       `gpu`'s 20 evaluations, not in `cpu`'s 4
  precision     paper: not given
                here:  `gpu` bf16, `cpu` float32
  augmentation  paper: p = 0.5: rotation +-10 deg, scaling +-0.1, translation +-0.1
                here:  = (`lower_limb` preset; translation as a fraction of the input)
  tuning        paper: 5-fold cross-validation of learning rate, batch and epochs; the
                       final model by the lowest loss
                here:  none; the checkpoint with the lowest validation MRE
  data          paper: 919 full lower-limb X-rays (private), 8 landmarks, one network
                       per joint, 80 / 20 split
                here:  ISBI 2015: 19 cephalometric landmarks, 150 training images
                       less a tenth for validation, test1

Arguments:

  cpu    256 x 192, 16 features, r = 7.5 px, 800 steps: about 35 minutes on 2 CPU
         cores.
  gpu    640 x 512, 32 features, r = 18.75 px, bf16.
  smoke  cpu for 2 steps of batch 2.

    lmjax train --workdir=runs/isbi_seg \
        --config=experiments/configs/isbi2015_unet_segmentation.py:cpu
    lmjax evaluate --workdir=runs/isbi_seg --split=test1 --ground_truth=senior

The `cpu` run (test1 MRE 1.94 mm, senior) is in
`experiments/results/isbi2015_unet_segmentation_cpu/`.
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
