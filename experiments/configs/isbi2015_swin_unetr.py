"""Swin-UNETR segmentation on ISBI 2015 (lower-limb paper, Sections II-B and II-C).

The lower-limb paper's transformer alternative to its U-Net: MONAI's Swin-UNETR
(`swin_unetr`) with patch 4, feature size 96, depths 2-2-18-2 and heads 3-6-12-24,
segmenting one disc per landmark with Dice-CE, trained with Adam at the learning
rate of its Table 2 (1e-4, batch 4, 100 epochs: 135 training images / 4 = 34 steps
an epoch). Coordinates come from Method 3 (pixels above the channel's min-max
midpoint, largest component, probability-weighted centroid). Data and splits are the
heatmap config's; the augmentation is the paper's ("lower_limb" preset). Arguments:

  gpu    the paper's network at 640x512 (ISBI's aspect, 512 wide; both sides
         multiples of 64 as patch 4 and four merges need), r = 15 px scaled to the
         rows (18.75), bf16, batch 4, 3400 steps.
  cpu    a 2-core budget: 256x192, feature size 24, two blocks a stage,
         the paper's heads (3-6-12-24, 8 channels each), batch 8, lr 5e-4 cosine.
  smoke  cpu for 2 steps.

Where it differs from the paper: the paper crops each joint to a 512x512 ROI and
trains one network per joint (8 lower-limb landmarks); here one network sees the
whole cephalogram (19 landmarks). Table 2 compares the architectures at r = 15;
Table 3 finds Swin-UNETR best at r = 7 (Method 3: 1.20 mm vs 1.27 mm), so
`--config.task.radius` is worth sweeping. The paper starts the encoder from
ImageNet Swin-S weights and uses layer-wise learning-rate decay; nothing is
downloaded here, so the encoder starts from scratch unless `model.pretrained`
names a MONAI checkpoint (table "swin_unetr_monai", patch size 2) and
`optim.layer_decay` is set (the model numbers its Swin blocks). The image has one
channel (the paper replicates gray to 3). MONAI fixes the patch size at 2; see
`lmjax.models.swin_unetr` for the patch-4 decoder.

    lmjax train --workdir=runs/isbi_swin \
        --config=experiments/configs/isbi2015_swin_unetr.py:gpu
    lmjax evaluate --workdir=runs/isbi_swin --split=test1 --ground_truth=senior
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
