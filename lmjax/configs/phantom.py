"""Default: a small heatmap U-Net on the built-in phantom, for CPUs in minutes.

The architecture is the pelvis paper's nnU-Net-style U-Net (two conv-instance
norm-leaky ReLU blocks per level, strided downsampling, deep supervision), shrunk
to 16 base features and 4 levels at 128x128 so that `lmjax train` with no flags
finishes within minutes on 2 CPU cores.

    lmjax train --config=lmjax/configs/phantom.py --workdir=DIR --config.train.steps=600
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.paper = "pelvis paper (nnU-Net-style heatmap U-Net), reduced for the phantom"

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ""  # empty: the built-in phantom
    c.data.format = ""  # empty: detected from the folder
    c.data.ground_truth = "senior"
    c.data.train_split = "train"
    c.data.val_split = "val"  # held out of train_split when the dataset lacks it
    c.data.test_split = "test"
    c.data.val_fraction = 0.1
    # Cross-validation (lmjax.train.folds): k-fold, or leave-one-group-out by a
    # metadata key or a regular expression on the image name; -1: every fold.
    c.data.cv_folds = 0
    c.data.cv_group_key = ""
    c.data.cv_group_pattern = ""
    c.data.cv_fold = -1
    c.data.input_size = (128, 128)
    c.data.fit = "resize"
    c.data.normalize = "zscore"
    c.data.augment = "pelvis"
    # True: the host only decodes, fits and batches, and the jitted train step applies
    # `augment` per example (lmjax.data.device_augment; no elastic deformation there).
    c.data.augment_on_device = False
    c.data.cache_dir = ""  # empty: <workdir>/cache
    c.data.num_threads = 2
    c.data.phantom_size = 200

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.features = 16
    c.model.num_levels = 4
    c.model.upsample = "resize"
    c.model.deep_supervision = True

    c.task = ml_collections.ConfigDict()
    c.task.mode = "heatmap"
    c.task.target = "gaussian"
    c.task.sigma = 3.0
    c.task.radius = 3.0
    c.task.side = 5.0
    # Heatmap MSE alone sits for long in the all-zero regime on a CPU budget; the
    # soft-argmax coordinate term gives every pixel a gradient towards the landmark.
    c.task.losses = {"heatmap_mse": 1.0, "coord_l1": 0.001}
    c.task.extractor = "soft_argmax"
    c.task.extractor_temperature = 0.02
    c.task.deep_supervision = True
    c.task.compute_dtype = "float32"

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.learning_rate = 2e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 20
    c.optim.clip_norm = 1.0
    c.optim.plateau_patience = 10
    c.optim.plateau_factor = 0.5

    c.train = ml_collections.ConfigDict()
    c.train.steps = 400
    c.train.batch_size = 8
    c.train.eval_every = 100
    c.train.log_every = 20
    c.train.keep = 3
    c.train.tensorboard = True  # event files under <workdir>/tensorboard
    c.train.seed = 0
    c.train.flip_tta = False

    if arg == "tiny":  # the tests' shrink: seconds, not minutes
        c.data.input_size = (64, 64)
        c.data.phantom_size = 40
        c.model.features = 8
        c.model.num_levels = 3
        c.task.sigma = 2.0
        c.train.steps = 30
        c.train.eval_every = 15
        c.train.log_every = 5
        c.train.batch_size = 4
    return c
