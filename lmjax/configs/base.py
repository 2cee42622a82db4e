"""Every configuration field, its default and what it means, in one place.

A config file's `get_config(arg)` starts from `get_config()` here (or from a file
that does) and overrides only what differs. `lmjax.configs.resolve` fills the
fields a config leaves out from these defaults and rejects any name that is not
here; the options of `model` beyond `MODEL_FIELDS` belong to the model family
and are checked against its builder's signature instead.

Defaults of `task` and `optim` equal those of `lmjax.task.TaskSpec` and
`lmjax.train.optim.OptimConfig`, so a config that omits a field means the same
thing to the library as to a reader of this table.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict


class Field(NamedTuple):
    default: Any
    doc: str
    # The type(s) a value must have when not the default's (a None default, unions).
    kind: type | tuple[type, ...] | None = None


# Fields whose value is a mapping chosen as a whole (never merged with the default).
FREE_MAPPINGS = {
    ("task", "losses"),
    ("task", "loss_kwargs"),
    ("task", "extractor_kwargs"),
    ("data", "roi_groups"),
}

TOP = {
    "paper": Field("", "the paper and method this config reproduces, with its deviations"),
}

DATA = {
    "data_dir": Field("", "dataset folder or annotation file; empty: the built-in phantom"),
    "format": Field("", "annotation format (lmjax.data.formats); empty: detected"),
    "image_dir": Field("", "image folder for LabelMe, CSV and COCO; empty: beside them"),
    "spacing": Field((), "(row_mm, col_mm) for every image, over the files'; empty: files"),
    "strict": Field(False, "duplicated LabelMe labels are errors, not warnings"),
    "ground_truth": Field("senior", "ISBI 2015 annotations: senior, junior or mean"),
    "train_split": Field("train", "split trained on (the whole dataset if absent)"),
    "val_split": Field("val", "validation split; held out of train_split when absent"),
    "test_split": Field("test", "split `lmjax evaluate` reports by default"),
    "val_fraction": Field(0.1, "share of train_split held out when val_split is absent"),
    "calib_fraction": Field(
        0.0, "share of train_split held out for conformal calibration only; 0: none"
    ),
    "cv_folds": Field(0, "k-fold cross-validation (lmjax.train.folds); 0: off"),
    "cv_group_key": Field("", "leave-one-group-out by this record metadata key"),
    "cv_group_pattern": Field("", "leave-one-group-out by a regex group of the image name"),
    "cv_fold": Field(-1, "the fold to run; -1: every fold"),
    "cv_refit": Field(False, "after the folds, train on every training record, test once"),
    "mixture": Field((), "datasets trained as one (lmjax.data.mixture): dicts with a name"),
    "mixture_only": Field("", "keep only this mixture dataset's records (a specialist)"),
    "reference_distance": Field((), "(landmark_a, landmark_b, mm): spacing from that distance"),
    "roi_groups": Field({}, "region -> its landmark names, a list or 'a,b,c' (lmjax.data.roi)"),
    "roi": Field("", "train and test on this region's crops and landmarks; empty: whole image"),
    "roi_margin": Field(0.25, "region box growth per side, as a fraction of its longer side"),
    "input_size": Field((128, 128), "(rows, cols) of the model input"),
    "fit": Field("resize", "resize (stretch) or letterbox (keep aspect, pad)"),
    "normalize": Field("zscore", "intensities: zscore per image or unit (divide by bit depth)"),
    "augment": Field(
        "default",
        "preset (lmjax.data.augment_presets) or AugmentConfig fields; empty: none",
        (str, dict),
    ),
    "augment_on_device": Field(False, "augment in the jitted step; the host only decodes"),
    "cache_dir": Field("", "decode cache folder; empty: <workdir>/cache"),
    "num_threads": Field(2, "host input worker threads"),
    "phantom_size": Field(200, "images of the built-in phantom"),
}

MODEL_FIELDS = {
    "name": Field("unet", "model family (lmjax.models.list_models())"),
    "trainable": Field("all", "all, or lora_and_head (frozen backbone)"),
    "pretrained": Field("", "weights file (.safetensors, .npz, .pth); empty: none"),
    "pretrained_table": Field("", "key table of that file; empty: the family's default"),
    "pretrained_strict": Field(False, "missing, unexpected or mismatched keys are errors"),
    "pretrained_ignore": Field((), "regexes of missing keys that are expected"),
}
# Options of the default family; other families take their builders' keywords.
DEFAULT_MODEL_OPTIONS = {
    "features": 16,
    "num_levels": 4,
    "upsample": "resize",
    "deep_supervision": True,
}

TASK = {
    "mode": Field(
        "heatmap",
        "heatmap, segmentation or coordinate (lmjax.task.HEADS), or a task with its own "
        "trainer (lmjax.train.trainers: sam_decoder, cascade)",
    ),
    "target": Field("", "gaussian, circle or square; empty: the head's (circle for segmentation)"),
    "sigma": Field(2.0, "Gaussian target sigma in model-input pixels"),
    "radius": Field(3.0, "circle target radius in model-input pixels"),
    "side": Field(5.0, "square target side in model-input pixels"),
    "losses": Field({"heatmap_mse": 1.0}, "loss name -> weight (lmjax.ops.losses)"),
    "loss_kwargs": Field({}, "loss name -> its keyword arguments"),
    "extractor": Field("hard_argmax", "maps -> coordinates: a device or host extractor"),
    "extractor_temperature": Field(0.02, "temperature of soft_argmax / local_soft_argmax"),
    "extractor_kwargs": Field({}, "further keyword arguments of the extractor"),
    "deep_supervision": Field(False, "also supervise the model's coarser outputs"),
    "deep_supervision_weights": Field((), "their weights, finest first; empty: halving"),
    "compute_dtype": Field("float32", "float32 or bfloat16 (parameters stay float32)"),
    "landmark_regions": Field((), "region of each landmark; empty: the landmark set's"),
    "consistency_regions": Field("predicted", "regions of consistency losses: predicted|label"),
}

OPTIM = {
    "name": Field("adam", "adam, adamw or sgd"),
    "learning_rate": Field(1e-3, "peak learning rate"),
    "weight_decay": Field(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay"),
    "weight_decay_mask": Field("all", "all, or matrices (no decay of biases, norms, tables)"),
    "b1": Field(0.9, "Adam beta1"),
    "b2": Field(0.999, "Adam beta2"),
    "eps": Field(1e-8, "Adam epsilon"),
    "momentum": Field(0.9, "SGD momentum"),
    "nesterov": Field(False, "SGD Nesterov momentum"),
    "schedule": Field("constant", "constant, cosine, step or polynomial"),
    "warmup_steps": Field(0, "linear warm-up steps from 0"),
    "final_fraction": Field(0.0, "cosine/polynomial end as a fraction of the peak"),
    "boundaries": Field((), "step schedule: steps where the rate is multiplied by factor"),
    "factor": Field(0.1, "step schedule multiplier"),
    "power": Field(1.0, "polynomial schedule power"),
    "clip_norm": Field(None, "clip gradients to this global norm; None: off", float),
    "layer_decay": Field(None, "layer-wise learning-rate decay rate; None: off", float),
    "plateau_patience": Field(10, "evaluations without improvement before a drop"),
    "plateau_factor": Field(0.5, "learning-rate multiplier at a plateau"),
    "plateau_rtol": Field(1e-4, "relative improvement that counts"),
    "plateau_cooldown": Field(0, "evaluations after a drop before counting again"),
    "plateau_min_scale": Field(0.0, "lowest learning-rate scale"),
}

TRAIN = {
    "steps": Field(400, "optimizer steps"),
    "batch_size": Field(8, "global batch (split over processes and devices)"),
    "eval_every": Field(100, "validate and checkpoint every this many steps"),
    "log_every": Field(20, "fetch and log metrics every this many steps"),
    "keep": Field(3, "checkpoints kept besides the best"),
    "tensorboard": Field(True, "write TensorBoard event files under <workdir>/tensorboard"),
    "seed": Field(0, "seed of parameters, data order, phantom and augmentation"),
    "init_from": Field("", "start from this run's best parameters (same model); fresh optimizer"),
    "flip_tta": Field(False, "average predictions with the mirrored image"),
    "tta_scales": Field((), "multi-scale test-time augmentation: input scales besides 1"),
    "ensemble": Field(1, "members trained together under jax.vmap (own seeds, augmentation)"),
    "ensemble_average": Field("heatmap", "members' predictions averaged as heatmap or coords"),
    "ensemble_map": Field("auto", "members as one vmap (accelerators) or unrolled (CPU): auto"),
    "cpu_conv_kernels": Field(
        "auto", "CPU train step's convolution gradients (lmjax.ops.cpu_conv): auto | all | off"
    ),
}

# The coarse-to-fine refinement stage (lmjax.train.refine): a small local model on
# fine-spacing patches around the global estimate, trained into <workdir>/refine.
REFINE = {
    "enabled": Field(False, "lmjax train also trains the refinement stage after the global one"),
    "spacing_mm": Field(0.25, "patch spacing in mm per pixel (pixels when spacing is unknown)"),
    "patch_size": Field(64, "patch side in pixels"),
    "jitter_mm": Field(-1.0, "training patch offset sigma in mm; -1: from the global errors"),
    "jitter_scale": Field(1.5, "multiplies the global model's validation RMS error per landmark"),
    "jitter_min_mm": Field(0.5, "floor of the per-landmark jitter sigma"),
    "passes": Field(1, "refinement passes, each centred on the previous estimate"),
    "steps": Field(1500, "optimizer steps of the local model"),
    "batch_size": Field(4, "images per step (every landmark of each gives a patch)"),
    "learning_rate": Field(1e-3, "peak learning rate (cosine schedule, Adam)"),
    "features": Field(16, "local U-Net base features"),
    "num_levels": Field(3, "local U-Net levels"),
    "sigma": Field(2.0, "Gaussian target sigma in patch pixels"),
    "rotation": Field(10.0, "patch rotation augmentation, +- degrees"),
    "scale": Field(0.1, "patch scale augmentation, +- fraction"),
    "intensity": Field(0.2, "patch brightness/contrast augmentation, +- fraction"),
    "eval_every": Field(250, "validate and checkpoint every this many steps"),
    "seed": Field(0, "seed of the local model and its patch sampling"),
}

# Split-conformal landmark radii (lmjax.conformal) from the calibration split.
CONFORMAL = {
    "alpha": Field(0.1, "miscoverage: the radius holds the true landmark with 1 - alpha"),
}

# SAM's decoder trained on cached image embeddings with box prompts (task.mode
# "sam_decoder", lmjax.train.sam_decoder); other tasks ignore this section.
SAM = {
    "preprocess": Field("medsam", "encoder input: medsam ([0,1], no mean/std) or sam (ImageNet)"),
    "resample": Field("bilinear", "longest-side resize filter: bilinear or bicubic"),
    "prompts_per_image": Field(32, "box prompts sampled per image and step (K)"),
    "jitter_mm": Field(2.0, "landmark boxes: each side moves out by U(0, jitter_mm)"),
    "shift_mm": Field(0.5, "landmark boxes: the whole box moves by U(-shift_mm, shift_mm)"),
    "jitter_fraction": Field(0.1, "outline/patch boxes: each side moves out by U(0, f) x size"),
    "loss_frame": Field(
        "lowres", "loss on the decoder's low-res logits; crop: also on 64x64 over 1.5x each box"
    ),
    "embed_batch": Field(4, "images per encoder call when filling the embedding cache"),
    "eval_prompts": Field(32, "prompts per decoder call at evaluation (padded, one compile)"),
}

# The detector -> SAM cascade (task.mode "cascade", lmjax.train.cascade): a detector
# stage, then SAM's decoder fine-tuned on its boxes; other tasks ignore this section.
CASCADE = {
    "detector": Field(
        "", "trained detector workdir, or a config PATH[:ARG] trained into <workdir>/detector"
    ),
    "p_detector": Field(0.5, "share of training prompts that are the detector's boxes"),
    "match_growth": Field(
        3.0, "a detector box trains only if its centre is inside the true box grown this much"
    ),
    "landmark_reading": Field("soft", "landmarks predict writes: soft, binary or box_centre"),
    "joint_steps": Field(0, "end-to-end steps of detector and decoder after the stages; 0: off"),
    "joint_weight": Field(1.0, "weight of the mask loss beside the detection loss there"),
}

SECTIONS: dict[str, dict[str, Field]] = {
    "data": DATA,
    "model": MODEL_FIELDS,
    "task": TASK,
    "optim": OPTIM,
    "train": TRAIN,
    "sam": SAM,
    "cascade": CASCADE,
    "refine": REFINE,
    "conformal": CONFORMAL,
}


def default_value(field: Field) -> Any:
    if field.default is None:
        return config_dict.placeholder(field.kind)
    if isinstance(field.default, dict):
        return dict(field.default)
    return field.default


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Every field at its default, with the default model (`DEFAULT_MODEL_OPTIONS`)."""
    del arg
    c = ml_collections.ConfigDict({k: default_value(f) for k, f in TOP.items()})
    for section, fields in SECTIONS.items():
        c[section] = ml_collections.ConfigDict({k: default_value(f) for k, f in fields.items()})
    c.model.update(DEFAULT_MODEL_OPTIONS)
    return c


def describe() -> list[tuple[str, Any, str]]:
    """`(dotted name, default, doc)` of every field, in table order."""
    rows = [(k, f.default, f.doc) for k, f in TOP.items()]
    for section, fields in SECTIONS.items():
        rows += [(f"{section}.{k}", f.default, f.doc) for k, f in fields.items()]
    return rows
