"""HRNet with landmark and segmentation decoders on the phantom (fluoroscopy paper).

Hresko and Drotar, "Segmentation-Informed Landmark Regression for Robust Localization
in Fluoroscopic Imaging" (MIDL 2026 submission), sections 2.2-2.4 and Table 2: an
HRNet encoder feeding a landmark-heatmap decoder and a bone-segmentation decoder,
trained with the proposed loss (Dice-CE + KL + anatomical consistency) against MSE
and NCC. The built-in phantom (procedural AP pelvis radiographs with six bone masks)
stands in for the paper's fluoroscopy data.

Paper vs this config ("=": the same):

  data          paper: 366 fluoroscopy images of 6 cadaver specimens (Grupp et al.
                       2020), 14 bilateral landmarks, 6 bones + background
                here:  the phantom: 200 images of 256 x 256, 16 landmarks (14
                       bilateral, 2 midline), 6 bones (sacrum, L5, hip bones,
                       femurs) + background (the paper's data is not here)
  protocol      paper: leave one specimen out (six models), the rest split 90 / 10
                       into training and validation
                here:  one model on the phantom's fixed 140 / 30 / 30 split (it has
                       no specimens)
  input         paper: 180 x 180 (1536 x 1536 less a 50 px border, downsampled 8x),
                       padded to 192 x 192; intensities scaled to [0, 1]
                here:  256 x 256 resized to 192 x 192 (`_cpu` 128 x 128);
                       intensities divided by the bit depth (`unit`; the paper does
                       not say how it scales)
  encoder       paper: "HRNet-based", variant not given
                here:  HRNet-W32 as the pose network (stem 64, modules 1-4-3, four
                       blocks per branch), batch norm, He-normal init, no
                       pretraining (lmjax's guesses); `_cpu` W8 with one module per
                       stage, one block per branch, stem 16
  decoders      paper: two of the same shape: successive upsampling convs, each
                       followed by residual blocks (two conv-BN-ReLU, identity skip);
                       14 heatmaps, 7 segmentation logits; counts and widths not given
                here:  two 2x transposed-conv upsamplings from the 1/4 map, widths
                       (W, W), one residual block each; 16 heatmaps, 7 logits. `mse`
                       and `ncc` have no segmentation decoder (the paper does not
                       say whether its baselines keep it)
  target        paper: Gaussian heatmaps, sigma not given
                here:  sigma 2 px (lmjax's choice)
  proposed      paper: 1.0 Dice-CE (bones) + 0.1 KL (log-softmax heatmaps) + 10.0
                       visibility: weighted MAE (2 where absent) of 0 / 0.5 / 1
                       (not predicted / outside / inside the predicted bone)
                here:  = (`segmentation/dice_ce`, `kl_heatmap`,
                       `anatomical_consistency`); "predicted" means a peak sigmoid
                       above 0.5 (not given). It has no gradient, as the paper's;
                       `_soft` swaps in `soft_anatomical_consistency`, which has one
                       (lmjax's addition)
  baselines     paper: MSE and NCC, not defined further
                here:  `mse`: heatmap MSE of the raw maps; `ncc`: 1 minus the Pearson
                       correlation of each channel with its target
  coordinates   paper: argmax of the sigmoid of each heatmap
                here:  = (`sigmoid_argmax`)
  optimizer     paper: AdamW 1e-4 (weight decay not given), batch 32, 1000 epochs
                here:  AdamW 1e-4 constant, weight decay 1e-2 (PyTorch's default),
                       batch 32, 4400 steps (1000 epochs of 140); `_cpu` 1e-3 (the
                       paper's rate barely moves in 300 steps) after 20 warm-up
                       steps, batch 8, 300 steps
  validation    paper: every 100 epochs; the checkpoint with the lowest mean
                       Euclidean distance on validation
                here:  = (every 440 steps; lowest validation MRE); `_cpu` every 100
  augmentation  paper: Table 1, each at p 0.5: zoom 1.0-1.3, rotation +-0.17 rad,
                       contrast gamma 0.7-1.5 (MONAI)
                here:  = (`fluoroscopy` preset)
  metrics       paper: Euclidean distance in pixels
                here:  MRE and SDR in mm (the phantom's spacing), in the 256 x 256
                       frame

Arguments, `LOSS[_soft][_cpu]` with LOSS `mse`, `ncc` or `proposed` (default):
  mse       heatmap MSE only; no segmentation decoder (num_regions 0).
  ncc       1 - NCC per heatmap; no segmentation decoder.
  proposed  "segmentation/dice_ce" 1.0 + kl_heatmap 0.1 + anatomical_consistency
            10.0; `_soft` with `soft_anatomical_consistency` instead.
  _cpu      2 CPU cores in minutes: HRNet-W8, 128 x 128, batch 8, 300 steps,
            AdamW 1e-3.

Without `_cpu` the settings are for a GPU:

    lmjax train --config=experiments/configs/phantom_hrnet.py:proposed --workdir=DIR
    lmjax train --config=experiments/configs/phantom_hrnet.py:mse_cpu --workdir=DIR2
    lmjax evaluate --workdir=DIR --split=test

CPU runs of both (4000 steps: MSE 152.7 mm, proposed 3.32 mm on the test split):
experiments/results/phantom_hrnet/README.md.
"""

import ml_collections

from lmjax.configs.phantom import get_config as phantom_config

LOSSES = {
    "mse": {"heatmap_mse": 1.0},
    "ncc": {"heatmap_ncc": 1.0},
    "proposed": {
        "segmentation/dice_ce": 1.0,
        "kl_heatmap": 0.1,
        "anatomical_consistency": 10.0,
    },
}


def get_config(arg: str = "proposed") -> ml_collections.ConfigDict:
    loss, *options = arg.split("_")
    if (
        loss not in LOSSES
        or not set(options) <= {"soft", "cpu"}
        or ("soft" in options and loss != "proposed")
    ):
        raise ValueError(f"phantom_hrnet: argument {arg!r} is not mse|ncc|proposed[_soft][_cpu]")
    cpu = "cpu" in options
    c = phantom_config("")
    c.paper = (
        "fluoroscopy paper (Hresko and Drotar, segmentation-informed landmark "
        f"regression), Table 2, {loss} loss, on the phantom"
    )
    c.data.input_size = (128, 128) if cpu else (192, 192)
    c.data.normalize = "unit"  # the paper scales intensities to [0, 1]
    c.data.augment = "fluoroscopy"  # Table 1, each step at p = 0.5

    c.model = ml_collections.ConfigDict()
    c.model.name = "hrnet"
    c.model.width = 8 if cpu else 32
    c.model.stem_features = 16 if cpu else 64
    c.model.num_modules = (1, 1, 1) if cpu else (1, 4, 3)
    c.model.num_blocks = (1, 1, 1, 1) if cpu else (4, 4, 4, 4)
    c.model.decoder_blocks = 1
    if loss in ("mse", "ncc"):
        c.model.num_regions = 0  # proposed: the landmark set's regions (6 on the phantom)

    c.task.mode = "heatmap"
    c.task.target = "gaussian"
    c.task.sigma = 2.0
    losses = dict(LOSSES[loss])
    if "soft" in options:
        losses["soft_anatomical_consistency"] = losses.pop("anatomical_consistency")
    c.task.losses = losses
    c.task.consistency_regions = "predicted"
    c.task.extractor = "sigmoid_argmax"
    c.task.deep_supervision = False

    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-3 if cpu else 1e-4
    c.optim.weight_decay = 1e-2
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 20 if cpu else 0
    c.optim.clip_norm = None
    c.optim.plateau_patience = 1000  # the paper keeps the rate fixed

    c.train.batch_size = 8 if cpu else 32
    c.train.steps = 300 if cpu else 4400
    c.train.eval_every = 100 if cpu else 440  # the paper: every 100 epochs
    c.train.log_every = 20 if cpu else 50
    return c
