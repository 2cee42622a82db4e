"""The pelvis paper's detector on the built-in pelvis phantom: YOLO11 finds one box per
item class (stage 1 of the detector -> SAM cascade).

Stansfield et al., "Landmark Detection for Medical Images using a General-purpose
Segmentation Model" (arXiv 2507.11551): Ultralytics YOLO11-n, 300 epochs,
brightness/contrast/translation/scale/rotation augmentation, no flips; landmarks
drawn as 2-mm circles, so a landmark's box is the circle's. lmjax's YOLO11 is a
clean-room port (`lmjax.models.yolo`); its loss is BCE + CIoU + DFL with the
task-aligned assigner (`lmjax.ops.detection`), one image at a time, and every class
is decoded as its best anchor (no NMS: each item occurs at most once).

Arguments:
  tiny    (default) 2 CPU cores in minutes: width 0.125, depth 0.33, max 128
          channels, 256 px (the phantom's size), batch 8, 400 steps, the
          minimum-box floor on (16 px, the stride of P4) so that 2-mm landmark
          boxes (3.2 px here) get anchors.
  heatmap the per-class heatmap detector (CenterNet-style, `heatmap_detector`) on a
          U-Net (16 features, 5 levels) in YOLO's place, at 256 px: focal loss on
          centre heatmaps plus L1 on log box sizes; not the paper's detector.
  paper   YOLO11-n at 640 px, AdamW at Ultralytics' automatic rate for these classes
          (0.002 * 5 / (4 + nc)), weight decay 5e-4, no flips, the floor off; about
          300 epochs of 80 training images at batch 16 (1500 steps).

    lmjax train --config=experiments/configs/pelvis_detector.py --workdir=DIR
    lmjax evaluate --workdir=DIR --split=test

`lmjax evaluate` reports the box centres as landmarks (the paper's 8-landmark pilot)
in mm, a class that is not found counting as missed.

Deviations from the paper: the augmentation is lmjax's `default` preset (rotation
+-10 deg, scale 0.9-1.1, translation 10 %, p 0.5; no brightness or contrast, which
the paper also varies), not Ultralytics' HSV/mosaic defaults; no EMA of the
weights; losses averaged per image.
"""

import ml_collections

from lmjax.configs import base
from lmjax.data.pelvis_phantom import pelvis_phantom_item_set

NUM_CLASSES = pelvis_phantom_item_set().num_landmarks


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in ("tiny", "paper", "heatmap"):
        raise ValueError(f"argument must be tiny, paper or heatmap, got {arg!r}")
    c = base.get_config()
    c.paper = (
        "pelvis paper (Stansfield et al. 2025), the YOLO11 detector; deviations in "
        "experiments/configs/pelvis_detector.py"
    )
    c.data.format = "pelvis_phantom"
    c.data.phantom_size = 120
    c.data.augment = "default"

    c.model = ml_collections.ConfigDict()
    c.model.name = "yolo11"
    for key, field in base.MODEL_FIELDS.items():
        if key != "name":
            c.model[key] = field.default
    c.model.scale = "n"
    c.model.score_threshold = 0.25

    c.task.mode = "coordinate"  # the model's box centres are its coordinates
    c.task.losses = {"yolo": 1.0}

    c.optim.name = "adamw"
    c.optim.learning_rate = 0.002 * 5 / (4 + NUM_CLASSES)
    c.optim.weight_decay = 5e-4
    c.optim.warmup_steps = 50
    c.optim.clip_norm = 10.0

    if arg == "heatmap":
        c.data.input_size = (256, 256)
        c.model = ml_collections.ConfigDict()
        c.model.name = "heatmap_detector"
        for key, field in base.MODEL_FIELDS.items():
            if key != "name":
                c.model[key] = field.default
        c.model.backbone = "unet"
        c.model.backbone_options = {"features": 16, "num_levels": 5, "upsample": "resize"}
        c.model.score_threshold = 0.3
        c.task.losses = {"centernet": 1.0}
        c.optim.name = "adam"
        c.optim.weight_decay = 0.0
        c.optim.learning_rate = 2e-3
        c.optim.warmup_steps = 20
        c.train.steps = 400
        c.train.batch_size = 8
        c.train.eval_every = 100
    elif arg == "tiny":
        c.data.input_size = (256, 256)
        c.model.width = 0.125
        c.model.depth = 0.33
        c.model.max_channels = 128
        c.task.loss_kwargs = {"yolo": {"min_box_side": 16.0}}
        c.optim.learning_rate = 2e-3
        c.train.steps = 400
        c.train.batch_size = 8
        c.train.eval_every = 100
    else:
        c.data.input_size = (640, 640)
        c.train.steps = 1500
        c.train.batch_size = 16
        c.train.eval_every = 100
    return c
