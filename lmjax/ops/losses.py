"""Training losses, looked up by name: `get_loss(name)`, `register_loss(name, kind=...)`.

Importing this module registers every built-in loss: map losses
(`lmjax.ops.map_losses`), coordinate losses (`lmjax.ops.coord_losses`) and region
losses (`lmjax.ops.region_losses`); the registry and the conventions every loss
keeps are in `lmjax.ops.loss_registry`.
"""

from lmjax.ops.coord_losses import coord_l1, coord_l2, coord_mse, wing_loss
from lmjax.ops.loss_registry import (
    KINDS,
    LOSS_KINDS,
    LOSSES,
    LossFn,
    get_loss,
    list_losses,
    loss_kind,
    register_loss,
    unregister_loss,
)
from lmjax.ops.map_losses import (
    bce_loss,
    deep_supervision,
    dice_ce_loss,
    dice_loss,
    heatmap_mse,
    heatmap_ncc_loss,
    kl_heatmap_loss,
)
from lmjax.ops.region_losses import (
    anatomical_consistency_loss,
    soft_anatomical_consistency_loss,
)

__all__ = [
    "KINDS",
    "LOSSES",
    "LOSS_KINDS",
    "LossFn",
    "anatomical_consistency_loss",
    "bce_loss",
    "coord_l1",
    "coord_l2",
    "coord_mse",
    "deep_supervision",
    "dice_ce_loss",
    "dice_loss",
    "get_loss",
    "heatmap_mse",
    "heatmap_ncc_loss",
    "kl_heatmap_loss",
    "list_losses",
    "loss_kind",
    "register_loss",
    "soft_anatomical_consistency_loss",
    "unregister_loss",
    "wing_loss",
]
