"""Training: optimizer building, the train state and the compiled train/eval steps."""

from lmjax.train.optim import OptimConfig, ReduceOnPlateau, make_optimizer, make_schedule
from lmjax.train.step import (
    TaskSpec,
    TrainState,
    create_train_state,
    make_eval_step,
    make_train_step,
    set_lr_scale,
)

__all__ = [
    "OptimConfig",
    "ReduceOnPlateau",
    "TaskSpec",
    "TrainState",
    "create_train_state",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "set_lr_scale",
]
