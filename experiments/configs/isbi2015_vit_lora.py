"""MedSapiens on ISBI 2015: ViT (Sapiens 0.3B shape) + heatmap head, LoRA fine-tuning.

Elbatel et al., "MedSapiens: Taking a Pose to Rethink Medical Imaging Landmark
Detection"; Table 1, "Head Dataset" (the ISBI 2015 cephalograms), row "MedSapiens w/
LoRA": SDR 83.14 / 92.88 / 97.09 % at 2 / 3 / 4 mm, MRE 1.244 +- 2.76 mm. Settings
from sections 2.2-2.3 and 3 ("Implementation Details") and, where the text is
silent, from the authors' released config for this dataset
(`lora_med_sapiens_0.3b-210e_head-1024x768`, "released" below).

Paper vs this config ("=": the same):

  method        paper: a generalist (Sapiens + LoRA trained on the head, hand, chest
                       and leg datasets at once), then per dataset a specialist LoRA
                       fine-tuned from the generalist ("w/ LoRA")
                here:  ISBI alone: the LoRA starts from Sapiens itself; the
                       generalist -> specialist route is `medsapiens_mixture.py`
  backbone      paper: Sapiens 0.3B ViT (1024 wide, 24 layers, 16 heads, patch 16,
                       padding 2, learned position embeddings, no class token),
                       pretrained on 300 M human images
                here:  = (`vit_pose`, size "L"), weights from the user's file (see
                       below; nothing is downloaded); `b` and `tiny_cpu` are smaller
                       encoders, not in the paper
  head          paper: mmpose HeatmapHead: two 4 x 4 stride-2 deconvs of 768, two
                       1x1 convs of 768 (BN, ReLU), heatmaps at 1/4 of the input
                here:  =
  LoRA          paper: rank 4 on qkv and projection layers; released: alpha 4, rank 4
                       on qkv, alpha 8, rank 8 on the attention projection, dropout
                       0.1; adapters and head train
                here:  = the released config (`lora_ranks`, `lora_alpha`,
                       `lora_dropout`, `trainable="lora_and_head"`)
  input         paper: top-down pipeline, the box the whole image; released: 768 x
                       1024 (W x H) by an affine crop with mmpose's 1.25 box margin,
                       RGB with ImageNet mean and std
                here:  1024 x 768 letterboxed (aspect kept, no margin), one grey
                       channel (the RGB patch kernel is summed on import), per-image
                       z-score
  loss          paper: keypoint MSE on Gaussian heatmaps; released: sigma 3 heatmap
                       pixels (UDP)
                here:  = (`heatmap_mse`, sigma 12 input px = 3 at 1/4)
  decoding      paper: not given; released: UDP (maximum and its refinement), test
                       with flipped images averaged
                here:  local soft-argmax (temperature 0.1) around the maximum, no
                       flip test (`train.flip_tta` off)
  optimizer     paper: AdamW 5e-4, layer-wise decay 0.85; released: betas 0.9 /
                       0.999, weight decay 0.1 (none on biases, norms and the position
                       table), clipping at norm 1
                here:  = (`weight_decay_mask="matrices"`)
  schedule      paper: not given; released: linear warm-up over 500 iterations from
                       0.001 of the rate, x0.1 at epochs 170 and 200 of 210, batch 64
                here:  = (warm-up from 0), 630 steps (210 epochs of 135 at 3 steps an
                       epoch); no plateau drops
  augmentation  paper: random flips, photometric distortion, coarse dropout; released
                       also RandomBBoxTransform (shift, scale, rotation), blur and
                       median blur (p 0.1), coarse dropout at p 1
                here:  `medsapiens` preset, the text's three, each at p 0.5: flips,
                       brightness and contrast, one hole of 0.2-0.4 per side; flips
                       only with declared left/right pairs, and ISBI declares none
  checkpoint    paper: released: validation every epoch, the best EPE kept
                here:  validation every 10 epochs (30 steps), lowest validation MRE
  precision     paper: float32 (released config, no mixed precision)
                here:  bf16 compute, float32 parameters (`tiny_cpu` float32)
  data          paper: ISBI 2015 (400 images, 19 landmarks), UniverDetect's split
                       (not given in the text); ground truth not named
                here:  150 training images less a tenth for validation, test1; the
                       senior doctor (`--config.data.ground_truth=mean` for both)

Pretrained weights: bring your own file. `--config.model.pretrained=sapiens_0.3b.safetensors`
(or .npz, or a .pth read without PyTorch or pickle execution) loads a
Sapiens/mmpretrain ViT through the "vit_sapiens" key table of `lmjax.models.weights`
(set `pretrained_table` to "vit_timm" or "vitpose" for those layouts) and logs what
was missing or unexpected.
Without a file the backbone is random, and LoRA on a random backbone cannot reproduce
the paper: then `--config.model.trainable=all` trains the whole model from scratch (a
baseline, not the paper's method).

Arguments:

  l         the paper's setting (ViT-L/Sapiens 0.3B), bf16, rematerialised blocks.
  b         the same with a ViT-B encoder (768 wide, 12 layers, 12 heads).
  tiny_cpu  a shrink that runs on 2 CPU cores in minutes: the "tiny" ViT at
            256 x 192, batch 4, 20 steps, float32; checks the pipeline, not the method.

    lmjax train --config=experiments/configs/isbi2015_vit_lora.py:l --workdir=runs/isbi_vit_l

Not trained here (no Sapiens weights on this machine, and it needs a GPU): see
`experiments/results/isbi2015_model_zoo.md`.
"""

import math
import pathlib

import ml_collections

from lmjax import configs

_HEATMAP = pathlib.Path(__file__).with_name("isbi2015_unet_heatmap.py")
ARGS = ("b", "l", "tiny_cpu")
TRAIN_IMAGES = 135  # ISBI 2015 training set (150) less the tenth held out for validation


def _heatmap_config(arg: str):
    return configs.load(f"{_HEATMAP}:{arg}", resolved=False)


def get_config(arg: str = "l"):
    if arg not in ARGS:
        raise ValueError(f"argument must be one of {', '.join(ARGS)}, got {arg!r}")
    c = _heatmap_config("cpu" if arg == "tiny_cpu" else "gpu")
    c.paper = (
        "MedSapiens (Elbatel et al.), Table 1 Head dataset, 'MedSapiens w/ LoRA': "
        "Sapiens 0.3B ViT + heatmap head, LoRA on qkv/proj, keypoint MSE (ISBI 2015)"
    )
    c.data.input_size = (1024, 768)
    c.data.fit = "letterbox"
    c.data.augment = "medsapiens"

    c.model = ml_collections.ConfigDict()
    c.model.name = "vit_pose"
    c.model.size = arg[0].upper() if arg in ("b", "l") else "tiny"
    c.model.patch_size = 16
    c.model.patch_padding = 2
    c.model.pos_embed = "learned"
    c.model.remat = arg == "l"
    c.model.lora_ranks = {"qkv": 4, "proj": 8}
    c.model.lora_alpha = {"qkv": 4.0, "proj": 8.0}
    c.model.lora_dropout = 0.1
    c.model.trainable = "lora_and_head"
    c.model.pretrained = ""  # a checkpoint file; see the docstring
    c.model.pretrained_table = "vit_sapiens"
    c.model.pretrained_strict = False

    c.task.mode = "heatmap"
    c.task.target = "gaussian"
    c.task.sigma = 3.0 * 4  # 3 heatmap pixels at 1/4 resolution, in input pixels
    c.task.losses = {"heatmap_mse": 1.0}
    c.task.deep_supervision = False
    # Sub-pixel decoding on the 1/4-resolution maps (mmpose decodes with UDP).
    c.task.extractor = "local_soft_argmax"
    c.task.extractor_temperature = 0.1
    c.task.compute_dtype = "bfloat16"

    epochs, batch = 210, 64
    steps_per_epoch = math.ceil(TRAIN_IMAGES / batch)
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.learning_rate = 5e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.1
    c.optim.layer_decay = 0.85
    c.optim.weight_decay_mask = "matrices"  # no decay on biases, norms, position table
    c.optim.clip_norm = 1.0
    c.optim.schedule = "step"
    c.optim.warmup_steps = 500
    c.optim.boundaries = (170 * steps_per_epoch, 200 * steps_per_epoch)
    c.optim.factor = 0.1
    c.optim.plateau_patience = 1000  # the paper's schedule is fixed: no plateau drops

    c.train.batch_size = batch
    c.train.steps = epochs * steps_per_epoch
    c.train.eval_every = 10 * steps_per_epoch
    c.train.log_every = steps_per_epoch

    if arg == "tiny_cpu":
        c.data.input_size = (256, 192)
        c.data.num_threads = 2
        c.task.compute_dtype = "float32"
        c.optim.warmup_steps = 5
        c.optim.boundaries = ()
        c.train.batch_size = 4
        c.train.steps = 20
        c.train.eval_every = 10
        c.train.log_every = 5
    return c
