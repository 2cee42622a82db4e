"""Augmentation presets, each named for its source and citing it.

A paper's name promises that paper's recipe; where the paper leaves a range out, the
value is lmjax's and says so. `default` is lmjax's own recipe. Tests assert each
preset against the numbers quoted here (`tests/data/test_augment.py`); `lmjax
preview --augment=NAME` shows what it does to a dataset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from lmjax.data.augment import AugmentConfig

# Lower-limb paper (002, section III-B): "randomly (p = 0.5) applied affine
# transformations (rotation (+-10 deg), scaling (+-0.1), and translation (+-0.1))".
# MONAI's RandAffine draws all three together; translation is read as a fraction of
# the 512x512 input (the paper gives no unit).
_LOWER_LIMB = AugmentConfig(
    p_affine=0.5,
    p_rotation=1.0,
    rotation=10.0,
    p_scale=1.0,
    scale=(0.9, 1.1),
    p_translation=1.0,
    translation=0.1,
)

AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    # lmjax's own recipe, the lower-limb paper's numbers: the recipe every earlier
    # lmjax result was trained with. No flips; sets with left/right pairs opt in
    # through `p_flip`.
    "default": _LOWER_LIMB,
    "lower_limb": _LOWER_LIMB,
    # lmjax's recipe for films unlike the training ones (other scanners, exposures,
    # processing): the default affine steps plus gamma, contrast, brightness, noise
    # and blur. Ranges span what differs between scanners and exposure settings;
    # they were set before any test image was seen, not tuned on one.
    "robust": dataclasses.replace(
        _LOWER_LIMB,
        p_gamma=0.5,
        gamma=(0.7, 1.5),
        p_contrast=0.5,
        contrast=(0.75, 1.25),
        p_brightness=0.5,
        brightness=0.1,
        p_noise=0.25,
        noise_std=(0.0, 0.03),
        p_blur=0.25,
        blur_sigma=(0.3, 1.0),
    ),
    # Pelvis paper (000, section 3.1): "rotation, translation, shearing and scaling
    # but not reflection". It gives no ranges or probabilities; these are lmjax's:
    # each step at p=0.5, rotation +-15 deg, shear +-10 deg, zoom 0.85-1.15,
    # shift +-0.1 of the input.
    "pelvis": AugmentConfig(
        p_affine=1.0,
        p_rotation=0.5,
        rotation=15.0,
        p_scale=0.5,
        scale=(0.85, 1.15),
        p_translation=0.5,
        translation=0.1,
        p_shear=0.5,
        shear=10.0,
    ),
    # Fluoroscopy paper (004, Table 1), each "with a probability of 0.5": RandZoom
    # 1.0-1.3, RandRotate (-0.17, 0.17) rad, RandAdjustContrast gamma in (0.7, 1.5),
    # the gamma drawn uniformly as MONAI does.
    "fluoroscopy": AugmentConfig(
        p_affine=1.0,
        p_scale=0.5,
        scale=(1.0, 1.3),
        p_rotation=0.5,
        rotation=math.degrees(0.17),
        p_gamma=0.5,
        gamma=(0.7, 1.5),
        gamma_sampling="uniform",
    ),
    # MedSapiens paper (003, Implementation Details): "random flips, photometric
    # distortions, and coarse dropout". It gives no parameters; these follow
    # MMPose's PhotometricDistortion (brightness +-32/255, contrast 0.5-1.5, each
    # at p=0.5; the colour steps have no meaning on radiographs) and the Sapiens
    # pose configs' CoarseDropout (one hole, 0.2-0.4 of each side), here at p=0.5.
    # Flips only where the landmark set declares left/right pairs.
    "medsapiens": AugmentConfig(
        p_flip_paired=0.5,
        p_brightness=0.5,
        brightness=32 / 255,
        p_contrast=0.5,
        contrast=(0.5, 1.5),
        p_dropout=0.5,
        dropout_holes=(1, 1),
        dropout_size=(0.2, 0.4),
    ),
}


def from_dict(d: Mapping[str, Any]) -> AugmentConfig:
    """An AugmentConfig from plain values; a `preset` key names the starting point.

    Raises:
      ValueError: for an unknown key or preset, naming it.
    """
    d = dict(d)
    base = get_preset(d.pop("preset")) if "preset" in d else None
    return AugmentConfig.from_dict(d, base)


def get_preset(name: str) -> AugmentConfig:
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known: {sorted(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[name]


def resolve_augment(augment: AugmentConfig | str | Mapping[str, Any] | None, flip_pairs=()):
    """An AugmentConfig from a config, a preset name, a dict, or None, for a set with
    `flip_pairs` (`p_flip_paired` flips only such a set: `AugmentConfig.resolved_for`).
    """
    if augment is None:
        return None
    if isinstance(augment, str):
        augment = get_preset(augment)
    elif not isinstance(augment, AugmentConfig):
        augment = from_dict(augment)
    return augment.resolved_for(flip_pairs)
