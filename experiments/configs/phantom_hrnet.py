"""HRNet with landmark and segmentation decoders on the phantom (fluoroscopy paper).

Hresko and Drotar, "Segmentation-Informed Landmark Regression for Robust Localization
in Fluoroscopic Imaging" (MIDL 2026 submission), Table 2: HRNet trained with MSE
against the proposed loss, 1.0 Dice-CE (bone segmentation, 6 bones + background)
+ 0.1 KL (heatmaps, log-softmax over pixels) + 10.0 anatomical consistency (is each
landmark's sigmoid-argmax inside its bone?). Coordinates: argmax of the sigmoid.
AdamW 1e-4, batch 32, 1000 epochs, zoom 1.0-1.3 / rotation +-0.17 rad / gamma
0.7-1.5 (each p 0.5), input padded to 192 x 192. The phantom's six bones and 16
landmarks stand in for the paper's fluoroscopy data (Grupp et al. 2020, not here).

Arguments, `LOSS[_soft][_cpu]`:
  mse       heatmap MSE only; no segmentation decoder (num_regions 0).
  ncc       1 - normalised cross-correlation of each heatmap with its target, the
            paper's third loss; no segmentation decoder. The paper does not define
            it further; here NCC is the Pearson correlation over a channel's pixels.
  proposed  "segmentation/dice_ce" 1.0 + kl_heatmap 0.1 + anatomical_consistency
            10.0. The consistency loss of the paper (argmax, values 0/0.5/1) has no
            gradient; `_soft` uses `soft_anatomical_consistency`, which has one.
  _cpu      2 CPU cores in minutes: HRNet-W8 with one module per stage and one
            block per branch, stem 16, 128 x 128, batch 8, 300 steps, and AdamW
            1e-3 (10x the paper's, which barely moves in 300 steps).

The full settings (HRNet-W32, 192 x 192, batch 32, 4400 steps = 1000 epochs of the
140 phantom training images) are for a GPU; `_cpu` shrinks them:

    lmjax train --config=experiments/configs/phantom_hrnet.py:proposed --workdir=DIR
    lmjax train --config=experiments/configs/phantom_hrnet.py:mse_cpu --workdir=DIR2
    lmjax evaluate --workdir=DIR --split=test

CPU runs of both (4000 steps: MSE 152.7 mm, proposed 3.32 mm on the test split):
experiments/results/phantom_hrnet/README.md.

Guesses where the paper is silent: Gaussian sigma 2 px, AdamW weight decay 1e-2
(PyTorch's default), decoder widths (W, W) with one residual block per 2x
upsampling (transposed conv), batch-norm HRNet initialised He-normal.
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
