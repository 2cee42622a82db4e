"""Training: run set-up (`setup`), train state and compiled steps (`state`, `step`),
the loop (`loop`), evaluation of a state (`evaluation`), read-only restore of a
trained model (`restore`), optimizers, checkpoints and cross-validation (`folds`)."""

from lmjax.task import TaskSpec
from lmjax.train.optim import OptimConfig, ReduceOnPlateau, make_optimizer, make_schedule
from lmjax.train.state import TrainState, create_train_state, set_lr_scale
from lmjax.train.step import make_eval_step, make_train_step

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
