"""After training: conformal radii on the calibration split and the shape model of
the training landmarks, written into the workdir for `lmjax predict` and
`lmjax evaluate`.

`lmjax calibrate --workdir=W` runs both; `lmjax train` runs them when training
ends (the shape model always, the radii when `data.calib_fraction > 0`). The
radii are those of the run's final predictions (`load_final`: global model,
test-time augmentation the config asks for, refinement stage when present).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from lmjax import conformal, shape_check
from lmjax.train import setup
from lmjax.train.restore import read_config


def _final_predict(workdir):
    """`(predict(dataset) -> (coords [N, K, 2], confidence [N, K]), stages, step)`."""
    from lmjax.train.predictors import predictor_for

    config = read_config(workdir)
    custom = predictor_for(config.task.mode)
    if custom is not None:  # the cascade predicts through its own model
        model = custom(workdir)
        return (lambda ds: model(ds)[:2]), (config.task.mode,), None
    from lmjax.train.final_model import load_final

    final = load_final(workdir)
    return (lambda ds: final.predict(ds)), final.stages, final.step


def fit_shape_model(workdir: str | pathlib.Path, *, log=print) -> shape_check.ShapeModel | None:
    """Fits `shape_model.json` on the training split's landmarks (never validation,
    calibration or test records); None, with a note, for sets under 3 landmarks."""
    config = read_config(workdir)
    train = setup.load_splits(config)[0]
    names = train.landmark_set.names
    if len(names) < 3:
        log(f"shape check: skipped, {len(names)} landmarks (it needs 3)")
        return None
    try:
        model = shape_check.fit(train.landmarks(), train.spacings(), names)
    except ValueError as e:  # too few annotated shapes: no check, training still done
        log(f"shape check: skipped, {e}")
        return None
    if jax.process_index() == 0:
        path = shape_check.save(model, workdir)
        log(
            f"shape model of {model.n_shapes} training shapes: implausible above score "
            f"{model.threshold:.2f} ({100 * model.train_flag_rate:.1f}% of training "
            f"landmarks); {path}"
        )
    return model


def calibrate_workdir(workdir: str | pathlib.Path, *, log=print) -> dict:
    """Writes `conformal.json`: split-conformal radii per landmark of the run's final
    predictions on its calibration split (`lmjax.conformal.calibrate`).

    Raises:
      ValueError: the run has no calibration split, or `conformal.alpha` is not in (0, 1).
    """
    config = read_config(workdir)
    alpha = conformal.check_alpha(config.get("conformal", {}).get("alpha", 0.1))
    calib = setup.load_calibration(config)
    if calib is None:
        raise ValueError(
            f"{workdir}: the run has no calibration split; train with "
            "--config.data.calib_fraction=F (e.g. 0.2) to hold one out"
        )
    predict, stages, step = _final_predict(workdir)
    coords, conf = predict(calib)
    names = calib.landmark_set.names
    radii = conformal.calibrate(
        np.asarray(coords), calib.landmarks(), calib.spacings(), names, alpha,
        confidence=np.asarray(conf),
    )  # fmt: skip
    radii.update(stages=list(stages), checkpoint_step=step)
    if jax.process_index() == 0:
        path = conformal.save(radii, workdir)
        r = conformal.radii_array(radii)
        finite = r[np.isfinite(r)]
        span = f"{finite.min():.2f}-{finite.max():.2f} {radii['unit']}" if finite.size else "-"
        log(
            f"conformal radii at {100 * (1 - alpha):g}% on {len(calib)} calibration images "
            f"(alpha {alpha:g}): {span}; {path}"
        )
        if "note" in radii:
            log(f"conformal: {radii['note']}")
    return radii


def after_training(workdir: str | pathlib.Path, *, log=print) -> None:
    """The shape model, then the radii when the config holds a calibration split."""
    fit_shape_model(workdir, log=log)
    if float(read_config(workdir).data.get("calib_fraction", 0) or 0) > 0:
        calibrate_workdir(workdir, log=log)


__all__ = ["after_training", "calibrate_workdir", "fit_shape_model"]
