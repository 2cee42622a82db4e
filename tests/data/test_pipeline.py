"""The Grain pipeline: determinism, resume, slicing, geometry, caching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lmjax.data import affine, cache
from lmjax.data.augment import AugmentConfig
from lmjax.data.pipeline import make_dataset, make_pipeline
from lmjax.data.types import Dataset, LandmarkSet, Radiograph, Record

# Two lateral pairs and a midline point, far enough apart for separate blobs.
PAIRED = LandmarkSet(
    "toy", ("l_top", "r_top", "l_bottom", "r_bottom", "mid"), flip_pairs=((0, 1), (2, 3))
)
CENTRES = np.array([[40.0, 40.0], [80.0, 42.0], [42.0, 80.0], [78.0, 82.0], [60.0, 60.0]])
FULL = AugmentConfig(
    p_flip=0.5,
    p_rotation=1.0,
    rotation=20.0,
    p_scale=1.0,
    scale=(0.9, 1.2),
    p_shear=1.0,
    shear=8.0,
    p_translation=1.0,
    translation=0.05,
    p_elastic=1.0,
    elastic_alpha=2.0,
    elastic_grid=4,
)
PROC = dict(process_index=0, process_count=1)


def blob_image(hw, centres, sigma=2.0):
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    img = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in centres)
    return img.astype(np.float32)


def toy_dataset(n=10, hw=(120, 120), landmark_set=PAIRED, seed=0, masks=False):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        pts = CENTRES + rng.uniform(-3, 3, CENTRES.shape)
        mask = None
        if masks:
            mask = np.zeros(hw, np.int32)
            mask[30:50, 30:50] = 1  # region 0 around the first landmark
        records.append(
            Record(
                image=blob_image(hw, pts),
                landmarks=pts,
                visible=None,
                spacing=(0.1, 0.1) if i % 2 else None,
                region_mask=mask,
                meta={"name": f"r{i}"},
            )
        )
    return Dataset(landmark_set=landmark_set, records=records, name="toy")


def take(it, n):
    return list(itertools.islice(it, n))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_layout_and_types():
    ds = toy_dataset(masks=True)
    b = next(make_pipeline(ds, input_size=(64, 96), batch_size=4, augment=FULL, **PROC))
    assert b["image"].shape == (4, 64, 96, 1) and b["image"].dtype == np.float32
    assert b["landmarks"].shape == (4, 5, 2) and b["visible"].dtype == bool
    assert b["to_original"].shape == (4, 3, 3) and b["original_landmarks"].shape == (4, 5, 2)
    assert b["spacing"].shape == (4, 2) and b["index"].dtype == np.int32
    assert b["region_mask"].shape == (4, 64, 96) and b["region_mask"].dtype == np.int32
    assert b["valid"].all()
    # zscore: zero mean / unit std of the source image, not of the view.
    assert abs(float(b["image"].mean())) < 1.0
    for s, i in zip(b["spacing"], b["index"], strict=True):
        assert np.isnan(s).all() == (i % 2 == 0)


def test_deterministic_for_a_seed():
    ds = toy_dataset()
    flip_photo_dropout = {"preset": "medsapiens", "p_flip": 0.5, "p_flip_paired": 0.0}
    kw = dict(input_size=(48, 48), batch_size=3, augment=flip_photo_dropout, **PROC)
    a = take(make_pipeline(ds, seed=1, **kw), 4)
    assert_batches_equal(a, take(make_pipeline(ds, seed=1, num_threads=1, **kw), 4))
    c = take(make_pipeline(ds, seed=2, **kw), 4)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


def test_resume_from_iterator_state():
    kw = dict(input_size=(48, 48), batch_size=3, augment=FULL, seed=5, **PROC)
    ds = toy_dataset(n=7)  # 7 records: batches straddle epochs
    it = make_pipeline(ds, **kw)
    take(it, 5)
    state = it.get_state()
    expected = take(it, 3)
    it2 = make_pipeline(ds, **kw)
    it2.set_state(state)
    assert_batches_equal(expected, take(it2, 3))


def test_process_slices_partition_the_records():
    ds = toy_dataset(n=10)
    seen = []
    for p in range(3):
        it = make_pipeline(
            ds, input_size=(32, 32), batch_size=1, num_epochs=1, process_index=p, process_count=3
        )
        seen.append({int(b["index"][0]) for b in it})
    assert set().union(*seen) == set(range(10))
    assert sum(len(s) for s in seen) == 10
    # Evaluation: every process yields the same number of padded batches.
    evals = [
        list(
            make_pipeline(
                ds, input_size=(32, 32), batch_size=3, train=False, process_index=p, process_count=3
            )
        )
        for p in range(3)
    ]
    assert {len(e) for e in evals} == {2}
    idx = np.concatenate([b["index"][b["valid"]] for e in evals for b in e])
    assert sorted(idx.tolist()) == list(range(10))
    assert all((b["index"][~b["valid"]] == -1).all() for e in evals for b in e)


def test_blobs_follow_landmarks_through_full_augmentation():
    ds = toy_dataset(n=6)
    it = make_pipeline(
        ds, input_size=(120, 120), batch_size=6, augment=FULL, seed=3, normalize="unit", **PROC
    )
    flipped = 0
    for b in take(it, 2):
        for img, pts, vis, orig, idx in zip(
            b["image"][..., 0],
            b["landmarks"],
            b["visible"],
            b["original_landmarks"],
            b["index"],
            strict=True,
        ):
            flipped += not np.array_equal(orig, ds.records[idx].landmarks)
            assert vis.sum() >= 4
            for p in pts[vis]:
                x0, y0 = np.round(p).astype(int)
                win = img[y0 - 7 : y0 + 8, x0 - 7 : x0 + 8].astype(np.float64)
                ys, xs = np.mgrid[y0 - 7 : y0 + 8, x0 - 7 : x0 + 8]
                c = np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()
                assert np.abs(c - p).max() < 0.5, (c, p)
    assert 0 < flipped < 12  # both flipped and unflipped samples were checked


def test_downscaled_cache_keeps_blobs_on_landmarks():
    src = np.array([[100.0, 80.0], [300.0, 90.0], [120.0, 300.0], [290.0, 310.0], [200.0, 200.0]])
    rec = Record(image=blob_image((400, 400), src, sigma=8.0), landmarks=src, visible=None)
    aug = AugmentConfig(p_rotation=1.0, rotation=30.0, p_scale=1.0, scale=(0.9, 1.1))
    # 400 px sources, cache at 80 px (5x smaller), model input 64 px.
    b = next(
        make_pipeline(
            Dataset(PAIRED, [rec]),
            input_size=(64, 64),
            batch_size=1,
            augment=aug,
            normalize="unit",
            **PROC,
        )
    )
    img = b["image"][0, :, :, 0].astype(np.float64)
    for p in b["landmarks"][0]:
        x0, y0 = np.round(p).astype(int)
        win = img[y0 - 4 : y0 + 5, x0 - 4 : x0 + 5]
        ys, xs = np.mgrid[y0 - 4 : y0 + 5, x0 - 4 : x0 + 5]
        c = np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()
        assert np.abs(c - p).max() < 0.25, (c, p)


def test_flip_swaps_pairs():
    ds = toy_dataset(n=2)
    b = next(
        make_pipeline(
            ds, input_size=(120, 120), batch_size=2, augment=AugmentConfig(p_flip=1.0), **PROC
        )
    )
    for pts, orig, idx in zip(b["landmarks"], b["original_landmarks"], b["index"], strict=True):
        src = ds.records[idx].landmarks
        mirrored = np.stack([119.0 - src[:, 0], src[:, 1]], -1)
        np.testing.assert_allclose(pts, mirrored[[1, 0, 3, 2, 4]], atol=1e-4)
        np.testing.assert_array_equal(orig, src[[1, 0, 3, 2, 4]])


def test_flip_without_pairs_fails_at_construction():
    ds = toy_dataset(n=2, landmark_set=LandmarkSet.numbered("plain", 5))
    with pytest.raises(ValueError, match="declares no left/right flip pairs"):
        make_dataset(ds, input_size=(32, 32), batch_size=1, augment={"p_flip": 0.5}, **PROC)
    make_dataset(ds, input_size=(32, 32), batch_size=1, augment="pelvis", **PROC)
    make_dataset(ds, input_size=(32, 32), batch_size=1, augment="medsapiens", **PROC)


def test_landmarks_pushed_outside_become_not_visible():
    ds = toy_dataset(n=2)
    zoom = AugmentConfig(p_scale=1.0, scale=(4.0, 4.0))
    b = next(make_pipeline(ds, input_size=(120, 120), batch_size=2, augment=zoom, **PROC))
    # Zoom 4 about the centre keeps only the midline point (near the centre).
    np.testing.assert_array_equal(b["visible"], [[False] * 4 + [True]] * 2)
    assert np.isnan(b["landmarks"][:, :4]).all() and np.isfinite(b["landmarks"][:, 4]).all()
    assert np.isfinite(b["original_landmarks"]).all()


@pytest.mark.parametrize("fit", ["resize", "letterbox"])
def test_to_original_inverts_the_geometry(fit):
    ds = toy_dataset(n=4, hw=(150, 110))
    aug = AugmentConfig(
        p_flip=0.5,
        p_rotation=1.0,
        rotation=15.0,
        p_scale=1.0,
        scale=(0.9, 1.1),
        p_shear=1.0,
        shear=5.0,
    )
    it = make_pipeline(ds, input_size=(64, 80), batch_size=4, augment=aug, fit=fit, **PROC)
    for b in take(it, 2):
        for m, pts, vis, orig in zip(
            b["to_original"], b["landmarks"], b["visible"], b["original_landmarks"], strict=True
        ):
            np.testing.assert_allclose(affine.apply(pts[vis], m), orig[vis], atol=1e-3)


def test_resize_and_letterbox_frames():
    src = np.array([[3.0, 5.0], [47.0, 12.0], [10.0, 60.0], [40.0, 94.0], [25.0, 50.0]])
    rec = Record(image=blob_image((100, 50), src), landmarks=src, visible=None)
    ds = Dataset(PAIRED, [rec])
    kw = dict(input_size=(64, 64), batch_size=1, train=False, normalize="unit", **PROC)
    b = next(make_pipeline(ds, fit="resize", **kw))
    np.testing.assert_allclose(
        b["landmarks"][0], affine.apply(src, affine.resize((100, 50), (64, 64))), atol=1e-4
    )
    b = next(make_pipeline(ds, fit="letterbox", **kw))
    np.testing.assert_allclose(
        b["landmarks"][0], affine.apply(src, affine.letterbox((100, 50), (64, 64))), atol=1e-4
    )
    # 100x50 into 64x64 keeps aspect: 32 columns of content, 16 of padding each side.
    img = b["image"][0, :, :, 0]
    assert (img[:, :15] == 0).all() and (img[:, 49:] == 0).all()


def test_region_mask_is_warped_with_the_image():
    ds = toy_dataset(n=4, masks=True)
    aug = AugmentConfig(p_rotation=1.0, rotation=30.0, p_flip=0.5)
    b = next(make_pipeline(ds, input_size=(120, 120), batch_size=4, augment=aug, **PROC))
    assert set(np.unique(b["region_mask"])) == {0, 1}
    for mask, pts, orig, idx in zip(
        b["region_mask"], b["landmarks"], b["original_landmarks"], b["index"], strict=True
    ):
        # The label-1 square surrounds the original first landmark, wherever it went.
        k = int(np.argmin(np.abs(orig - ds.records[idx].landmarks[0]).sum(axis=1)))
        x, y = np.round(pts[k]).astype(int)
        assert mask[y, x] == 1


def write_sources(tmp_path, n):
    paths, rng = [], np.random.default_rng(0)
    for i in range(n):
        p = tmp_path / f"img{i}.npy"
        np.save(p, (rng.random((90, 70)) * 255).round().astype(np.float32))
        paths.append(str(p))
    return paths


def test_decode_cache_skips_the_decoder(tmp_path, monkeypatch):
    calls = []

    def fake_decode(path, spacing):
        calls.append(path)
        return Radiograph(pixels=np.load(path), spacing=(0.2, 0.2), bit_depth=8, path=path)

    monkeypatch.setattr(cache, "decode", fake_decode)
    (tmp_path / "src").mkdir()
    paths = write_sources(tmp_path / "src", 4)
    records = [Record(image=p, landmarks=[[10.0, 20.0]], visible=None) for p in paths]
    ds = Dataset(LandmarkSet.numbered("x", 1), records)
    kw = dict(input_size=(32, 32), batch_size=2, cache_dir=str(tmp_path / "cache"), **PROC)
    first = list(make_pipeline(ds, train=False, **kw))
    assert sorted(calls) == sorted(paths)
    epochs = list(make_pipeline(ds, num_epochs=2, **kw))
    assert len(epochs) == 4 and len(calls) == 4  # no decode after the first pass
    assert_batches_equal(first, list(make_pipeline(ds, train=False, **kw)))
    np.testing.assert_allclose(first[0]["spacing"], 0.2)
    # Cached arrays equal a fresh decode, to the 16-bit storage step.
    for p in paths:
        fresh = cache.load_path(p, long_side=40)
        cached = cache.load_path(p, long_side=40, cache_dir=str(tmp_path / "cache"))
        assert cached.pixels.shape == fresh.pixels.shape == (40, 31)
        np.testing.assert_allclose(cached.pixels, fresh.pixels, atol=1 / 65535)
        np.testing.assert_array_equal(cached.to_cache, fresh.to_cache)
    # The pipeline cached this resolution (40 = 1.25 * 32): only the fresh reads decoded.
    assert len(calls) == 4 + 4


def test_worker_processes_give_the_same_batches():
    ds = toy_dataset(n=6)
    kw = dict(input_size=(48, 48), batch_size=4, augment=FULL, seed=1, **PROC)
    expected = take(make_pipeline(ds, **kw), 3)
    it = make_pipeline(ds, worker_count=2, **kw)
    try:
        got = take(it, 3)
    finally:
        it.close()
    assert_batches_equal(expected, got)


def test_phantom_flip_mirrors_image_mask_and_labels():
    from lmjax.data.phantom import phantom_dataset
    from lmjax.data.pipeline import region_flip_table

    ds = phantom_dataset(4, seed=0, image_size=(96, 128))
    table = region_flip_table(ds.landmark_set)
    np.testing.assert_array_equal(table, [0, 1, 2, 4, 3, 6, 5])  # left/right bones swap
    kw = dict(input_size=(96, 128), batch_size=4, normalize="unit", **PROC)
    plain = next(make_pipeline(ds, train=False, **kw))
    flipped = next(make_pipeline(ds, augment=AugmentConfig(p_flip=1.0), num_epochs=1, **kw))
    order = np.argsort(flipped["index"])
    perm = ds.landmark_set.flip_permutation()
    for key in ("image", "region_mask", "landmarks", "visible"):
        flipped[key] = flipped[key][order]
    np.testing.assert_allclose(flipped["image"], plain["image"][:, :, ::-1], atol=1e-6)
    np.testing.assert_array_equal(flipped["region_mask"], table[plain["region_mask"][:, :, ::-1]])
    mirrored = plain["landmarks"].copy()
    mirrored[..., 0] = 127.0 - mirrored[..., 0]
    np.testing.assert_allclose(flipped["landmarks"], mirrored[:, perm], atol=1e-4)
    np.testing.assert_array_equal(flipped["visible"], plain["visible"][:, perm])
