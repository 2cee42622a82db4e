"""Evaluation in the original frame against an independent NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest

from lmjax import metrics
from lmjax.data.types import Dataset, LandmarkSet, Record
from lmjax.evaluate import (
    error_report,
    format_report,
    predict_dataset,
    segmentation_overlap,
    with_flip_tta,
)


def _dot_dataset(n=5, hw=(60, 80), seed=0):
    """Images with one Gaussian dot per landmark, at known sub-pixel positions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    lset = LandmarkSet("dots", ("left", "right"), flip_pairs=((0, 1),))
    records = []
    for i in range(n):
        pts = np.stack([rng.uniform(8, 30, 1), rng.uniform(8, hw[0] - 8, 1)], -1)
        pts = np.concatenate([pts, pts + [hw[1] / 2, 0]]).astype(np.float32)
        img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0) for x, y in pts)
        spacing = (0.2, 0.3) if i % 2 else (0.25, 0.25)
        records.append(
            Record(img.astype(np.float32), pts, None, spacing, "test", meta={"name": f"d{i}"})
        )
    return Dataset(lset, records, name="dots")


def _centroid_predict(images):
    with np.errstate(invalid="ignore", divide="ignore"):  # all-zero padding samples
        return _centroids(images)


def _centroids(images):
    """Intensity centroid of each half of the image: one dot per half."""
    b, h, w, _ = images.shape
    img = images[..., 0] - images[..., 0].min(axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for half in (slice(0, w // 2), slice(w // 2, w)):
        m = img[:, :, half] * (
            img[:, :, half] > 0.5 * img[:, :, half].max(axis=(1, 2), keepdims=True)
        )
        tot = m.sum(axis=(1, 2))
        out.append(
            np.stack([(m * xx[:, half]).sum((1, 2)) / tot, (m * yy[:, half]).sum((1, 2)) / tot], -1)
        )
    return np.stack(out, 1), np.ones((b, 2), np.float32)


def test_predictions_map_back_to_the_original_frame():
    ds = _dot_dataset()
    coords, conf = predict_dataset(_centroid_predict, ds, input_size=(48, 64), batch_size=2)
    assert coords.shape == (5, 2, 2) and conf.shape == (5, 2)
    # Resizing 60x80 to 48x64 and back keeps the dots within a fraction of a pixel.
    np.testing.assert_allclose(coords, ds.landmarks(), atol=0.35)


def test_error_report_matches_numpy():
    ds = _dot_dataset()
    gt = ds.landmarks()
    pred = gt + np.array([3.0, -4.0], np.float32)
    pred[2, 1] = np.nan  # a missed detection
    report = error_report(pred, ds, thresholds=(1.0, 1.2))
    sp = np.array([r.spacing for r in ds.records])
    ref = np.hypot(3.0 * sp[:, 1], 4.0 * sp[:, 0])[:, None].repeat(2, 1)
    ref[2, 1] = np.nan
    valid = ref[np.isfinite(ref)]
    assert report["unit"] == "mm" and report["n_images"] == 5 and report["missed"] == 1
    assert report["mre"] == pytest.approx(valid.mean(), rel=1e-5)
    assert report["sd"] == pytest.approx(valid.std(), rel=1e-4)
    assert report["sdr"]["1.2"] == pytest.approx(100 * (valid <= 1.2).mean())
    assert report["per_landmark"][0]["mre"] == pytest.approx(ref[:, 0].mean(), rel=1e-5)
    text = format_report(report)
    assert "MRE" in text and "left" in text and "missed 1" in text


def test_unknown_spacing_reports_pixels():
    ds = _dot_dataset()
    ds.records[0].spacing = None
    with pytest.warns(UserWarning, match="reported in pixels"):
        report = error_report(ds.landmarks() + 1.0, ds)
    assert report["unit"] == "px" and report["mre"] == pytest.approx(np.sqrt(2))


def test_flip_tta_is_exact_for_a_symmetric_predictor():
    ds = _dot_dataset()
    plain, _ = predict_dataset(_centroid_predict, ds, input_size=(48, 64), batch_size=5)
    perm = ds.landmark_set.flip_permutation()
    tta, _ = predict_dataset(
        with_flip_tta(_centroid_predict, perm), ds, input_size=(48, 64), batch_size=5
    )
    np.testing.assert_allclose(tta, plain, atol=1e-3)


def _discs(centres: np.ndarray, hw: tuple[int, int], radius: float) -> np.ndarray:
    """`[B, H, W, K]` discs of pixel centres within `radius`, empty for NaN centres."""
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    d2 = (xx[None, :, :, None] - centres[:, None, None, :, 0]) ** 2
    d2 = d2 + (yy[None, :, :, None] - centres[:, None, None, :, 1]) ** 2
    return np.nan_to_num(d2, nan=np.inf) <= radius**2


def test_segmentation_overlap_against_numpy_masks():
    ds = _dot_dataset(n=5)
    # Landmark 1 of record 3 is not annotated: it has no mask and must not count.
    ds.records[3].landmarks[1] = np.nan
    shift = np.array([2.0, 0.0], np.float32)
    seen = []

    def overlap(batch):
        lm, hw = batch["landmarks"], batch["image"].shape[1:3]
        target, pred = _discs(lm, hw, 4.0), _discs(lm + shift, hw, 4.0)
        seen.append(metrics.mask_iou(pred, target)[batch["valid"]])
        inter = (pred & target).sum((1, 2))
        return np.stack([inter, (pred | target).sum((1, 2))], -1)

    report = segmentation_overlap(overlap, ds, input_size=(48, 64), batch_size=2)
    iou = np.concatenate(seen)  # NaN where both masks are empty
    assert report["n"] == 9 == np.isfinite(iou).sum()
    assert report["iou"] == pytest.approx(np.nanmean(iou), rel=1e-6)
    assert 0.5 < report["iou"] < report["dice"] < 1
    assert report["per_landmark"]["left"] == pytest.approx(np.nanmean(iou[:, 0]), abs=1e-4)
    assert report["per_landmark"]["right"] == pytest.approx(np.nanmean(iou[:, 1]), abs=1e-4)
    assert "IoU" in format_report({**error_report(ds.landmarks(), ds), "segmentation": report})
    assert segmentation_overlap(lambda b: None, ds, input_size=(48, 64), batch_size=2) is None
