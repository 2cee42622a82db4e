"""lmjax's own heatmap U-Net recipe on ISBI 2015 (not a paper's recipe).

The network is the nnU-Net-style U-Net of the pelvis paper, but the recipe is
lmjax's: resize (not transposed-convolution) upsampling, no supervision head at the
coarsest decoder level, MSE plus a small soft-argmax L1 term, soft-argmax decoding,
and lmjax's `default` augmentation. The pelvis paper's own recipe is
`isbi2015_pelvis_unet.py`. Other ISBI configs start from this one for data and
splits.

Splits: train = the 150 training images (a tenth held out for validation),
test = test1; ground truth selectable (senior by default, `mean` for the mean of
both doctors). Arguments:

  cpu     a budget for 2 CPU cores: 256x192 input (about 1 mm per pixel), 16
          features, soft-argmax decoding for sub-pixel coordinates, cosine
          schedule, 1200 steps.
  kl_cpu  cpu with the KL heatmap loss (KL between the Gaussian target and each
          channel's spatial softmax, every deep-supervision scale) and argmax of
          the sigmoid, 600 steps: the recipe of
          `experiments/results/isbi2015_unet_kl_cpu/` (1.98 mm on test1).
  gpu     the full setting: 640x512 input, 32 features, bf16, cosine schedule.
  smoke   cpu for 2 steps of batch 2.

    lmjax train --config=experiments/configs/isbi2015_unet_heatmap.py:cpu --workdir=runs/isbi_cpu
    lmjax evaluate --workdir=runs/isbi_cpu --split=test1 --ground_truth=senior
"""

import os

from lmjax.configs.phantom import get_config as base_config


def get_config(arg: str = "cpu"):
    if arg not in ("cpu", "kl_cpu", "gpu", "smoke"):
        raise ValueError(f"argument must be cpu, kl_cpu, gpu or smoke, got {arg!r}")
    kl = arg == "kl_cpu"
    arg = "cpu" if kl else arg
    c = base_config()
    c.paper = "none: lmjax's heatmap U-Net recipe (the pelvis paper's is isbi2015_pelvis_unet.py)"
    data = os.environ.get(
        "LMJAX_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data")
    )
    c.data.data_dir = os.path.join(data, "isbi2015")
    c.data.format = "isbi2015"
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.test_split = "test1"
    c.data.val_fraction = 0.1
    c.data.augment = "default"
    c.model.upsample = "resize"
    c.train.log_every = 20
    if arg in ("cpu", "smoke"):
        c.data.input_size = (256, 192)
        c.model.features = 16
        c.model.num_levels = 6
        c.task.sigma = 3.0
        c.optim.schedule = "cosine"
        c.optim.warmup_steps = 50
        c.train.batch_size = 8
        c.train.steps = 1200
        c.train.eval_every = 200
    if arg == "gpu":
        c.data.input_size = (640, 512)
        c.data.num_threads = 8
        c.model.features = 32
        c.model.num_levels = 7
        c.task.sigma = 5.0
        c.task.compute_dtype = "bfloat16"
        c.optim.schedule = "cosine"
        c.optim.learning_rate = 1e-3
        c.train.batch_size = 16
        c.train.steps = 20000
        c.train.eval_every = 1000
    if kl:
        c.task.losses = {"kl_heatmap": 1.0}
        c.task.extractor = "sigmoid_argmax"
        c.train.steps = 600
    if arg == "smoke":
        c.train.steps = 2
        c.train.eval_every = 2
        c.train.log_every = 1
        c.train.batch_size = 2
    return c
