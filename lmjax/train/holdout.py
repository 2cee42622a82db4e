"""The conformal calibration split: a seeded share of the training records that is
neither trained on nor used for model selection (`lmjax.train.setup.load_calibration`).

Cross-validation refuses it: each fold would need its own calibration set and its
own radii, while a run has one `conformal.json`; calibrate the refit model instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmjax.conformal import check_alpha
from lmjax.data.types import Dataset
from lmjax.train import folds


def calibration_cut(train: Dataset, config) -> tuple[Dataset, Dataset | None]:
    """`(train without calibration records, calibration records or None)`.

    A seeded permutation of its own stream (`(seed, 1)`), so the cut does not repeat
    the validation cut's order and stays the same for a given seed and data.

    Raises:
      ValueError: a fraction outside [0, 1), conformal.alpha outside (0, 1),
        cross-validation (whose folds would each need their own calibration set),
        or too few records for both parts.
    """
    frac = float(config.data.get("calib_fraction", 0) or 0)
    if frac == 0:
        return train, None
    if not 0 < frac < 1:
        raise ValueError(f"data.calib_fraction must be in [0, 1), got {frac}")
    # Checked here, before training, rather than when the radii are computed.
    check_alpha(config.get("conformal", {}).get("alpha", 0.1))
    if folds.cv_enabled(config):
        raise ValueError(
            "data.calib_fraction > 0 with cross-validation: calibrate the refit model "
            "instead (train without cv_folds, or set data.calib_fraction=0)"
        )
    n = len(train.records)
    n_cal = int(round(n * frac))
    if n_cal < 2 or n - n_cal < 1:
        raise ValueError(
            f"data.calib_fraction={frac:g} of {n} training records leaves {n_cal} for "
            f"calibration and {n - n_cal} for training; need at least 2 and 1"
        )
    order = np.random.default_rng((int(config.train.seed), 1)).permutation(n)
    held = set(order[:n_cal].tolist())
    keep = [r for i, r in enumerate(train.records) if i not in held]
    calib = [train.records[i] for i in sorted(held)]
    return dataclasses.replace(train, records=keep), dataclasses.replace(train, records=calib)
