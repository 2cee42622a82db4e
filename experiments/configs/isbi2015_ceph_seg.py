"""The cephalogram paper's U-Net and FPN (sections 3.2-3.5) on ISBI 2015 cephalograms.

Fernandes, Filipe, Sousa, Goncalves, "Detection of Landmarks in X-Ray Images Through
Deep Learning": each landmark is a square of 1s, segmented by "ceph_unet" or
"ceph_fpn" with a sigmoid and Dice loss; coordinates are the centroids of the
predicted regions. The paper reports training Dice and RMSE (Table 1) and test IoU
0.834 for the U-Net and 0.912 for the FPN (Table 2).

Paper vs this config ("=": the same):

  data          paper: 200 of the 400 Kaggle cephalograms (1935 x 2400), 6 landmarks it
                       marked itself (S, M, G, nose tip, lips), split 120 / 40 / 40
                here:  ISBI 2015 (likely the same images): 19 landmarks of the senior doctor,
                       150 training images less a tenth for validation, test1
                       (6-landmark annotations not available)
  input         paper: grey, resized to 256 x 256; "pixels are normalized"
                here:  = (one channel, stretched to 256 x 256); per-image z-score (the
                       paper does not say how it normalises)
  targets       paper: one mask, every landmark a 20 x 20 square drawn on the original
                       image before resizing (about 2.6 x 2.1 px at 256 x 256)
                here:  one channel per landmark, a 20 x 20 square at 256 x 256 (lmjax's
                       choice; `--config.task.side=2.4` gives the paper's size)
  U-Net         paper: blocks 1-5 conv-ReLU (He normal), BN, conv-ReLU, dropout (not
                       in 4), max pooling (not in 4, 5); blocks 6-9 transposed conv,
                       concatenation, two convs with BN; optional third conv; sigmoid
                here:  = (`ceph_unet`); not given, so lmjax's: base width 64, dropout
                       0.3, transposed convs 3 x 3 with block 6 at stride 1 (four
                       transposed convs after three poolings), no third conv
                       (`extra_conv`), Glorot init of transposed and 1x1 convs
  FPN           paper: ConvBlocks 1-4 with max pooling; FPNBlocks 5-7 (2 x 2 stride-2
                       transposed conv + ReLU 1x1 skip, added, ConvBlock); ConvBlocks
                       8-9; 1x1 conv and sigmoid
                here:  = (`ceph_fpn`); not given, so lmjax's: base width 64, pyramid
                       from block 4 before its pooling (1/8), each level as wide as
                       its skip
  loss          paper: 1 - Dice, epsilon 1e-7, over the whole batch (Keras)
                here:  1 - Dice, `smooth` 1e-7, per image and channel, then averaged
  optimizer     paper: Adam 1e-3 (Keras: epsilon 1e-7), batch 32, 200 epochs
                here:  Adam 1e-3, epsilon 1e-8, batch 32, 844 steps (200 epochs of 135)
  plateau       paper: ReduceLROnPlateau on the validation Dice loss, patience 10
                       epochs, factor 0.5 (Keras: min_delta 1e-4)
                here:  on the validation MRE (what lmjax's loop monitors), evaluated
                       every 21 steps (about 5 epochs), patience 2 evaluations, factor
                       0.5, relative tolerance 1e-4
  checkpoint    paper: the model at the end of training
                here:  the checkpoint with the lowest validation MRE (lmjax's rule)
  coordinates   paper: skimage regionprops centroids of every region of the mask
                here:  per channel: sigmoid > 0.5, unweighted centroid of the largest
                       8-connected region (`threshold_opening`, opening off); further
                       regions count as false positives, none above 0.5 as a miss
  augmentation  paper: none
                here:  =
  precision     paper: float32 (Keras default)
                here:  = (bf16 with `_gpu`)
  metrics       paper: Dice and RMSE (training), IoU of the test masks
                here:  MRE and SDR in mm, misses, and the mask IoU and Dice that
                       `lmjax evaluate` reports

Arguments: "unet" or "fpn", optionally with a suffix:

  (none)  the paper's setting, float32.
  _gpu    the same in bf16.
  _cpu    a shrink for 2 CPU cores: 16 features, batch 8, 600 steps, evaluated every
          50 steps (patience 2 evaluations = 100 steps).
  _smoke  2 steps of batch 2, 8 features (checks the wiring on real data).

    lmjax train --workdir=runs/ceph_fpn --config=experiments/configs/isbi2015_ceph_seg.py:fpn
    lmjax evaluate --workdir=runs/ceph_fpn --split=test1 --ground_truth=senior

CPU results: `experiments/results/isbi2015_ceph_fpn_cpu/` (FPN, 1200 steps) and
`experiments/results/isbi2015_zoo_cpu/` (U-Net, 400 steps).
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
