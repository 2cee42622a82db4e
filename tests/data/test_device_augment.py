"""Augmentation in the jitted step: same geometry and photometrics as the host path."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from lmjax.data import affine
from lmjax.data.augment import AugmentConfig, sample_geometry, warp
from lmjax.data.augment_presets import AUGMENT_PRESETS
from lmjax.data.device_augment import DeviceAugment, gaussian_blur
from lmjax.data.pipeline import make_pipeline
from lmjax.task import task_spec
from lmjax.train import evaluation, setup
from tests.data.test_pipeline import PAIRED, PROC, blob_image, toy_dataset

HW = (64, 80)  # (H, W), not square, so x and y mix-ups show
GEOMETRY = AugmentConfig(
    p_flip=0.5,
    p_rotation=1.0,
    rotation=20.0,
    p_scale=1.0,
    scale=(0.9, 1.2),
    p_shear=1.0,
    shear=8.0,
    p_translation=1.0,
    translation=0.05,
)
PERM = PAIRED.flip_permutation()
POINTS = np.array([[20.0, 18.0], [60.0, 19.0], [21.0, 45.0], [58.0, 46.0], [40.0, 32.0]])


def make_batch(images, landmarks=POINTS, visible=None, **extra):
    """A device batch of `[B, H, W]` images (all with the same landmarks)."""
    images = np.asarray(images, np.float32)
    b, k = images.shape[0], len(landmarks)
    vis = np.ones((b, k), bool) if visible is None else np.broadcast_to(visible, (b, k))
    return {
        "image": jnp.asarray(images[..., None]),
        "landmarks": jnp.asarray(np.broadcast_to(landmarks, (b, k, 2)).astype(np.float32)),
        "visible": jnp.asarray(vis),
        "valid": jnp.ones((b,), bool),
        **{name: jnp.asarray(v) for name, v in extra.items()},
    }


def run(cfg, batch, seed=0, **kwargs):
    aug = DeviceAugment(cfg, **kwargs)
    return jax.device_get(jax.jit(aug)(batch, jax.random.key(seed))), aug


def smooth_image(b=1, seed=0):
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((b, *HW)), (0, 2, 2))
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def host_landmarks(points, matrix, flipped, hw=HW):
    """The host pipeline's rule (lmjax.data.pipeline.Sampler.sample)."""
    pts = affine.apply(points, matrix).astype(np.float64)
    vis = np.isfinite(pts).all(axis=1)
    if flipped:
        pts, vis = pts[PERM], vis[PERM]
    h, w = hw
    vis &= (pts >= -0.5).all(axis=1) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] <= h - 0.5)
    pts[~vis] = np.nan
    return pts, vis


def _sources(matrix):
    ys, xs = np.mgrid[0 : HW[0], 0 : HW[1]]
    grid = np.stack([xs, ys], -1).reshape(-1, 2)
    return affine.apply(grid, np.linalg.inv(matrix)).reshape(*HW, 2)


def source_inside(matrix, eps=1e-3):
    """Output pixels whose source point lies within the input's pixel centres."""
    src = _sources(matrix)
    return ((src >= eps) & (src <= np.array([HW[1], HW[0]]) - 1 - eps)).all(-1)


def far_outside(matrix):
    """Output pixels whose source point is a whole pixel or more outside the input."""
    src = _sources(matrix)
    return ((src <= -1) | (src >= np.array([HW[1], HW[0]]))).any(-1)


# ------------------------------------------------------------------- geometry


def test_warp_and_landmarks_match_the_host_for_the_same_matrix():
    batch = make_batch(smooth_image(6))
    out, aug = run(GEOMETRY, batch, seed=3, flip_permutation=PERM)
    matrices, flips = jax.device_get(aug.geometry(jax.random.key(3), 6, HW))
    assert flips.any() and not flips.all()  # both branches are compared
    for i in range(6):
        host = warp(np.asarray(batch["image"][i, ..., 0]), matrices[i], HW)
        # SciPy's "constant" mode cuts off at the outer pixel centres, the device fades
        # to zero over the next pixel: they agree wherever the source point is inside.
        inside = source_inside(matrices[i])
        assert inside.mean() > 0.5
        np.testing.assert_allclose(out["image"][i, ..., 0][inside], host[inside], atol=2e-5)
        np.testing.assert_array_equal(out["image"][i, ..., 0][far_outside(matrices[i])], 0.0)
        pts, vis = host_landmarks(POINTS, matrices[i], flips[i])
        np.testing.assert_array_equal(out["visible"][i], vis)
        np.testing.assert_allclose(out["landmarks"][i], pts, atol=1e-4)


def test_matrices_compose_like_the_host():
    # One step at a time, the device matrix is the host builder's for some drawn value.
    centre = ((HW[1] - 1) / 2, (HW[0] - 1) / 2)
    aug = DeviceAugment(AugmentConfig(p_rotation=1.0, rotation=30.0))
    for m in jax.device_get(aug.geometry(jax.random.key(0), 8, HW)[0]):
        angle = np.arctan2(m[1, 0], m[0, 0])
        assert abs(np.degrees(angle)) <= 30.0
        np.testing.assert_allclose(m, affine.rotate(angle, center=centre), atol=1e-5)
    aug = DeviceAugment(AugmentConfig(p_shear=1.0, shear=10.0))
    for m in jax.device_get(aug.geometry(jax.random.key(0), 8, HW)[0]):
        assert abs(np.degrees(np.arctan(m[0, 1]))) <= 10.0
        np.testing.assert_allclose(m, affine.shear(m[0, 1], center=centre), atol=1e-5)
    aug = DeviceAugment(AugmentConfig(p_translation=1.0, translation=0.1))
    for m in jax.device_get(aug.geometry(jax.random.key(0), 8, HW)[0]):
        np.testing.assert_allclose(m[:2, :2], np.eye(2))
        assert abs(m[0, 2]) <= 0.1 * HW[1] and abs(m[1, 2]) <= 0.1 * HW[0]


def test_a_preset_draws_like_the_host():
    # "lower_limb": the affine group at p 0.5, zoom in [0.9, 1.1]; same fraction untouched.
    cfg, n = AUGMENT_PRESETS["lower_limb"], 400
    aug = DeviceAugment(cfg)
    dev = jax.device_get(aug.geometry(jax.random.key(1), n, HW)[0])
    rng = np.random.default_rng(1)
    host = np.stack([sample_geometry(cfg, rng, HW).matrix for _ in range(n)])
    for ms in (dev, host):
        untouched = np.all(np.abs(ms - np.eye(3)) < 1e-9, axis=(1, 2)).mean()
        assert 0.4 < untouched < 0.6, untouched
        zoom = np.sqrt(np.abs(np.linalg.det(ms[:, :2, :2])))
        assert zoom.min() >= 0.9 - 1e-5 and zoom.max() <= 1.1 + 1e-5


def test_landmarks_follow_the_image():
    img = blob_image(HW, POINTS, sigma=1.5)
    batch = make_batch(np.stack([img] * 4))
    out, _ = run(dataclasses.replace(GEOMETRY, p_flip=0.0), batch, seed=5)
    for i in range(4):
        for x, y in out["landmarks"][i][out["visible"][i]]:
            r, y0, x0 = 5, int(round(y)), int(round(x))
            win = out["image"][i, y0 - r : y0 + r + 1, x0 - r : x0 + r + 1, 0].astype(np.float64)
            ys, xs = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
            found = np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()
            np.testing.assert_allclose(found, [x, y], atol=0.15)


def test_flip_mirrors_the_image_and_swaps_pairs():
    img = smooth_image(1)
    vis = np.array([True, False, True, True, True])
    pts = np.where(vis[:, None], POINTS, np.nan)
    out, _ = run(AugmentConfig(p_flip=1.0), make_batch(img, pts, vis), flip_permutation=PERM)
    np.testing.assert_allclose(out["image"][0, ..., 0], img[0, :, ::-1], atol=1e-6)
    expected = pts[PERM] * [-1, 1] + [HW[1] - 1, 0]
    np.testing.assert_allclose(out["landmarks"][0], expected, atol=1e-5)
    np.testing.assert_array_equal(out["visible"][0], vis[PERM])


def test_missing_and_pushed_out_landmarks_are_not_visible():
    vis = np.array([True, True, False, True, True])
    pts = np.where(vis[:, None], POINTS, np.nan)
    pts[0] = [1.0, 1.0]  # near the corner: any shift outward drops it
    cfg = AugmentConfig(p_translation=1.0, translation=0.3)
    batch = make_batch(np.zeros((16, *HW)), pts, vis)
    out, aug = run(cfg, batch, seed=2)
    matrices = jax.device_get(aug.geometry(jax.random.key(2), 16, HW)[0])
    assert not out["visible"][:, 2].any() and np.isnan(out["landmarks"][:, 2]).all()
    dropped = 0
    for i in range(16):
        want_pts, want_vis = host_landmarks(pts, matrices[i], False)
        np.testing.assert_array_equal(out["visible"][i], want_vis)
        assert np.isnan(out["landmarks"][i][~want_vis]).all()
        np.testing.assert_allclose(out["landmarks"][i], want_pts, atol=1e-4)
        dropped += not want_vis[0]
    assert dropped > 0  # the rule was exercised


def test_region_mask_is_warped_by_nearest_and_relabelled_on_flips():
    mask = np.zeros((1, *HW), np.int32)
    mask[0, 10:20, 5:15], mask[0, 30:40, 50:70] = 1, 2
    batch = make_batch(smooth_image(1), region_mask=mask)
    out, _ = run(AugmentConfig(p_flip=1.0), batch, flip_permutation=PERM, region_table=[0, 2, 1])
    np.testing.assert_array_equal(out["region_mask"][0], np.array([0, 2, 1])[mask[0, :, ::-1]])
    cfg = AugmentConfig(p_rotation=1.0, rotation=15.0)
    out, aug = run(cfg, batch, seed=4)
    m = jax.device_get(aug.geometry(jax.random.key(4), 1, HW)[0][0])
    host = warp(mask[0], m, HW, order=0)
    assert set(np.unique(out["region_mask"])) <= {0, 1, 2}
    assert (out["region_mask"][0] != host).mean() < 0.01  # ties at .5 may round either way


def test_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="elastic"):
        DeviceAugment(AugmentConfig(p_elastic=1.0, elastic_alpha=2.0))
    with pytest.raises(ValueError, match="flip_permutation"):
        DeviceAugment(AugmentConfig(p_flip=0.5))


# ---------------------------------------------------------------- photometric


def photo(cfg, images, seed=0, **extra):
    out, _ = run(cfg, make_batch(images, **extra), seed=seed)
    return out["image"][..., 0]


def test_photometric_operations_have_their_configured_effect():
    x = 0.3 + 0.4 * smooth_image(32)  # within [0.3, 0.7]: no clipping below
    y = photo(AugmentConfig(p_brightness=1.0, brightness=0.2), x)
    shift = (y - x).reshape(32, -1)
    np.testing.assert_allclose(shift, shift[:, :1] + 0 * shift, atol=1e-6)
    assert np.abs(shift).max() <= 0.2 and shift.std() > 0.05
    y = photo(AugmentConfig(p_contrast=1.0, contrast=(0.5, 1.5)), x)
    mean = x.mean(axis=(1, 2), keepdims=True)
    factor = ((y - mean) / (x - mean)).reshape(32, -1)
    ok = np.abs(x - mean).reshape(32, -1) > 0.05
    assert all(np.ptp(f[o]) < 1e-3 for f, o in zip(factor, ok, strict=True))
    assert 0.5 <= factor[ok].min() and factor[ok].max() <= 1.5
    y = photo(AugmentConfig(p_gamma=1.0, gamma=(0.7, 1.5)), x)
    g = (np.log(y) / np.log(x)).reshape(32, -1)
    np.testing.assert_allclose(g, g[:, :1] + 0 * g, atol=1e-4)
    assert 0.7 - 1e-5 <= g.min() and g.max() <= 1.5 + 1e-5
    y = photo(AugmentConfig(p_noise=1.0, noise_std=(0.01, 0.03)), x)
    std = (y - x).reshape(32, -1).std(axis=1)
    assert 0.009 < std.min() and std.max() < 0.032 and abs((y - x).mean()) < 1e-3


def test_blur_matches_scipy():
    x = smooth_image(1, seed=3)
    y = photo(AugmentConfig(p_blur=1.0, blur_sigma=(1.5, 1.5)), x)
    np.testing.assert_allclose(y[0], ndimage.gaussian_filter(x[0], 1.5), atol=1e-5)
    # A traced sigma (as drawn per example) gives scipy's filter for that sigma.
    z = jax.jit(gaussian_blur, static_argnums=2)(jnp.asarray(x[0, ..., None]), 0.8, 6)
    np.testing.assert_allclose(z[..., 0], ndimage.gaussian_filter(x[0], 0.8), atol=1e-4)


def test_dropout_sets_boxes_to_zero():
    x = 0.2 + 0.8 * smooth_image(8)
    y = photo(AugmentConfig(p_dropout=1.0, dropout_holes=(1, 1), dropout_size=(0.25, 0.25)), x)
    for img in y:
        rows, cols = np.nonzero(img == 0)
        # round(0.25 * 64) x round(0.25 * 80) pixels, one rectangle
        assert (np.ptp(rows) + 1, np.ptp(cols) + 1, rows.size) == (16, 20, 320)
    y = photo(AugmentConfig(p_dropout=1.0, dropout_holes=(2, 4), dropout_size=(0.05, 0.1)), x)
    assert all(0 < (img == 0).sum() <= 4 * 0.1 * 64 * 0.1 * 80 + 40 for img in y)


def test_everything_on_stays_in_the_unit_range_and_then_normalises():
    cfg = AugmentConfig(
        p_brightness=1.0,
        brightness=0.5,
        p_contrast=1.0,
        contrast=(0.5, 2.0),
        p_gamma=1.0,
        gamma=(0.5, 2.0),
        p_noise=1.0,
        noise_std=(0.0, 0.2),
        p_blur=1.0,
        blur_sigma=(0.0, 2.0),
        p_dropout=1.0,
    )
    x = smooth_image(16, seed=1)
    y = photo(cfg, x)
    assert y.min() >= 0.0 and y.max() <= 1.0 and (y == 0).any() and (y == 1).any()
    norm = np.tile(np.float32([0.4, 0.2]), (16, 1))
    z = photo(cfg, x, pixel_norm=norm)
    np.testing.assert_allclose(z, (y - 0.4) / 0.2, atol=1e-5)


def test_probabilities_gate_each_example():
    x = 0.3 + 0.4 * smooth_image(64)
    y = photo(AugmentConfig(p_brightness=0.5, brightness=0.2), x)
    changed = np.abs(y - x).max(axis=(1, 2)) > 1e-7
    assert 0.3 < changed.mean() < 0.7
    np.testing.assert_array_equal(photo(AugmentConfig(), x), x)  # all off: unchanged


def test_keys_differ_per_example_and_repeat_for_the_same_key():
    cfg = dataclasses.replace(GEOMETRY, p_brightness=1.0, brightness=0.2)
    x = np.repeat(smooth_image(1), 4, axis=0)
    batch = make_batch(x)
    draw = jax.jit(DeviceAugment(cfg, flip_permutation=PERM))  # one compile for a and c
    a, c = (jax.device_get(draw(batch, jax.random.key(seed))) for seed in (7, 8))
    b, _ = run(cfg, batch, seed=7, flip_permutation=PERM)  # another instance, same draws
    for key in ("image", "landmarks", "visible"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["image"], c["image"])
    for i in range(4):
        for j in range(i):
            assert not np.allclose(a["image"][i], a["image"][j])


# ------------------------------------------------------------ host pipeline


def test_deferred_normalisation_gives_the_same_model_input():
    ds = toy_dataset(4, hw=(90, 110))
    kw = dict(input_size=(48, 64), batch_size=2, train=False, **PROC)
    now, later = next(make_pipeline(ds, **kw)), next(make_pipeline(ds, defer_normalize=True, **kw))
    assert "pixel_norm" not in now and later["pixel_norm"].shape == (2, 2)
    assert later["image"].min() >= 0 and later["image"].max() <= 1
    off, scale = later["pixel_norm"][:, 0], later["pixel_norm"][:, 1]
    np.testing.assert_allclose(
        (later["image"] - off[:, None, None, None]) / scale[:, None, None, None],
        now["image"],
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------------- training


def _copy(state):
    """A copy of a train state (the step donates its argument)."""

    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.copy(jax.random.key_data(x)))
        return jnp.copy(x)

    return jax.tree.map(one, state)


def test_training_with_device_augmentation_learns(tmp_path):
    from lmjax import parallel
    from lmjax.configs.phantom import get_config
    from lmjax.train import loop

    config = get_config("tiny")
    with config.unlocked():
        config.data.augment = "default"
        config.data.augment_on_device = True
        config.train.steps, config.train.eval_every, config.train.log_every = 120, 120, 40
    train_ds, val, _ = setup.load_splits(config)
    mesh, state, train_step, eval_step, _ = setup.build(
        config, val.landmark_set.num_landmarks, val.landmark_set
    )
    # The host only fits and batches: the same batches as without augmentation.
    batch = next(setup.make_train_pipeline(config, train_ds, cache_dir=None))
    with config.unlocked():
        config.data.augment = ""
    plain = next(setup.make_train_pipeline(config, train_ds, cache_dir=None))
    with config.unlocked():
        config.data.augment = "default"
    off, scale = (batch["pixel_norm"][:, i, None, None, None] for i in (0, 1))
    np.testing.assert_allclose((batch["image"] - off) / scale, plain["image"], atol=1e-5)
    np.testing.assert_array_equal(batch["landmarks"], plain["landmarks"])

    keys = setup.device_keys(task_spec(config), augment_on_device=True)
    assert keys[-1] == "pixel_norm"
    device_batch = parallel.shard_batch({k: batch[k] for k in keys}, mesh)
    # The draws depend on (rng, step) alone: a resumed run repeats them.
    _, a = train_step(_copy(state), device_batch)
    _, b = train_step(_copy(state), device_batch)
    _, c = train_step(_copy(state).replace(step=state.step + 1), device_batch)
    assert float(a["loss"]) == float(b["loss"]) != float(c["loss"])
    # Evaluation never augments: its output does not depend on the step.
    images = parallel.shard_batch({"image": plain["image"]}, mesh)
    e1 = eval_step(state, images)
    e2 = eval_step(_copy(state).replace(step=state.step + 5), images)
    np.testing.assert_array_equal(jax.device_get(e1["coords"]), jax.device_get(e2["coords"]))

    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    logged = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    assert after["mre"] < 0.7 * before["mre"], (before["mre"], after["mre"])
