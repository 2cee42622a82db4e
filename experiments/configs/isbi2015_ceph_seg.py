"""Cephalogram paper's U-Net and FPN on ISBI 2015: Dice on landmark squares.

The cephalogram paper (Fernandes, Filipe, Sousa, Goncalves, "Detection of Landmarks
in X-Ray Images Through Deep Learning", sections 3.2-3.5; results in Table 1,
training Dice and RMSE, and Table 2, test IoU 0.834 for the U-Net and 0.912 for the
FPN). Each landmark is a square of 1s in its own mask channel; the network
("ceph_unet" or "ceph_fpn") predicts one sigmoid channel per landmark at 256 x 256,
trained with Dice loss, Adam at 1e-3, batch 32, 200 epochs, the learning rate halved
after 10 epochs without improvement. Coordinates are the centroids of the predicted
regions (skimage regionprops in the paper): here the host method "threshold_opening",
which thresholds the sigmoid at 0.5 and takes the centroid of the largest 8-connected
region, with its opening switched off (`task.extractor_kwargs`, which
`lmjax.task.task_spec` has to pass on to the extractor).

Where this differs from the paper:
  - data: ISBI 2015 (19 landmarks, 150 training images, a tenth held out for
    validation, test1) from the heatmap config, not the paper's 200 Kaggle images
    with 6 landmarks it marked itself; one channel per landmark, where the paper
    segments all landmarks in one channel. No augmentation, as in the paper.
  - square size: 20 x 20 pixels of the 256 x 256 input. The paper draws its 20 x 20
    squares on the original 1935 x 2400 image and then resizes, which leaves about
    2.6 x 2.1 pixels at 256 x 256; set `task.side` to about 2.4 for that.
  - plateau: the loop monitors the validation MRE (the paper: validation Dice loss)
    and evaluates every 21 steps, about 5 epochs of 135 images at batch 32, so a
    patience of 2 evaluations is the paper's 10 epochs.
  - Dice: `smooth` 1e-7 as the paper's epsilon (`task.loss_kwargs`, likewise to be
    passed on by `task_spec`), per image and channel (the paper's Keras loss sums over
    the whole batch).

Arguments: "unet" or "fpn", optionally with a suffix:

  (none)  the paper's setting, float32.
  _gpu    the same in bf16.
  _cpu    a shrink for 2 CPU cores: 16 features, batch 8, 600 steps.
  _smoke  2 steps of batch 2, 8 features (checks the wiring on real data).

    lmjax train --workdir=runs/ceph_fpn --config=experiments/configs/isbi2015_ceph_seg.py:fpn
    lmjax evaluate --workdir=runs/ceph_fpn --split=test1 --ground_truth=senior
"""

import math
import pathlib

import ml_collections

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")
MODELS = {"unet": "ceph_unet", "fpn": "ceph_fpn"}
VARIANTS = ("", "gpu", "cpu", "smoke")
TRAIN_IMAGES = 135  # ISBI 2015 training images less the tenth held out for validation
EPOCHS = 200


def _heatmap_config(arg: str):
    return configs.load(f"{_HEATMAP}:{arg}", resolved=False)


def get_config(arg: str = "fpn"):
    model, _, variant = arg.partition("_")
    if model not in MODELS or variant not in VARIANTS:
        raise ValueError(
            f"argument must be unet or fpn, optionally with _gpu, _cpu or _smoke; got {arg!r}"
        )
    c = _heatmap_config({"": "gpu", "gpu": "gpu", "cpu": "cpu", "smoke": "smoke"}[variant])
    c.paper = (
        f"cephalogram paper: {model.upper()} segmenting 20x20 squares at 256x256, Dice loss, "
        "region-property centroids (sections 3.2-3.5, Tables 1-2), on ISBI 2015"
    )
    c.data.input_size = (256, 256)
    c.data.augment = ""

    c.model = ml_collections.ConfigDict({"name": MODELS[model], "features": 64})
    if model == "unet":
        c.model.dropout_rate = 0.3
        c.model.extra_conv = False

    c.task.mode = "segmentation"
    c.task.target = "square"
    c.task.side = 20.0
    c.task.losses = {"dice": 1.0}
    c.task.loss_kwargs = {"dice": {"smooth": 1e-7}}
    c.task.extractor = "threshold_opening"
    c.task.extractor_kwargs = {"threshold": 0.5, "opening_radius": 0}
    c.task.deep_supervision = False
    c.task.compute_dtype = "bfloat16" if variant == "gpu" else "float32"

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.clip_norm = None
    c.optim.plateau_factor = 0.5
    c.optim.plateau_patience = 2  # evaluations, about 10 epochs

    c.train.batch_size = 32
    c.train.steps = math.ceil(EPOCHS * TRAIN_IMAGES / c.train.batch_size)  # 844
    c.train.eval_every = 21  # about 5 epochs
    c.train.log_every = 21

    if variant == "cpu":
        c.model.features = 16
        c.train.batch_size = 8
        c.train.steps = 600
        c.train.eval_every = 50
        c.train.log_every = 10
    if variant == "smoke":
        c.model.features = 8
        c.train.batch_size = 2
        c.train.steps = 2
        c.train.eval_every = 2
        c.train.log_every = 1
    return c
