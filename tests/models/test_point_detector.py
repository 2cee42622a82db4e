"""The per-class heatmap detector ("heatmap_detector"): shapes, prior, backbones, training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lmjax.models import build_model, list_models
from lmjax.models.point_detector import HEAD_PATHS
from lmjax.ops import point_detection as pd

TINY = dict(features=8, num_levels=3)
PRIOR = math.log(0.01 / 0.99)


def _tiny(input_size: int = 64, num_classes: int = 3) -> nnx.Module:
    return build_model(
        "heatmap_detector",
        num_outputs=num_classes,
        input_size=input_size,
        rngs=nnx.Rngs(0),
        backbone_options=TINY,
    )


def test_outputs_and_heat_prior():
    assert "heatmap_detector" in list_models()
    model = _tiny()
    assert model.scale == 1.0 and model.heat_offset == 0.0
    assert not model.backbone.deep_supervision
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
    out = nnx.jit(lambda m, x: m(x))(model, images)
    assert out["heat"].shape == (2, 64, 64, 3) and out["size"].shape == (2, 64, 64, 2)
    np.testing.assert_array_equal(out["heatmaps"], out["heat"])
    bias = np.asarray(model.backbone.heads[0].bias[...])
    np.testing.assert_allclose(bias, [PRIOR] * 3 + [0.0, 0.0], rtol=1e-6)
    assert abs(float(jnp.median(jax.nn.sigmoid(out["heat"]))) - 0.01) < 0.01


def test_refuses_deep_supervision_and_itself():
    kw = dict(num_outputs=2, input_size=32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="deep_supervision"):
        build_model("heatmap_detector", backbone_options=dict(deep_supervision=True), **kw)
    with pytest.raises(ValueError, match="cannot be a heatmap_detector"):
        build_model("heatmap_detector", backbone="heatmap_detector", **kw)


SMALL = {
    "unet": TINY,
    "ceph_unet": dict(features=4),
    "ceph_fpn": dict(features=4),
    "hrnet": dict(width=4, stem_features=8, num_modules=(1, 1, 1), num_blocks=(1, 1, 1, 1)),
    "vit_pose": dict(size="tiny", patch_size=8),
    "swin_unetr": dict(
        feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4, patch_size=2
    ),
}


@pytest.mark.parametrize("backbone", sorted(HEAD_PATHS))
def test_head_bias_is_found_on_known_backbones(backbone):
    """Abstract builds (no init compiled): the prior goes into the head's bias."""
    model = nnx.eval_shape(
        lambda: build_model(
            "heatmap_detector",
            num_outputs=3,
            input_size=64,
            rngs=nnx.Rngs(0),
            backbone=backbone,
            backbone_options=SMALL[backbone],
        )
    )
    assert model.heat_offset == 0.0
    assert model.scale == (0.5 if backbone == "vit_pose" else 1.0)


def test_unknown_head_falls_back_to_a_logit_offset():
    model = nnx.eval_shape(
        lambda: build_model(
            "heatmap_detector", num_outputs=3, input_size=64, rngs=nnx.Rngs(0), backbone="vgg_unet"
        )
    )
    assert model.heat_offset == pytest.approx(PRIOR)


def _scenes(size: int, n: int = 4, seed: int = 0):
    """`n` images with a bright disc (class 0) and a dark square (class 1, absent from the
    last image) at random places, and their boxes in pixel-centre coordinates."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0, 0.05, (n, size, size, 1)).astype(np.float32)
    boxes = np.full((n, 2, 4), np.nan, np.float32)
    for i in range(n):
        r = rng.uniform(2.5, 4.5)
        cx, cy = rng.uniform(r + 1, size - r - 2, 2)
        images[i, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 1.0
        boxes[i, 0] = [cx - r, cy - r, cx + r, cy + r]
        if i == n - 1:
            continue
        while True:
            h = rng.uniform(2, 4)
            sx, sy = rng.uniform(h + 1, size - h - 2, 2)
            if np.hypot(sx - cx, sy - cy) > r + h + 3:
                break
        images[i, (np.abs(xx - sx) <= h) & (np.abs(yy - sy) <= h)] = -1.0
        boxes[i, 1] = [sx - h, sy - h, sx + h, sy + h]
    return jnp.asarray(images), jnp.asarray(boxes), jnp.asarray(np.isfinite(boxes[..., 0]))


def test_training_lowers_the_loss_and_the_centre_error():
    images, boxes, valid = _scenes(32)
    model = _tiny(32, 2)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def total(m):
            return pd.detector_loss(m(images), boxes, valid, scale=m.scale)[0].mean()

        loss, grads = nnx.value_and_grad(total)(model)
        optimizer.update(model, grads)
        return loss, grads

    @nnx.jit
    def evaluate(model):
        out = model(images)
        loss = pd.detector_loss(out, boxes, valid, scale=model.scale)[0].mean()
        found_boxes, scores, found = pd.decode(out["heat"], out["size"], model.scale, threshold=0)
        centre = (found_boxes[..., :2] + found_boxes[..., 2:]) / 2
        err = jnp.linalg.norm(centre - (boxes[..., :2] + boxes[..., 2:]) / 2, axis=-1)
        return loss, jnp.sum(jnp.where(valid, err, 0)) / jnp.sum(valid), scores

    loss0, err0, _ = evaluate(model)
    for i in range(60):
        _, grads = step(model, optimizer)
        if i == 0:
            assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    loss1, err1, scores = evaluate(model)
    assert float(loss1) < 0.2 * float(loss0), (loss0, loss1)
    assert float(err1) < 0.25 * float(err0) and float(err1) < 1.5, (err0, err1)
    np.testing.assert_array_equal(np.asarray(scores) >= 0.3, valid)
