"""SAM preprocessing (shapes, intensities, the affine back) and the bf16 embedding cache."""

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from lmjax.data import affine
from lmjax.data.embedding_cache import EmbeddingCache
from lmjax.data.sam_preprocess import PIXEL_MEAN, PIXEL_STD, input_hw, sam_preprocess
from lmjax.data.types import Record


def ramp(h, w):
    return np.add.outer(np.arange(h) * 3.0, np.arange(w, dtype=np.float32)).astype(np.float32)


def test_longest_side_is_resized_and_the_rest_padded():
    img, to_orig = sam_preprocess(ramp(40, 60) + 100.0, mode="medsam", size=80)
    assert img.shape == (80, 80, 3) and img.dtype == np.float32
    assert input_hw((40, 60), 80) == (53, 80)  # SAM's int(40 * 80 / 60 + 0.5)
    assert np.all(img[53:] == 0.0)
    assert img[:53].min() == 0.0 and img[:53].max() == pytest.approx(1.0)
    assert to_orig.shape == (3, 3)
    tall, _ = sam_preprocess(ramp(60, 20), size=80)
    assert tall.shape == (80, 80, 3) and np.all(tall[:, 27:] == 0.0)


def test_sam_mode_normalises_with_imagenet_statistics():
    img, _ = sam_preprocess(ramp(40, 40) * 7.0 + 5.0, mode="sam", size=80)
    mean, std = np.asarray(PIXEL_MEAN), np.asarray(PIXEL_STD)
    np.testing.assert_allclose(img.min(axis=(0, 1)), -mean / std, rtol=1e-5)
    np.testing.assert_allclose(img.max(axis=(0, 1)), (255.0 - mean) / std, rtol=1e-5)
    padded, _ = sam_preprocess(ramp(40, 60), mode="sam", size=80)
    assert np.all(padded[53:] == 0.0)  # padding after normalisation: the mean colour


def test_medsam_mode_is_min_max_only_and_survives_a_constant_image():
    img, _ = sam_preprocess(ramp(30, 30) * 1000.0 - 50.0, mode="medsam", size=80)
    assert img.min() == 0.0 and img.max() == pytest.approx(1.0)
    flat, _ = sam_preprocess(np.full((30, 30), 7.0), mode="medsam", size=80)
    assert np.all(np.isfinite(flat)) and np.all(flat == 0.0)


def test_grey_is_replicated_to_three_channels():
    x = ramp(30, 50)
    a, _ = sam_preprocess(x, mode="medsam", size=80)
    b, _ = sam_preprocess(x[..., None], mode="medsam", size=80)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
    one, _ = sam_preprocess(x, size=80, in_channels=1)
    assert one.shape == (80, 80, 1)
    rgb, _ = sam_preprocess(np.stack([x, 2 * x, 3 * x], -1), mode="medsam", size=80)
    assert not np.allclose(rgb[..., 0], rgb[..., 2])
    with pytest.raises(ValueError, match="mode"):
        sam_preprocess(x, mode="imagenet")


def test_the_affine_maps_points_both_ways():
    src_hw = (37, 91)
    _, to_orig = sam_preprocess(ramp(*src_hw), size=80)
    to_model = np.linalg.inv(to_orig)
    pts = np.array([[0.0, 0.0], [90.0, 36.0], [12.25, 30.5], [-0.5, -0.5]])
    back = affine.apply(affine.apply(pts, to_model), to_orig)
    np.testing.assert_allclose(back, pts, atol=1e-4)
    hw = input_hw(src_hw, 80)
    # Pixel edges align: the original's outer corners land on the un-padded region's.
    corners = affine.apply(np.array([[-0.5, -0.5], [90.5, 36.5]]), to_model)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [hw[1] - 0.5, hw[0] - 0.5]], atol=1e-4)


def test_the_affine_agrees_with_the_resampled_pixels():
    # Upscaled x-ramp: a model pixel's value is the original x it maps back to.
    x = np.tile(np.arange(20, dtype=np.float32), (10, 1))
    img, to_orig = sam_preprocess(x, mode="medsam", size=80)  # 4x, (40, 80) un-padded
    xs = np.arange(4, 76, dtype=np.float64)
    pts = np.stack([xs, np.full_like(xs, 20.0)], -1)
    np.testing.assert_allclose(img[20, 4:76, 0] * 19.0, affine.apply(pts, to_orig)[:, 0], atol=1e-3)


# --- the embedding cache ---


@pytest.fixture(scope="module")
def tiny_sam():
    from tests.models.test_sam import tiny_sam

    # Weights drawn in NumPy: an eager random init compiles each initializer per shape.
    return tiny_sam()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, hw in enumerate([(40, 60), (70, 50), (33, 33)]):
        p = tmp_path / "src" / f"img{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, hw, dtype=np.uint8)).save(p)
        paths.append(str(p))
    arr = rng.uniform(0, 4095, (45, 80)).astype(np.float32)
    return [
        *paths,
        Record(image=arr, landmarks=np.zeros((0, 2), np.float32), visible=np.zeros(0, bool)),
    ]


PREP = {"mode": "medsam", "input_size": 80}


def bits(a):
    return np.asarray(a).view(np.uint16)


def test_second_pass_hits_and_returns_the_same_arrays(tiny_sam, images, tmp_path):
    cache = EmbeddingCache(tmp_path / "emb", weights_id="w0", preprocessing=PREP)
    lines = []
    first = cache.embed_dataset(tiny_sam, images, batch_size=3, log=lines.append)
    assert (cache.hits, cache.misses) == (0, 4)
    assert first[0].dtype == ml_dtypes.bfloat16 and first[0].shape == (10, 10, 32)
    again = EmbeddingCache(tmp_path / "emb", weights_id="w0", preprocessing=dict(PREP))
    second = again.embed_dataset(tiny_sam, images, batch_size=3, log=lines.append)
    assert (again.hits, again.misses) == (4, 0)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))
    assert "0 cached, 4 computed" in lines[0] and "4 cached, 0 computed" in lines[1]
    # Atomic writes leave exactly one .npy and one .json per entry, no temporary files.
    names = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert len(names) == 8 and all(n.endswith((".npy", ".json")) for n in names)
    meta = json.loads((tmp_path / "emb" / f"{cache.key(images[0])}.json").read_text())
    np.testing.assert_allclose(meta["to_original"], sam_preprocess(np.zeros((40, 60)), size=80)[1])


def test_cached_embeddings_equal_the_model_within_bf16(tiny_sam, images, tmp_path):
    from lmjax.data.image_io import read_radiograph

    cache = EmbeddingCache(tmp_path, weights_id="w0", preprocessing=PREP)
    got = cache.embed_dataset(tiny_sam, images, batch_size=3, log=None)
    pixels = [read_radiograph(p).pixels for p in images[:3]] + [images[3].image]
    batch = np.stack([sam_preprocess(x, mode="medsam", size=80)[0] for x in pixels])
    from flax import nnx

    direct = np.asarray(nnx.jit(lambda m, x: m.embed(x))(tiny_sam, batch), np.float32)
    for g, d in zip(got, direct, strict=True):
        np.testing.assert_allclose(g.astype(np.float32), d, rtol=2**-7, atol=1e-4)


def test_keys_follow_content_preprocessing_and_weights(images, tmp_path):
    cache = EmbeddingCache(tmp_path, weights_id="w0", preprocessing=PREP)
    k = cache.key(images[0])
    moved = tmp_path / "elsewhere.png"
    shutil.copy(images[0], moved)
    assert cache.key(str(moved)) == k  # content, not path
    assert cache.key(images[1]) != k
    assert cache.key(images[0], view=1) != k
    other_w = EmbeddingCache(tmp_path, weights_id="w1", preprocessing=PREP)
    other_p = EmbeddingCache(tmp_path, weights_id="w0", preprocessing={**PREP, "mode": "sam"})
    assert len({k, other_w.key(images[0]), other_p.key(images[0])}) == 3
    reordered = EmbeddingCache(
        tmp_path, weights_id="w0", preprocessing=dict(reversed(PREP.items()))
    )
    assert reordered.key(images[0]) == k


def test_other_weights_or_preprocessing_miss(tiny_sam, images, tmp_path):
    EmbeddingCache(tmp_path, weights_id="w0", preprocessing=PREP).embed_dataset(
        tiny_sam, images[:2], batch_size=3, log=None
    )
    for cache in (
        EmbeddingCache(tmp_path, weights_id="w1", preprocessing=PREP),
        EmbeddingCache(tmp_path, weights_id="w0", preprocessing={**PREP, "mode": "sam"}),
    ):
        cache.embed_dataset(tiny_sam, images[:2], batch_size=3, log=None)
        assert (cache.hits, cache.misses) == (0, 2)


def test_a_truncated_entry_is_recomputed_with_a_warning(tiny_sam, images, tmp_path):
    cache = EmbeddingCache(tmp_path, weights_id="w0", preprocessing=PREP)
    (first,) = cache.embed_dataset(tiny_sam, images[:1], batch_size=3, log=None)
    npy = tmp_path / f"{cache.key(images[0])}.npy"
    npy.write_bytes(npy.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        (again,) = cache.embed_dataset(tiny_sam, images[:1], batch_size=3, log=None)
    assert cache.misses == 2
    np.testing.assert_array_equal(bits(first), bits(again))
    assert cache.get(cache.key(images[0])) is not None


def test_put_and_get_round_trip_bf16(tmp_path):
    cache = EmbeddingCache(tmp_path, weights_id="w", preprocessing=PREP)
    x = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    cache.put("k", x)
    got = cache.get("k")
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bits(got), bits(x.astype(ml_dtypes.bfloat16)))
    assert cache.get("missing") is None


def test_preprocessing_for_another_input_size_is_refused(tiny_sam, images, tmp_path):
    cache = EmbeddingCache(
        tmp_path, weights_id="w", preprocessing={"mode": "sam", "input_size": 1024}
    )
    with pytest.raises(ValueError, match="1024"):
        cache.embed_dataset(tiny_sam, images[:1], batch_size=1, log=None)
