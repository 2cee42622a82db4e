"""The fluoroscopy paper's HRNet landmark decoder on ISBI 2015 cephalograms.

Hresko and Drotar, "Segmentation-Informed Landmark Regression for Robust Localization
in Fluoroscopic Imaging" (MIDL 2026 submission), sections 2.2-2.4 and Table 2: an
HRNet encoder with a landmark-heatmap decoder and a bone-segmentation decoder.
ISBI 2015 has no bone masks, so only the landmark decoder trains here; the
two-decoder model with the paper's proposed loss runs on the phantom
(`phantom_hrnet.py`). `kl` keeps the heatmap term of the proposed loss, `mse` and
`ncc` are the paper's two baselines.

Paper vs this config ("=": the same):

  data          paper: 366 fluoroscopy images of 6 cadaver specimens (Grupp et al.
                       2020), 14 landmarks, 6 bone masks
                here:  ISBI 2015: 19 cephalometric landmarks, no masks (the paper's
                       data is not here)
  protocol      paper: leave one specimen out (six models), the rest split 90 / 10
                       into training and validation
                here:  one model: 150 training images less a tenth for validation,
                       test1 (ISBI has no specimens)
  input         paper: 1536 x 1536 less a 50 px border, downsampled 8x to 180 x 180,
                       padded to 192 x 192; intensities scaled to [0, 1]
                here:  the cephalogram resized to 512 x 416 (`cpu`: 256 x 192);
                       intensities divided by the bit depth (`unit`; the paper does
                       not say how it scales)
  encoder       paper: "HRNet-based", variant not given
                here:  HRNet-W32 as the pose network (stem 64, modules 1-4-3, four
                       blocks per branch), He-normal init, no pretraining (lmjax's
                       guesses); `cpu` W16 with one module per stage and two blocks
  decoders      paper: landmarks and bones: successive upsampling convs, each
                       followed by residual blocks (two conv-BN-ReLU, identity skip);
                       counts and widths not given
                here:  the landmark decoder only: two 2x transposed-conv upsamplings
                       from the 1/4 map, widths (W, W), one residual block each
  target        paper: Gaussian heatmaps, sigma not given
                here:  sigma 3 px at either input size (lmjax's choice)
  loss          paper: proposed 1.0 Dice-CE + 0.1 KL (log-softmax heatmaps) + 10.0
                       visibility; baselines MSE and NCC, not defined further
                here:  `kl`: the KL term alone at weight 1 (Dice-CE and visibility
                       need masks); `mse`: heatmap MSE of the raw maps; `ncc`: 1 minus
                       the Pearson correlation of each channel with its target
  coordinates   paper: argmax of the sigmoid of each heatmap
                here:  = (`sigmoid_argmax`)
  optimizer     paper: AdamW 1e-4 (weight decay not given), batch 32, 1000 epochs
                here:  AdamW 1e-4 constant, weight decay 1e-2 (PyTorch's default),
                       batch 32, 4000 steps (about 950 epochs of 135); `cpu` 1e-3
                       cosine with 50 warm-up steps, batch 8, 1200 steps
  validation    paper: every 100 epochs; the checkpoint with the lowest mean
                       Euclidean distance on validation
                here:  every 400 steps (about 95 epochs); the lowest validation MRE
  augmentation  paper: Table 1, each at p 0.5: zoom 1.0-1.3, rotation +-0.17 rad,
                       contrast gamma 0.7-1.5 (MONAI)
                here:  = (`fluoroscopy` preset)
  precision     paper: not given
                here:  bf16 compute (float32 for `_cpu` and `_smoke`)
  metrics       paper: Euclidean distance in pixels
                here:  MRE and SDR in mm in the original frame

Arguments, `LOSS[_cpu|_smoke]` with LOSS `kl` (default), `mse` or `ncc`:
  (none)  HRNet-W32, 512 x 416, sigma 3 px, AdamW 1e-4, batch 32, 4000 steps, bf16.
  _cpu    2 CPU cores: HRNet-W16 with one module per stage and two blocks per
          branch, stem 32, 256 x 192, batch 8, AdamW 1e-3 with a cosine schedule.
  _smoke  2 steps of batch 2 at W8 (checks the wiring).

    lmjax train --config=experiments/configs/isbi2015_hrnet.py:kl_cpu --workdir=DIR
    lmjax evaluate --workdir=DIR --split=test1 --ground_truth=senior

A 600-step `kl_cpu` run (test1 MRE 2.54 mm): `experiments/results/isbi2015_zoo_cpu/`.
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
