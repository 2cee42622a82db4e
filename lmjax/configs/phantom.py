"""Default: a small heatmap U-Net on the built-in phantom, for CPUs in minutes.

The architecture is the pelvis paper's nnU-Net-style U-Net (two conv-instance
norm-leaky ReLU blocks per level, strided downsampling, deep supervision), shrunk
to 16 base features and 4 levels at 128x128 so that `lmjax train` with no flags
finishes within minutes on 2 CPU cores. Everything not set here is the default of
`lmjax.configs.base`.

    lmjax train --config=lmjax/configs/phantom.py --workdir=DIR --config.train.steps=600
"""

import ml_collections

from lmjax.configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = base.get_config()
    c.paper = "pelvis paper (nnU-Net-style heatmap U-Net), reduced for the phantom"
    # The model block is base's default family: unet, 16 features, 4 levels, deep supervision.

    c.task.target = "gaussian"
    c.task.sigma = 3.0
    # Heatmap MSE alone sits for long in the all-zero regime on a CPU budget; the
    # soft-argmax coordinate term gives every pixel a gradient towards the landmark.
    c.task.losses = {"heatmap_mse": 1.0, "coord_l1": 0.001}
    c.task.extractor = "soft_argmax"
    c.task.deep_supervision = True

    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 20
    c.optim.clip_norm = 1.0

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
    elif arg:
        raise ValueError(f"argument must be empty or tiny, got {arg!r}")
    return c
