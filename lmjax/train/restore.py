"""A trained model, restored read-only from its workdir for evaluation and prediction.

The run's resolved config comes from `WORKDIR/config.json` (written by `lmjax
train`; older runs: the config saved with the checkpoint); nothing in a workdir
is ever executed.

The model is built abstractly (`abstract_build`: shapes, dtypes and shardings under
`jax.eval_shape`) and the checkpoint restored into that: initialising the parameters
eagerly, only to overwrite them, took most of `lmjax predict`'s start-up (about 17 s
of 23 s for the ISBI U-Net on 2 CPU cores).
"""

from __future__ import annotations

import pathlib

from lmjax import configs
from lmjax.task import HEADS, task_spec
from lmjax.train import checkpoint as ckpt_lib
from lmjax.train.setup import load_landmark_set


def read_config(workdir: str | pathlib.Path):
    """The resolved config of the run in `workdir`.

    Raises:
      FileNotFoundError: neither `config.json` nor a checkpoint is there.
    """
    config = configs.read_json(workdir)
    if config is not None:
        return config
    saved = ckpt_lib.restore_config(workdir)
    if saved is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint found; train with lmjax train first")
    return configs.resolve(saved, source=f"{workdir} (checkpoint config)")


def restore_trained(
    workdir: str | pathlib.Path, *, which: str = "best", extractors: tuple[str, ...] = ()
):
    """`(config, mesh, state, eval_step)` from a workdir's best (or latest) checkpoint.

    With `extractors` the eval step also reads the model's maps with each of them
    (see `make_eval_step`'s `readers`).

    Raises:
      FileNotFoundError: the workdir has no checkpoint (one line, for the CLI).
    """
    if not ckpt_lib.has_checkpoint(workdir):
        raise FileNotFoundError(f"{workdir}: no checkpoint found; train with lmjax train first")
    config = read_config(workdir)
    if config.task.mode not in HEADS:
        raise ValueError(
            f"{workdir}: trained with task.mode {config.task.mode!r}, whose model needs "
            "prompts; this command restores map-head runs (lmjax evaluate scores it)"
        )
    landmark_set = load_landmark_set(workdir, config)
    readers = {name: task_spec(config, extractor=name) for name in extractors} or None
    mesh, state, eval_step = abstract_build(
        config, landmark_set.num_landmarks, landmark_set, readers=readers
    )
    checkpoints = ckpt_lib.Checkpointer(workdir, read_only=True)  # it may be training
    state = ckpt_lib.restore_state(checkpoints, state, which=which)
    return config, mesh, state, eval_step


def abstract_build(config, num_landmarks: int, landmark_set=None, *, readers=None):
    """`(mesh, abstract_state, eval_step)`: `setup.build`'s mesh, train state and
    eval step, the state as `jax.ShapeDtypeStruct`s replicated on the mesh.

    The model and optimizer are traced under `jax.eval_shape`, so no parameter is
    initialised or allocated; restore a checkpoint into the abstract state
    (`checkpoint.restore_state`). `readers` go to the eval step (`make_eval_step`).
    """
    from lmjax.compilation import abstract_build as build_abstract

    mesh, state, _, eval_step = build_abstract(config, num_landmarks, landmark_set, readers=readers)
    return mesh, state, eval_step


def init_from(state, workdir: str | pathlib.Path, landmark_set, *, log=print):
    """`state` with the parameters (and batch statistics) of another run's best
    checkpoint: a specialist from its generalist. Step, optimizer state and RNG stay
    the new run's.

    Raises:
      FileNotFoundError: the run has no checkpoint.
      ValueError: its landmarks or model differ from this run's.
    """
    if not ckpt_lib.has_checkpoint(workdir):
        raise FileNotFoundError(f"train.init_from={workdir}: no checkpoint found")
    theirs = load_landmark_set(workdir, read_config(workdir))
    if theirs.names != landmark_set.names:
        raise ValueError(
            f"train.init_from={workdir}: trained on landmarks {theirs.name!r} "
            f"({theirs.num_landmarks}), this run on {landmark_set.name!r} "
            f"({landmark_set.num_landmarks}); a specialist keeps the mixture's set "
            "(data.mixture with data.mixture_only)"
        )
    checkpoints = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        source = ckpt_lib.restore_state(checkpoints, state)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"train.init_from={workdir}: its model or optimizer differs from this run's "
            f"({str(e).splitlines()[0][:200]})"
        ) from e
    log(f"initialised from the best checkpoint of {workdir} (step {int(source.step)})")
    return state.replace(params=source.params, model_state=source.model_state)
