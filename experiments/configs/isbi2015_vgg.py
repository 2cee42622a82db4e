"""The lower-limb paper's VGG16 models on ISBI 2015: segmentation U-Net, coordinate
regression and segmentation-guided coordinate regression (SGR).

Amador Sanchez, Zarghami, van Overschelde, Vandemeulebroucke, "Optimization and
Benchmarking of Image Segmentation for Improved Landmark Detection in Lower Limb
X-Rays ...", IEEE Access 2025; sections II-B and II-E/F, hyperparameters in Tables
1-2, the comparison in Table 4:

  unet            TernausNet-16 ("vgg_unet") segmenting discs, one sigmoid channel
                  per landmark, Dice-CE; coordinates by Method 3 (host extractor
                  "midpoint": threshold at the channel's min-max midpoint, largest
                  component, probability-weighted centroid).
  regression      the VGG16 encoder and one fully connected layer to 2K coordinates
                  ("vgg_regression"), MSE.
  seg_regression  SGR ("vgg_seg_regression"): the U-Net and the regression head on one
                  encoder, Dice-CE on the discs plus MSE on the coordinates; the
                  coordinates come from the head; the device extractor on the masks
                  gives each landmark's confidence (a host extractor gives 1).

Paper vs this config ("=": the same):

  data          paper: 919 full lower-limb X-rays (private), 8 landmarks, ROIs of
                       one joint, one network per joint and method, 80 / 20 split
                here:  ISBI 2015: 19 cephalometric landmarks, the whole image, 150
                       training images less a tenth for validation, test1
  input         paper: 3 x 512 x 512, intensities divided by the image's maximum
                here:  1 x 512 x 512 (one grey channel: the first conv's RGB kernel
                       summed over its inputs gives the same outputs as grey copied
                       to RGB), intensities divided by the bit depth (`unit`)
  encoder init  paper: ImageNet VGG16
                here:  the user's file, `--config.model.pretrained=vgg16.safetensors`
                       (torchvision's `vgg16().state_dict()`, table
                       "vgg16_torchvision"); none by default (nothing is downloaded),
                       and from random weights 1e-5 is slow
  U-Net         paper: TernausNet-16 (Shvets et al.)
                here:  = (`vgg_unet`; decoder widths and 4 x 4 transposed convs as
                       TernausNet's code, which the paper does not restate; torchvision's
                       VGG init for what is not imported)
  masks         paper: discs of radius 15 px at 512 x 512
                here:  = (7.5 px at `_cpu`'s 256 rows)
  regression    paper: VGG16 encoder, one fully connected layer to the pixel
                       coordinates, MSE
                here:  = on the flattened last pooled map (how it joins is not given);
                       it predicts coordinates normalised to the input, starting at
                       the image centre, and the MSE is on them (`coord_mse` with
                       `scale = (W, H)`; the paper gives no scale)
  SGR           paper: as Sanchez et al. [3], not detailed here; loss weights not given
                here:  the regression head on the U-Net's encoder (at its last pooled
                       map), Dice-CE + MSE at 1:1 (lmjax's choice)
  heatmaps      paper: also a heatmap baseline on the same U-Net (sigma 15, argmax)
                here:  not offered by this config
  optimizer     paper: Adam with layer-wise learning-rate decay (rate not given)
                here:  = at 0.9 per encoder conv (13; decoder and heads at the full rate)
  schedule      paper: Table 2, U-Net: 1e-5, batch 4, 25 epochs; not given for
                       regression and SGR
                here:  1e-5 constant, batch 4, 844 steps (25 epochs of 135), for all
                       three (the U-Net's values for the other two)
  plateau       paper: none
                here:  = (`plateau_patience` 1000: never fires)
  augmentation  paper: p = 0.5: rotation +-10 deg, scaling +-0.1, translation +-0.1
                here:  = (`lower_limb` preset; translation as a fraction of the input)
  tuning        paper: 5-fold cross-validation of learning rate, batch and epochs; the
                       final model by the lowest loss
                here:  none (Table 2's values); the checkpoint with the lowest
                       validation MRE, evaluated every epoch

Arguments: "unet", "regression" or "seg_regression", optionally with a suffix:

  (none)  the paper's setting (512 x 512, full width, float32).
  _cpu    a shrink for 2 CPU cores: 256 x 192 input (radius 7.5 px), a quarter of
          the channels, learning rate 1e-3 with a cosine schedule and 50 warm-up
          steps, batch 8, 1200 steps.
  _smoke  2 steps of batch 2 at 256 x 192 and a sixteenth of the channels (checks
          the wiring).

    lmjax train --workdir=runs/isbi_vgg_unet --config=experiments/configs/isbi2015_vgg.py:unet
    lmjax evaluate --workdir=runs/isbi_vgg_unet --split=test1 --ground_truth=senior

600-step CPU runs of all three: `experiments/results/isbi2015_zoo_cpu/`.
"""

import math
import pathlib

import ml_collections

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")
MODELS = {
    "unet": "vgg_unet",
    "regression": "vgg_regression",
    "seg_regression": "vgg_seg_regression",
}
VARIANTS = ("", "cpu", "smoke")
TRAIN_IMAGES = 135  # ISBI 2015 training images less the tenth held out for validation
EPOCHS = 25
PAPER_SIZE = 512


def _heatmap_config(arg: str):
    return configs.load(f"{_HEATMAP}:{arg}", resolved=False)


def _split(arg: str) -> tuple[str, str]:
    for variant in VARIANTS[1:]:
        if arg.endswith("_" + variant):
            return arg[: -len(variant) - 1], variant
    return arg, ""


def get_config(arg: str = "unet"):
    model, variant = _split(arg)
    if model not in MODELS:
        raise ValueError(
            "argument must be unet, regression or seg_regression, optionally with _cpu "
            f"or _smoke; got {arg!r}"
        )
    c = _heatmap_config({"": "gpu", "cpu": "cpu", "smoke": "smoke"}[variant])
    c.paper = (
        f"lower-limb paper: VGG16 {model.replace('_', ' ')} (TernausNet-16 U-Net, FC "
        "coordinate head), Dice-CE / MSE, Adam with layer-wise decay (sections II-B, "
        "II-E/F, Tables 1-2 and 4), on ISBI 2015"
    )
    c.data.input_size = (PAPER_SIZE, PAPER_SIZE)
    c.data.augment = "lower_limb"  # the paper's affine group at p = 0.5
    c.data.normalize = "unit"

    c.model = ml_collections.ConfigDict({"name": MODELS[model], "width": 1.0, "pretrained": ""})

    c.task.deep_supervision = False
    c.task.compute_dtype = "float32"
    c.task.radius = 15.0
    if model == "regression":
        c.task.mode = "coordinate"
        c.task.losses = {"coord_mse": 1.0}
        c.task.extractor = "hard_argmax"  # unused: the model has no maps
    else:
        c.task.mode = "segmentation"
        c.task.target = "circle"
        c.task.losses = {"dice_ce": 1.0}
        c.task.extractor = "midpoint"  # Method 3
    if model == "seg_regression":
        c.task.losses = {"dice_ce": 1.0, "coord_mse": 1.0}
        c.task.extractor = "sigmoid_argmax"  # confidence only; coordinates from the head

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-5
    c.optim.layer_decay = 0.9
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.clip_norm = None
    c.optim.plateau_patience = 1000  # the paper keeps the rate fixed

    c.train.batch_size = 4
    c.train.steps = math.ceil(EPOCHS * TRAIN_IMAGES / c.train.batch_size)  # 844
    c.train.eval_every = 34  # one epoch
    c.train.log_every = 34

    if variant == "cpu":
        c.data.input_size = (256, 192)
        c.model.width = 0.25
        c.optim.learning_rate = 1e-3
        c.optim.schedule = "cosine"
        c.optim.warmup_steps = 50
        c.train.batch_size = 8
        c.train.steps = 1200
        c.train.eval_every = 200
        c.train.log_every = 20
    if variant == "smoke":
        c.data.input_size = (256, 192)
        c.model.width = 1 / 16
        c.train.batch_size = 2
        c.train.steps = 2
        c.train.eval_every = 2
        c.train.log_every = 1

    h, w = c.data.input_size
    c.task.radius = 15.0 * h / PAPER_SIZE
    if "coord_mse" in c.task.losses:
        c.task.loss_kwargs = {"coord_mse": {"scale": (float(w), float(h))}}
    return c
