"""Test-split errors and anatomical-consistency violations of a trained phantom run.

    python experiments/phantom_hrnet_consistency.py WORKDIR [WORKDIR ...] > out.json

For each workdir (best checkpoint): MRE, SD, median and SDR on the test split (as
`lmjax evaluate`), and the consistency-violation rate: the share of visible
landmarks whose prediction, rounded to the nearest pixel of the original image,
does not lie on its own bone in the phantom's region label map. The same rate for
the ground-truth annotations is printed beside it: many phantom landmarks sit on a
bone's outline (iliac crest, trochanter tips, ...), so even the truth "violates"
often; a 3 x 3 neighbourhood rate (any pixel of the bone within one pixel) is given
too.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lmjax.train import evaluation, restore, setup


def violations(coords: np.ndarray, records, regions: np.ndarray) -> dict[str, float]:
    """Share of visible landmarks off their region, exactly and within one pixel."""
    off, off_near, n = 0, 0, 0
    for pred, rec in zip(coords, records, strict=True):
        mask = rec.region_mask
        h, w = mask.shape
        for k, (x, y) in enumerate(pred):
            if not rec.visible[k] or regions[k] < 0:
                continue
            n += 1
            if not (np.isfinite(x) and np.isfinite(y)):
                off, off_near = off + 1, off_near + 1
                continue
            r, c = int(np.clip(np.rint(y), 0, h - 1)), int(np.clip(np.rint(x), 0, w - 1))
            label = regions[k] + 1
            off += mask[r, c] != label
            off_near += not (mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] == label).any()
    return {"violation_rate": off / max(n, 1), "violation_rate_3x3": off_near / max(n, 1)}


def main(workdirs: list[str]) -> dict:
    out = {}
    for workdir in workdirs:
        config, mesh, state, eval_step = restore.restore_trained(workdir)
        _, _, test = setup.load_splits(config)
        report, coords, _ = evaluation.evaluate_state(config, eval_step, mesh, state, test)
        regions = np.asarray(test.landmark_set.regions)
        truth = np.stack([r.landmarks for r in test.records])
        out[workdir] = {
            "paper": config.paper,
            "losses": dict(config.task.losses),
            "steps": int(state.step),
            "test": {k: report[k] for k in ("mre", "sd", "median", "p95", "sdr", "unit")},
            "predicted": violations(coords, test.records, regions),
            "ground_truth": violations(truth, test.records, regions),
            "num_images": len(test.records),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
