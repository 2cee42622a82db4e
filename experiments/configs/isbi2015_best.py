"""lmjax's most accurate ISBI 2015 recipe: a global heatmap U-Net, then coarse-to-fine
refinement, with calibrated per-landmark radii (not a paper's recipe).

Stages, all trained by one `lmjax train`:

  global     the KL heatmap U-Net of `isbi2015_unet_heatmap.py:kl_cpu` (about 1 mm
             per model pixel), with lmjax's `robust` augmentation preset for films
             that differ from the training ones: the `default` affine steps plus
             gamma, contrast, brightness, noise and blur (p = 0.25-0.5).
  refine     one shared local U-Net on 64 x 64 patches at 0.3 mm per pixel
             (19 mm wide) around each global estimate, cut from the film on the
             device; trained on patches jittered by 1.5 x the global model's
             validation RMS error per landmark (`lmjax.train.refine`).
  calibrate  split-conformal radii at 90 % (`conformal.alpha` 0.1) from a tenth
             of the training images that is neither trained on nor used to pick
             a checkpoint (`data.calib_fraction`), and the shape model.

Splits: of the 150 training images a tenth is held out for validation (checkpoint
choice of both stages) and a tenth for calibration; test1 is the test split and is
never read during training. Arguments:

  cpu    the 2-core budget: 256 x 192 global input, 600 global steps, 900
         refinement steps of 4 images (76 patches).
  gpu    640 x 512 global input at 32 features, bf16, 20 000 steps; refinement at
         0.2 mm with 96 x 96 patches, 32 features, 4000 steps of 16 images.
  smoke  cpu for 2 + 2 steps.

    lmjax train --config=experiments/configs/isbi2015_best.py:cpu --workdir=runs/isbi_best
    lmjax evaluate --workdir=runs/isbi_best --split=test1 --ground_truth=senior

Results: `experiments/results/isbi2015_best_cpu/`.
"""

import pathlib

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")


def get_config(arg: str = "cpu"):
    if arg not in ("cpu", "gpu", "smoke"):
        raise ValueError(f"argument must be cpu, gpu or smoke, got {arg!r}")
    c = configs.load(f"{_HEATMAP}:{'gpu' if arg == 'gpu' else 'kl_cpu'}", resolved=False)
    c.paper = "none: lmjax's global + refinement recipe, calibrated radii"
    c.data.augment = "robust"
    c.data.calib_fraction = 0.1
    c.conformal.alpha = 0.1
    c.refine.enabled = True
    c.refine.spacing_mm = 0.3
    c.refine.patch_size = 64
    c.refine.features = 16
    c.refine.num_levels = 3
    c.refine.steps = 900
    c.refine.batch_size = 4
    c.refine.eval_every = 150
    if arg == "gpu":
        c.task.losses = {"kl_heatmap": 1.0}
        c.task.extractor = "sigmoid_argmax"
        c.refine.spacing_mm = 0.2
        c.refine.patch_size = 96
        c.refine.features = 32
        c.refine.num_levels = 4
        c.refine.steps = 4000
        c.refine.batch_size = 16
        c.refine.eval_every = 500
    if arg == "smoke":
        c.train.steps = 2
        c.train.eval_every = 2
        c.train.log_every = 1
        c.train.batch_size = 2
        c.refine.steps = 2
        c.refine.eval_every = 2
        c.refine.batch_size = 2
    return c
