"""The fluoroscopy paper's HRNet landmark decoder on ISBI 2015 cephalograms.

Hresko and Drotar, "Segmentation-Informed Landmark Regression for Robust Localization
in Fluoroscopic Imaging" (MIDL 2026 submission), Table 2. ISBI 2015 has no bone
masks, so only the landmark decoder trains here: the segmentation decoder, its
Dice-CE and the anatomical-consistency term need region masks (the phantom config,
`phantom_hrnet.py`, is their test bed). What is left of the paper's loss is its
heatmap term, KL divergence between the Gaussian target and the log-softmax of
each channel; `mse` and `ncc` swap in the paper's MSE and NCC baselines.
Coordinates: argmax of the sigmoid (the paper's). AdamW 1e-4, batch 32; HRNet-W32.

Arguments, `LOSS[_cpu|_smoke]` with LOSS `kl` (default), `mse` or `ncc`:
  (none)  HRNet-W32 (modules 1-4-3, four blocks per branch), 512 x 416 input,
          Gaussian sigma 3 px, AdamW 1e-4, batch 32, 4 000 steps (~950 epochs of
          the 135 training images; the paper trains 1000 epochs).
  _cpu    2 CPU cores: HRNet-W16 with one module per stage and two blocks per
          branch, stem 32, 256 x 192, batch 8, AdamW 1e-3 with a cosine schedule.
  _smoke  2 steps of batch 2 at W8 (checks the wiring).

    lmjax train --config=experiments/configs/isbi2015_hrnet.py:kl_cpu --workdir=DIR
    lmjax evaluate --workdir=DIR --split=test1 --ground_truth=senior

Guesses where the paper is silent are those of `phantom_hrnet.py` (He-normal init,
decoder widths (W, W), one residual block per 2x upsampling, weight decay 1e-2).
The augmentation is the paper's Table 1 ("fluoroscopy" preset).
"""

import pathlib

import ml_collections

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")
LOSSES = {"kl": {"kl_heatmap": 1.0}, "mse": {"heatmap_mse": 1.0}, "ncc": {"heatmap_ncc": 1.0}}
VARIANTS = ("", "cpu", "smoke")


def _heatmap_config(arg: str):
    return configs.load(f"{_HEATMAP}:{arg}", resolved=False)


def get_config(arg: str = "kl") -> ml_collections.ConfigDict:
    loss, _, variant = arg.partition("_")
    if loss not in LOSSES or variant not in VARIANTS:
        raise ValueError(f"isbi2015_hrnet: argument {arg!r} is not kl|mse|ncc[_cpu|_smoke]")
    c = _heatmap_config({"": "gpu", "cpu": "cpu", "smoke": "smoke"}[variant])
    c.paper = (
        "fluoroscopy paper (Hresko and Drotar), Table 2: HRNet landmark decoder, "
        f"{loss} heatmap loss, on ISBI 2015 (no bone masks: no segmentation decoder)"
    )
    c.data.normalize = "unit"  # the paper scales intensities to [0, 1]
    c.data.augment = "fluoroscopy"
    c.model = ml_collections.ConfigDict(
        {
            "name": "hrnet",
            "width": 32,
            "stem_features": 64,
            "num_modules": (1, 4, 3),
            "num_blocks": (4, 4, 4, 4),
            "decoder_blocks": 1,
            "num_regions": 0,
        }
    )
    c.task.mode = "heatmap"
    c.task.target = "gaussian"
    c.task.sigma = 3.0
    c.task.losses = dict(LOSSES[loss])
    c.task.extractor = "sigmoid_argmax"
    c.task.deep_supervision = False
    c.task.compute_dtype = "float32"

    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 1e-2
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.clip_norm = None
    c.optim.plateau_patience = 1000  # the paper keeps the rate fixed

    if variant == "":
        c.data.input_size = (512, 416)
        c.task.compute_dtype = "bfloat16"
        c.train.batch_size = 32
        c.train.steps = 4000
        c.train.eval_every = 400
        c.train.log_every = 50
    else:
        c.data.input_size = (256, 192)
        c.model.width = 16 if variant == "cpu" else 8
        c.model.stem_features = 32 if variant == "cpu" else 16
        c.model.num_modules = (1, 1, 1)
        c.model.num_blocks = (2, 2, 2, 2) if variant == "cpu" else (1, 1, 1, 1)
        c.optim.learning_rate = 1e-3
        c.optim.schedule = "cosine"
        c.optim.warmup_steps = 50
        c.train.batch_size = 8
        c.train.steps = 1200
        c.train.eval_every = 200
        c.train.log_every = 20
    if variant == "smoke":
        c.train.batch_size = 2
        c.train.steps = 2
        c.train.eval_every = 2
        c.train.log_every = 1
    return c
