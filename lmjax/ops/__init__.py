"""Pure jnp functions shared by every model: targets, extractors, losses, geometry.

Host-side connected-component centroids live in `lmjax.ops.centroids`.
"""

from lmjax.ops.extractors import (
    hard_argmax,
    local_soft_argmax,
    probability_centroid,
    sigmoid_argmax,
    soft_argmax,
)
from lmjax.ops.geometry import apply_affine, invert_affine, warp_image
from lmjax.ops.item_targets import (
    check_item_geometry,
    item_boxes,
    mm_to_pixels,
    polygon_masks,
    polyline_masks,
)
from lmjax.ops.losses import LOSSES, get_loss, register_loss
from lmjax.ops.targets import add_background, circle_masks, gaussian_heatmaps, square_masks

__all__ = [
    "LOSSES",
    "add_background",
    "apply_affine",
    "check_item_geometry",
    "circle_masks",
    "gaussian_heatmaps",
    "get_loss",
    "hard_argmax",
    "invert_affine",
    "item_boxes",
    "local_soft_argmax",
    "mm_to_pixels",
    "polygon_masks",
    "polyline_masks",
    "probability_centroid",
    "register_loss",
    "sigmoid_argmax",
    "soft_argmax",
    "square_masks",
    "warp_image",
]
