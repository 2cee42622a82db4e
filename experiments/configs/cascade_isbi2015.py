"""The pelvis paper's cascade on the ISBI 2015 cephalograms: its landmark path (each of
the 19 landmarks a 2-mm circle, boxed by a detector, segmented by SAM, read from
the mask) on real radiographs.

Splits as `isbi2015_unet_heatmap.py`: the 150 training images (a tenth held out for
validation), test = test1, senior ground truth by default.

Arguments (each also names its detector stage as `ARG.detector`):
  cpu   (default) about an hour of 2 CPU cores: the per-class heatmap detector
        (CenterNet-style, on the ISBI CPU U-Net: 16 features, 6 levels, 256x192,
        800 steps), then a SAM trained from scratch (random frozen encoder of
        `pelvis_sam_decoder.py:tiny` at 256 px, the crop loss, 600 steps, all 19
        landmarks prompted, half the prompts the detector's), soft centroid.
  smoke two steps of each, for checks.

    lmjax train --config=experiments/configs/cascade_isbi2015.py --workdir=DIR
    lmjax evaluate --workdir=DIR --split=test1 --ground_truth=senior

Not the paper's numbers: those need MedSAM's weights (`lmjax convert`,
`--config.model.pretrained`) at 1024 px and a GPU. A random frozen encoder shows the
decoder nothing but the prompt, so on CPU the cascade's landmark is at best the
detector's box centre; the mask read-outs are reported beside it.
"""

import pathlib

from lmjax.configs import base, load

HERE = pathlib.Path(__file__).resolve().parent
ARGS = ("cpu", "smoke")


def _data(c, arg: str):
    isbi = load(f"{HERE / 'isbi2015_unet_heatmap.py'}:cpu")
    for key in ("data_dir", "format", "train_split", "val_split", "test_split", "val_fraction"):
        c.data[key] = isbi.data[key]
    return c


def _detector(arg: str):
    c = _data(load(f"{HERE / 'pelvis_detector.py'}:heatmap"), arg)
    c.paper = (
        "pelvis paper's cascade, stage 1 on ISBI 2015: a per-class heatmap detector in "
        "YOLO11's place; see experiments/configs/cascade_isbi2015.py"
    )
    c.data.input_size = (256, 192)
    c.data.augment = "default"
    c.model.backbone_options = {"features": 16, "num_levels": 6, "upsample": "resize"}
    c.optim.schedule = "cosine"
    c.train.steps = 800
    c.train.eval_every = 200
    if arg == "smoke":
        c.train.steps, c.train.eval_every, c.train.batch_size = 2, 2, 2
    return c


def get_config(arg: str = "cpu"):
    base_arg, _, stage = arg.partition(".")
    if base_arg not in ARGS or stage not in ("", "detector"):
        raise ValueError(
            f"argument must be one of {', '.join(ARGS)}, optionally with .detector, got {arg!r}"
        )
    if stage == "detector":
        return _detector(base_arg)
    c = _data(load(f"{HERE / 'pelvis_sam_decoder.py'}:tiny"), base_arg)
    c.paper = (
        "pelvis paper (Stansfield et al. 2025), detector -> SAM cascade on ISBI 2015 "
        "landmarks; deviations in experiments/configs/cascade_isbi2015.py"
    )
    c.task.mode = "cascade"
    c.cascade = base.get_config().cascade
    c.cascade.detector = f"{HERE / 'cascade_isbi2015.py'}:{base_arg}.detector"
    c.sam.prompts_per_image = 19
    c.train.steps = 600
    c.train.eval_every = 200
    if base_arg == "smoke":
        c.train.steps, c.train.eval_every, c.train.batch_size = 2, 2, 2
    return c
