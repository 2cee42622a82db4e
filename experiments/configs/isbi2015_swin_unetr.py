"""Swin-UNETR segmentation on ISBI 2015 (lower-limb paper, sections II-B to II-F).

Amador Sanchez et al. (IEEE Access 2025), the transformer alternative to the paper's
U-Net: MONAI's Swin-UNETR (`swin_unetr`) segmenting one disc per landmark with
Dice-CE, coordinates by Method 3 (pixels above the channel's min-max midpoint,
largest component, probability-weighted centroid). Table 2 gives its training
settings, Table 3 its errors by mask radius and coordinate method.

Paper vs this config ("=": the same):

  network       paper: MONAI Swin-UNETR, patch 4, feature size 96, depths 2-2-18-2,
                       heads 3-6-12-24, MONAI's defaults otherwise (no dropout,
                       instance norm)
                here:  `gpu` = (MONAI fixes patch 2: here the last up block
                       upsamples by 4, see `lmjax.models.swin_unetr`); `cpu` feature
                       size 24, depths 2-2-2-2, the same heads (2-core budget)
  encoder init  paper: ImageNet Swin-S
                here:  random (nothing is downloaded; `model.pretrained` loads only a
                       MONAI Swin-UNETR state dict, table "swin_unetr_monai", patch 2)
  input         paper: 3 x 512 x 512 ROI of one joint, intensities divided by the
                       image's maximum
                here:  the whole cephalogram, one grey channel, per-image z-score
                       (the heatmap config's); `gpu` 640 x 512 (ISBI's aspect; both
                       sides multiples of 64, as patch 4 and four merges need);
                       `cpu` 256 x 192
  masks         paper: discs of radius 15 px at 512 x 512 (Table 2); Swin-UNETR is
                       best at r = 7 (Table 3, Method 3: 1.20 vs 1.27 mm at r = 15)
                here:  15 px scaled with the rows: 18.75 px (`gpu`), 7.5 px (`cpu`);
                       `--config.task.radius` is worth sweeping
  loss          paper: Dice + cross-entropy, uniform weights
                here:  = (`dice_ce`: sigmoid Dice, smoothing 1 (not given), + BCE)
  coordinates   paper: Method 3
                here:  = (`midpoint`)
  optimizer     paper: Adam with layer-wise learning-rate decay (rate not given)
                here:  Adam, no layer decay (`optim.layer_decay` can be set: the
                       model numbers its Swin blocks)
  schedule      paper: Table 2, Swin-UNETR: 1e-4, batch 4 (8 for the knee), 100
                       epochs (50 for the ankle); no warm-up or clipping named
                here:  `gpu` 1e-4 constant, batch 4, 3400 steps (100 epochs of 135),
                       no warm-up or clipping; `cpu` 5e-4 cosine, 50 warm-up steps,
                       clipping at norm 1, batch 8, 800 steps
  plateau       paper: none
                here:  lmjax's reduce-on-plateau (patience 10 evaluations), which
                       cannot fire in `gpu`'s 10 or `cpu`'s 4 evaluations
  precision     paper: not given
                here:  `gpu` bf16, `cpu` float32
  augmentation  paper: p = 0.5: rotation +-10 deg, scaling +-0.1, translation +-0.1
                here:  = (`lower_limb` preset; translation as a fraction of the input)
  tuning        paper: 5-fold cross-validation of learning rate, batch and epochs; the
                       final model by the lowest loss
                here:  none (Table 2's values); the checkpoint with the lowest
                       validation MRE
  data          paper: 919 full lower-limb X-rays (private), 8 landmarks, one network
                       per joint, 80 / 20 split
                here:  ISBI 2015: 19 cephalometric landmarks, 150 training images
                       less a tenth for validation, test1

Arguments:

  gpu    the paper's network at 640 x 512, r = 18.75 px, bf16, batch 4, 3400 steps.
  cpu    a 2-core budget: 256 x 192, feature size 24, two blocks a stage, the
         paper's heads (8 channels each), batch 8, lr 5e-4 cosine, 800 steps.
  smoke  cpu for 2 steps of batch 2.

    lmjax train --workdir=runs/isbi_swin \
        --config=experiments/configs/isbi2015_swin_unetr.py:gpu
    lmjax evaluate --workdir=runs/isbi_swin --split=test1 --ground_truth=senior

A 400-step CPU run: `experiments/results/isbi2015_zoo_cpu/`.
"""

import pathlib

import ml_collections

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")


def _heatmap_config(arg: str):
    return configs.load(f"{_HEATMAP}:{arg}", resolved=False)


def get_config(arg: str = "cpu"):
    if arg not in ("gpu", "cpu", "smoke"):
        raise ValueError(f"argument must be gpu, cpu or smoke, got {arg!r}")
    c = _heatmap_config(arg)
    c.paper = (
        "lower-limb paper: Swin-UNETR (patch 4, feature 96, depths 2-2-18-2) segmenting "
        "circle masks (r=15 at 512), Dice-CE, Method 3 coordinates (ISBI 2015)"
    )
    c.data.augment = "lower_limb"
    c.model = ml_collections.ConfigDict(
        {
            "name": "swin_unetr",
            "feature_size": 96,
            "depths": (2, 2, 18, 2),
            "num_heads": (3, 6, 12, 24),
            "window_size": 7,
            "patch_size": 4,
            "drop_path_rate": 0.0,
            "norm": "instance",
        }
    )
    c.task.mode = "segmentation"
    c.task.target = "circle"
    c.task.losses = {"dice_ce": 1.0}
    c.task.extractor = "midpoint"
    c.task.deep_supervision = False
    c.optim.name = "adam"
    if arg == "gpu":
        c.data.input_size = (640, 512)
        c.optim.schedule = "constant"
        c.optim.learning_rate = 1e-4
        c.optim.warmup_steps = 0
        c.optim.clip_norm = None
        c.train.batch_size = 4
        c.train.steps = 3400
        c.train.eval_every = 340
    else:
        c.data.input_size = (256, 192)
        c.model.feature_size = 24
        c.model.depths = (2, 2, 2, 2)
        c.optim.schedule = "cosine"
        c.optim.learning_rate = 5e-4
        c.train.batch_size = 8
        c.train.steps = 800
        c.train.eval_every = 200
    c.task.radius = 15.0 * c.data.input_size[0] / 512
    if arg == "smoke":
        c.train.steps = 2
        c.train.eval_every = 2
        c.train.log_every = 1
        c.train.batch_size = 2
    return c
