"""Item geometry (outline and patch vertices) through the host and device augmentation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.data import affine
from lmjax.data.augment import AugmentConfig, ElasticField, warp
from lmjax.data.device_augment import DeviceAugment
from lmjax.data.item_geometry import VERTEX_KEYS
from lmjax.data.items import item_centroid, item_vertices
from lmjax.data.pelvis_phantom import pelvis_phantom_dataset
from lmjax.data.phantom import phantom_dataset
from lmjax.data.pipeline import make_pipeline
from lmjax.ops.item_masks import item_masks, kind_ids

INPUT = (128, 128)
PROC = dict(process_index=0, process_count=1, num_threads=1)
AFFINE = {"preset": "lower_limb", "p_affine": 1.0}  # rotation, scale, translation every time
FLIPS = {**AFFINE, "p_flip": 0.5}


@pytest.fixture(scope="module")
def pelvis():
    return pelvis_phantom_dataset(6, seed=3)


def batches(ds, n=2, **kw):
    kw = {"input_size": INPUT, "batch_size": 6, "seed": 1, **PROC, **kw}
    return list(itertools.islice(make_pipeline(ds, **kw), n))


def examples(batch_list):
    """(batch, row) pairs of the real examples."""
    return [(b, i) for b in batch_list for i in np.flatnonzero(b["valid"])]


def expected(ds, b, i):
    """The example's items: the originals (the flip partners when flipped) through
    `inv(to_original)`, and whether the example is flipped."""
    v_max = b["item_vertices"].shape[2]
    orig, _ = item_vertices([ds.records[b["index"][i]]], ds.landmark_set, max_vertices=v_max)
    to_orig = b["to_original"][i].astype(np.float64)
    flipped = np.linalg.det(to_orig[:2, :2]) < 0
    if flipped:
        orig = orig[:, ds.landmark_set.flip_permutation()]
    return affine.apply(orig[0], np.linalg.inv(to_orig)), flipped


@pytest.mark.parametrize("augment", [AFFINE, FLIPS], ids=["affine", "flips"])
def test_vertices_follow_the_example_matrix(pelvis, augment):
    bs = batches(pelvis, augment=augment)
    k = pelvis.landmark_set.num_landmarks
    v_max = max(len(p) for r in pelvis.records for p in r.polygons.values())
    flips = []
    for b, i in examples(bs):
        assert b["item_vertices"].shape[1:] == (k, v_max, 2)
        assert b["item_vertices"].dtype == np.float32 and b["vertex_valid"].dtype == bool
        want, flipped = expected(pelvis, b, i)
        np.testing.assert_allclose(b["item_vertices"][i], want, atol=1e-3)
        np.testing.assert_array_equal(b["vertex_valid"][i], np.isfinite(want).all(-1))
        flips.append(flipped)
    assert all(not f for f in flips) if augment is AFFINE else 0 < sum(flips) < len(flips)


@pytest.mark.parametrize("augment", [AFFINE, FLIPS], ids=["affine", "flips"])
def test_item_landmark_is_the_centroid_of_its_moved_vertices(pelvis, augment):
    kinds = pelvis.landmark_set.item_kinds
    checked = 0
    for b, i in examples(batches(pelvis, augment=augment)):
        for k, kind in enumerate(kinds):
            valid = b["vertex_valid"][i, k]
            if kind == "landmark":  # vertex 0 is the point itself
                if b["visible"][i, k]:
                    np.testing.assert_allclose(
                        b["item_vertices"][i, k, 0], b["landmarks"][i, k], atol=1e-4
                    )
                continue
            if b["visible"][i, k]:
                c = item_centroid(kind, b["item_vertices"][i, k][valid])
                np.testing.assert_allclose(c, b["landmarks"][i, k], atol=0.5)
                checked += 1
    assert checked > 20


def test_patch_masks_from_moved_vertices_match_warped_masks(pelvis):
    ls = pelvis.landmark_set
    patches = ls.patch_indices
    kinds = kind_ids([ls.item_kinds[k] for k in patches])
    render = jax.jit(
        lambda v, ok, shape: item_masks(v, ok, kinds, shape=shape, radius=1.0, width=1.0),
        static_argnums=2,
    )
    ious = []
    for b, i in examples(batches(pelvis, augment=FLIPS, n=1)):
        moved = np.asarray(
            render(b["item_vertices"][i][None, patches], b["vertex_valid"][i][None, patches], INPUT)
        )[0]
        rec = pelvis.records[b["index"][i]]
        orig, ok = item_vertices([rec], ls)
        to_orig = b["to_original"][i].astype(np.float64)
        if np.linalg.det(to_orig[:2, :2]) < 0:
            perm = ls.flip_permutation()
            orig, ok = orig[:, perm], ok[:, perm]
        hw = rec.image.shape
        source = np.asarray(render(orig[:, patches], ok[:, patches], hw))[0]
        for j, k in enumerate(patches):
            if not b["visible"][i, k]:
                continue
            warped = warp(source[..., j], np.linalg.inv(to_orig), INPUT, order=0)
            a, w = moved[..., j] > 0, warped > 0
            ious.append((a & w).sum() / (a | w).sum())
    assert len(ious) >= 10
    assert min(ious) > 0.9, ious


def test_vertices_outside_the_image_are_kept(pelvis):
    far = {"p_affine": 1.0, "p_translation": 1.0, "translation": 0.45}
    kinds = np.array(pelvis.landmark_set.item_kinds)
    pushed = 0
    for b, i in examples(batches(pelvis, augment=far, n=3)):
        want, _ = expected(pelvis, b, i)
        np.testing.assert_allclose(b["item_vertices"][i], want, atol=1e-3)
        gone = (kinds != "landmark") & ~b["visible"][i] & b["vertex_valid"][i].any(-1)
        pushed += int(gone.sum())
    assert pushed > 0  # items whose landmark left the image keep their vertices


def test_elastic_moves_vertices_with_landmarks(pelvis):
    elastic = {**AFFINE, "p_elastic": 1.0, "elastic_alpha": 2.0, "elastic_grid": 4}
    lm = pelvis.landmark_set.landmark_indices
    for b, i in examples(batches(pelvis, augment=elastic, n=1)):
        vis = b["visible"][i, lm]
        np.testing.assert_allclose(
            b["item_vertices"][i, lm, 0][vis], b["landmarks"][i, lm][vis], atol=1e-4
        )
        assert np.isfinite(b["item_vertices"][i]).any()


def test_a_field_that_cannot_be_inverted_drops_the_warp(pelvis, monkeypatch):
    plain = batches(pelvis, augment=FLIPS, n=1)[0]
    monkeypatch.setattr(ElasticField, "invert", lambda self, p, **kw: (p + 5.0, False))
    elastic = {**FLIPS, "p_elastic": 1.0, "elastic_alpha": 2.0, "elastic_grid": 4}
    b = batches(pelvis, augment=elastic, n=1)[0]
    # The same affine draws, and the field is dropped for image, landmarks and
    # vertices alike: the example is the affine-only one (no photometric draws).
    for key in ("index", "to_original", "image", "landmarks", "visible", *VERTEX_KEYS):
        np.testing.assert_array_equal(b[key], plain[key], err_msg=key)
    for i in range(len(b["index"])):
        np.testing.assert_allclose(b["item_vertices"][i], expected(pelvis, b, i)[0], atol=1e-3)


def test_landmark_only_sets_carry_no_vertices():
    ds = phantom_dataset(4, seed=0, image_size=(96, 96))
    for train in (True, False):
        b = next(
            make_pipeline(
                ds, input_size=(64, 64), batch_size=3, augment="pelvis", train=train, **PROC
            )
        )
        assert not set(VERTEX_KEYS) & set(b)


def test_padding_has_nan_vertices(pelvis):
    bs = list(make_pipeline(pelvis, input_size=INPUT, batch_size=4, train=False, **PROC))
    assert len(bs) == 2 and (~bs[1]["valid"]).sum() == 2
    for b in bs:
        pad = ~b["valid"]
        assert np.isnan(b["item_vertices"][pad]).all() and not b["vertex_valid"][pad].any()
    for b, i in examples(bs):
        want, flipped = expected(pelvis, b, i)
        assert not flipped
        np.testing.assert_allclose(b["item_vertices"][i], want, atol=1e-3)


def test_device_augment_moves_vertices_with_landmarks(pelvis):
    ls = pelvis.landmark_set
    b = batches(pelvis, augment=None, n=1, defer_normalize=True)[0]
    cfg = AugmentConfig(
        p_flip=0.5, p_rotation=1.0, rotation=15.0, p_scale=1.0, scale=(0.9, 1.1),
        p_translation=1.0, translation=0.1,
    )  # fmt: skip
    aug = DeviceAugment(cfg, flip_permutation=ls.flip_permutation())
    keys = ("image", "landmarks", "visible", "valid", "pixel_norm", *VERTEX_KEYS)
    batch = {k: jnp.asarray(b[k]) for k in keys}
    key = jax.random.key(4)
    out = jax.device_get(jax.jit(aug)(batch, key))
    matrices, flips = (np.asarray(x) for x in aug.geometry(key, len(b["image"]), INPUT))
    assert 0 < flips.sum() < len(flips)
    perm = ls.flip_permutation()
    lm = ls.landmark_indices
    for i in range(len(flips)):
        src, ok = b["item_vertices"][i], b["vertex_valid"][i]
        if flips[i]:
            src, ok = src[perm], ok[perm]
        want = affine.apply(src, matrices[i])
        np.testing.assert_allclose(out["item_vertices"][i], want, atol=1e-3)
        np.testing.assert_array_equal(out["vertex_valid"][i], ok)
        vis = out["visible"][i]
        np.testing.assert_allclose(
            out["item_vertices"][i, lm, 0][vis[lm]], out["landmarks"][i, lm][vis[lm]], atol=1e-4
        )
        for k in np.flatnonzero(vis):
            kind = ls.item_kinds[k]
            if kind != "landmark":
                c = item_centroid(kind, out["item_vertices"][i, k][out["vertex_valid"][i, k]])
                np.testing.assert_allclose(c, out["landmarks"][i, k], atol=0.5)
    # Without vertices in the batch nothing new appears.
    bare = {k: v for k, v in batch.items() if k not in VERTEX_KEYS}
    assert not set(VERTEX_KEYS) & set(jax.jit(aug)(bare, key))
