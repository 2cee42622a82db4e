"""A finished map-head run as it predicts: every stage the workdir holds, composed.

`lmjax predict`, `lmjax evaluate` and conformal calibration all read a run through
`load_final`, so the three see the same landmarks: the global model (with the
test-time augmentation its config asks for), then the refinement stage when
`<workdir>/refine` holds one (`lmjax.train.refine`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lmjax import evaluate, tta
from lmjax.data.types import Dataset, LandmarkDataError, LandmarkSet
from lmjax.task import task_spec
from lmjax.train import setup
from lmjax.train.evaluation import predictor
from lmjax.train.restore import restore_trained


class FinalModel(NamedTuple):
    config: Any
    landmark_set: LandmarkSet
    # (dataset, batch size or None) -> (coords [N, K, 2] original pixels, confidence [N, K])
    predict: Callable[..., tuple[np.ndarray, np.ndarray]]
    # names of the stages applied, in order ("global", "flip_tta", "refine", ...)
    stages: tuple[str, ...]
    step: int


def load_final(
    workdir: str | pathlib.Path,
    *,
    flip_tta: bool = False,
    refine: bool = True,
    which: str = "best",
    tta_scales: tuple[float, ...] | None = None,
) -> FinalModel:
    """The run in `workdir` as `predict` and `evaluate` use it.

    Args:
      flip_tta: also average with the mirrored image (done anyway when the config
        says `train.flip_tta` and the landmark set has pairs).
      refine: apply the refinement stage when the workdir has one.
      tta_scales: multi-scale TTA factors (`lmjax.tta.with_scale_tta`) replacing
        the config's `train.tta_scales`; None: the config's, () or (1,): none.

    An ensemble workdir (`train.ensemble > 1`) predicts the members' average
    (`lmjax.train.ensemble`).

    Raises:
      FileNotFoundError: no checkpoint.
      LandmarkDataError: flip TTA asked for a landmark set without left/right pairs.
      ValueError: a scale factor that is not positive and finite.
    """
    scales = None if tta_scales is None else tta.check_scales(tta_scales)  # before restoring
    config, mesh, state, eval_step = restore_trained(workdir, which=which)
    lset = setup.load_landmark_set(workdir, config)
    predict_images = predictor(eval_step, mesh, [state], task_spec(config))
    stages = ["global"]
    if flip_tta and not lset.flip_pairs:
        raise LandmarkDataError(f"flip TTA: landmark set {lset.name!r} has no left/right pairs")
    if (flip_tta or config.train.flip_tta) and lset.flip_pairs:
        predict_images = evaluate.with_flip_tta(predict_images, lset.flip_permutation())
        stages.append("flip_tta")
    scales = tta.check_scales(config.train.tta_scales) if scales is None else scales
    if scales:
        predict_images = tta.with_scale_tta(predict_images, scales)
        stages.append("scale_tta")

    def predict_global(dataset: Dataset, batch_size: int | None = None):
        return evaluate.predict_dataset(
            predict_images,
            dataset,
            input_size=tuple(config.data.input_size),
            batch_size=batch_size or config.train.batch_size,
            fit=config.data.fit,
            normalize=config.data.normalize,
        )

    predict = predict_global
    if refine:
        from lmjax.train import refine_stage

        if refine_stage.has_stage(workdir):
            stage = refine_stage.load(workdir, config, lset)
            # One program per batch where the global answer is on the device already.
            if stages == ["global"] and fusable(config, eval_step, state):
                predict = stage.fused(eval_step, state, mesh, config)
            else:
                predict = stage.wrap(predict_global)
            stages.append("refine")
    return FinalModel(config, lset, predict, tuple(stages), int(state.step))


def fusable(config, eval_step, state) -> bool:
    """Whether the eval step gives coordinates on the device (no host extractor) in a
    single process: then global and refinement run as one jitted program."""
    import jax

    from lmjax.train.evaluation import gives_maps

    return jax.process_count() == 1 and not gives_maps(config, eval_step, state)


__all__ = ["FinalModel", "fusable", "load_final"]
