"""The pelvis paper's whole system on the built-in pelvis phantom: a detector finds one
box per item, each box prompts SAM, landmarks are read from the masks and outlines
and patches are the masks.

Stansfield et al., "Landmark Detection for Medical Images using a General-purpose
Segmentation Model" (arXiv 2507.11551): YOLO11-n boxes prompt MedSAM (ViT-B),
whose mask decoder alone is fine-tuned; 72 landmarks as 2-mm circles plus 18
outlines and patches on AP pelvis radiographs.

One `lmjax train` runs every stage: the detector (`ARG.detector`, this file's
detector stage, trained into `<workdir>/detector`), its boxes on the training
images, then the decoder on detector and jittered true boxes
(`lmjax.train.cascade`). `lmjax evaluate` and `lmjax predict` use the finished
workdir as one model.

    lmjax train --config=experiments/configs/cascade_pelvis.py --workdir=DIR
    lmjax evaluate --workdir=DIR --split=test
    lmjax predict --workdir=DIR IMAGES... --output_dir=OUT

Arguments (each also names its detector stage as `ARG.detector`):
  tiny     (default) 2 CPU cores: `pelvis_detector.py:tiny` (YOLO11, width 0.125,
           256 px) with landmark boxes floored to 8 px for assignment and as
           targets (`floor_targets`), 3000 steps, and
           `pelvis_sam_decoder.py:tiny` (random frozen encoder, 256 px) for 800,
           K = 17 (every phantom item), half of the prompts the detector's; soft
           centroid.
  heatmap  as tiny with the per-class heatmap detector (`pelvis_detector.py:heatmap`).
  paper    the paper's: YOLO11-n at 640 px without the floor, MedSAM ViT-B at
           1024 px (`--config.model.pretrained=medsam.safetensors`, converted
           with `lmjax convert ... --preprocessing=medsam`), the decoder trained on
           true boxes only, all items prompted, binary mask centroid.
  full     recommended: YOLO11-n at 1024 px with the floor (stride 16), MedSAM ViT-B,
           K = 32, half the prompts the detector's, the soft centroid.

`--config.cascade.joint_steps=N` adds the joint stage (not in the paper): N steps
that train detector and decoder end to end, the detector's boxes reaching the
prompt encoder differentiably, written as a second cascade run to `DIR/joint`.

Deviations from the paper in `paper`:
- the phantom instead of the paper's 100 private radiographs (point `data.data_dir`
  at a LabelMe or COCO item set for real data);
- the decoder's loss, jitter and schedule are unstated in the paper; MedSAM's
  recipe is used (`pelvis_sam_decoder.py` lists them);
- the detector as in `pelvis_detector.py:paper` (lmjax's augmentation preset, no
  EMA, losses per image);
- the binary centroid is presumed: the paper does not say how a landmark is read
  from its mask.
Without MedSAM's weights `paper` and `full` train a random ViT-B: a shape check,
not a result.
"""

import pathlib

import ml_collections

from lmjax.configs import base, load

HERE = pathlib.Path(__file__).resolve().parent
ARGS = ("tiny", "heatmap", "paper", "full")


def _detector(arg: str) -> ml_collections.ConfigDict:
    det = "heatmap" if arg == "heatmap" else ("paper" if arg in ("paper", "full") else "tiny")
    c = load(f"{HERE / 'pelvis_detector.py'}:{det}")
    if arg == "full":
        c.data.input_size = (1024, 1024)
        c.task.loss_kwargs = {"yolo": {"min_box_side": 16.0}}
    if arg in ("paper", "full"):
        c.train.steps = 1500
    if arg == "tiny":
        # With the candidate floor alone no 3-px landmark box is ever found (TAL's
        # IoU-scaled targets stay near 0): the boxes learned are 8 px (10 mm) wide.
        c.task.loss_kwargs = {"yolo": {"min_box_side": 8.0, "floor_targets": True}}
        c.train.steps = 3000
        c.train.eval_every = 500
    return c


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    base_arg, _, stage = arg.partition(".")
    if base_arg not in ARGS or stage not in ("", "detector"):
        raise ValueError(
            f"argument must be one of {', '.join(ARGS)}, optionally with .detector, got {arg!r}"
        )
    if stage == "detector":
        return _detector(base_arg)
    sam = "tiny" if base_arg in ("tiny", "heatmap") else "medsam"
    c = load(f"{HERE / 'pelvis_sam_decoder.py'}:{sam}")
    c.paper = (
        "pelvis paper (Stansfield et al. 2025), detector -> SAM cascade; deviations in "
        "experiments/configs/cascade_pelvis.py"
    )
    c.task.mode = "cascade"
    c.cascade = base.get_config().cascade
    c.cascade.detector = f"{HERE / 'cascade_pelvis.py'}:{base_arg}.detector"
    if base_arg in ("tiny", "heatmap"):
        c.sam.prompts_per_image = 17
        c.train.steps = 800
        c.train.eval_every = 200
    elif base_arg == "paper":
        c.sam.prompts_per_image = 90
        c.cascade.p_detector = 0.0
        c.cascade.landmark_reading = "binary"
    else:
        c.sam.prompts_per_image = 32
    return c
