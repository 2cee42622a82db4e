"""HRNet with landmark and segmentation decoders (fluoroscopy paper), on tiny inputs."""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import configs
from lmjax.models import build_model, count_params
from lmjax.models.hrnet import ResidualBlock, upsample_nearest
from lmjax.task import task_spec
from lmjax.train import evaluation, setup

# Four stages (branches down to 1/32) with one module and one block each.
TINY = dict(width=4, stem_features=8, num_modules=(1, 1, 1), num_blocks=(1, 1, 1, 1))
K, R = 5, 6
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "experiments/configs"
CONFIG = CONFIGS / "phantom_hrnet.py"

_apply = nnx.jit(lambda model, images: model(images))


def _kwargs(**kw):
    return dict(num_outputs=K, input_size=32, num_regions=R, rngs=nnx.Rngs(0), **TINY) | kw


@functools.cache
def _tiny_params() -> nnx.State:
    return nnx.state(build_model("hrnet", **_kwargs()))


def _tiny(**kw) -> nnx.Module:
    """A tiny HRNet with the shared parameters; `kw` changes settings such as dtype."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model("hrnet", **_kwargs(**kw))))
    return nnx.merge(graphdef, _tiny_params())


def _abstract(**kw) -> nnx.Module:
    return nnx.eval_shape(lambda: build_model("hrnet", **_kwargs(**kw)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_both_heads_at_full_resolution(dtype):
    model = _tiny(dtype=dtype)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    out = _apply(model, images)
    assert sorted(out) == ["heatmaps", "segmentation"]
    assert out["heatmaps"].shape == (2, 32, 32, K)
    assert out["segmentation"].shape == (2, 32, 32, R + 1)
    for x in out.values():  # float32 logits from the heads whatever the compute dtype
        assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
    if dtype == jnp.bfloat16:
        assert "bf16" in _apply.lower(model, images).as_text()


def test_without_regions_there_is_no_segmentation_head():
    model = _abstract(num_regions=0, upsample="resize")
    assert model.segmentation_decoder is None
    out = nnx.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 64, 32, 1), jnp.float32)
    )
    assert sorted(out) == ["heatmaps"] and out["heatmaps"].shape == (1, 64, 32, K)


def test_input_must_divide_by_the_coarsest_branch():
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("hrnet", **_kwargs(input_size=48))
    three_stages = _abstract(num_modules=(1, 1), num_blocks=(1, 1, 1), input_size=48)
    assert three_stages.stride == 16 and three_stages.channels == (4, 8, 16)
    with pytest.raises(ValueError, match="divisible by 16"):
        nnx.eval_shape(
            lambda m, x: m(x), three_stages, jax.ShapeDtypeStruct((1, 40, 40, 1), jnp.float32)
        )
    with pytest.raises(ValueError, match="one entry per stage"):
        _abstract(num_blocks=(1, 1))


@pytest.mark.parametrize("width", [32, 48])
def test_branch_widths(width):
    model = nnx.eval_shape(
        lambda: build_model(
            "hrnet",
            num_outputs=K,
            input_size=64,
            rngs=nnx.Rngs(0),
            width=width,
            num_modules=(1, 1, 1),
            num_blocks=(1, 1, 1, 1),
        )
    )
    expected = (width, 2 * width, 4 * width, 8 * width)
    assert model.channels == expected
    assert model.stage1[0].conv3.conv.kernel.shape == (1, 1, 64, 256)
    for s, stage in enumerate(model.stages):
        for b, branch in enumerate(stage[0].branches):
            c = expected[b]
            assert branch[0].conv1.conv.kernel.shape == (3, 3, c, c), (s, b)
        assert len(stage[0].branches) == s + 2
    # The last module fuses every branch into the finest only, which feeds the decoders.
    assert len(model.stages[-1][-1].fuse) == 1
    assert model.landmark_decoder.up[0].conv.kernel.shape[-2:] == (width, width)


@pytest.mark.slow
def test_w32_encoder_has_hrnet_w32_parameter_count():
    """28.5 M, the pose HRNet-W32 without its 1x1 head (Sun et al. 2019, Table 1).

    Built with 1, 1, 2 modules in stages 2-4 (a full abstract build costs about a
    minute on 2 cores); the full count adds the 3 more stage-3 modules and the other
    multi-resolution stage-4 module, each the same shape as one built here.
    """
    model = nnx.eval_shape(
        lambda: build_model(
            "hrnet", num_outputs=K, input_size=64, rngs=nnx.Rngs(0), num_modules=(1, 1, 2)
        )
    )
    encoder = count_params(model) - count_params(model.landmark_decoder)
    encoder += 3 * count_params(model.stages[1][0]) + count_params(model.stages[2][0])
    assert encoder == 28_534_400
    assert abs(encoder / 28.5e6 - 1) < 0.01


def test_residual_block_identity_skip():
    block = ResidualBlock(4, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    # With the second batch norm zeroed the residual branch adds nothing: relu(x).
    block.conv2.norm.scale[...] = jnp.zeros(4)
    block.conv2.norm.bias[...] = jnp.zeros(4)
    np.testing.assert_allclose(block(x), jax.nn.relu(x), atol=1e-6)
    wider = nnx.eval_shape(lambda: ResidualBlock(4, 8, rngs=nnx.Rngs(0)))
    assert wider.skip.conv.kernel.shape == (1, 1, 4, 8)


def test_upsample_nearest_repeats_pixels():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    expected = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    np.testing.assert_array_equal(upsample_nearest(jnp.asarray(x), 4), expected)


def _phantom_hrnet(arg: str, path: pathlib.Path = CONFIG):
    return configs.load(f"{path}:{arg}", resolved=False)


def test_region_losses_train_through_the_loop(tmp_path):
    from lmjax.configs.phantom import get_config
    from lmjax.train import loop

    config, proposed = get_config("tiny"), _phantom_hrnet("proposed_cpu")
    with config.unlocked():
        config.model = proposed.model
        config.model.update(TINY)
        config.task = proposed.task
        config.data.augment = ""
        config.optim.learning_rate = 1e-2
        config.train.steps = 30
        config.train.eval_every = 30
        config.train.log_every = 5
    report = loop.train(config, tmp_path, log=lambda *_: None)
    assert np.isfinite(report["mre"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if "loss" in r]
    assert len(train) == 6 and all(np.isfinite(r["loss"]) for r in train)
    # 30 steps: Dice-CE drops fast, the KL of 16 heatmaps at 64 x 64 steadily.
    for name, factor in (("segmentation/dice_ce", 0.8), ("kl_heatmap", 0.95)):
        values = [r[f"loss_{name}"] for r in train]
        assert values[-1] < factor * values[0], (name, values)
    assert all(f"loss_{name}" in train[0] for name in proposed.task.losses)


def test_landmark_decoder_learns_the_phantom(tmp_path):
    from lmjax.configs.phantom import get_config
    from lmjax.train import loop

    config = get_config("tiny")
    with config.unlocked():
        config.model = _phantom_hrnet("mse_cpu").model
        config.model.update(TINY)
        config.task.losses = {"kl_heatmap": 1.0}
        config.task.extractor = "sigmoid_argmax"
        config.task.deep_supervision = False
        config.data.augment = ""
        config.optim.name = "adamw"
        config.optim.learning_rate = 1e-2
        config.train.steps = 60
        config.train.eval_every = 60
        config.train.log_every = 20
    _, val, _ = setup.load_splits(config)
    mesh, state, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses
    # 60 steps take the validation MRE from about 165 to 81 px (measured).
    assert after["mre"] < 0.7 * before["mre"], (before["mre"], after["mre"])


def test_config_arguments():
    mse, proposed = _phantom_hrnet("mse"), _phantom_hrnet("proposed")
    assert dict(mse.task.losses) == {"heatmap_mse": 1.0} and mse.model.num_regions == 0
    assert dict(proposed.task.losses) == {
        "segmentation/dice_ce": 1.0,
        "kl_heatmap": 0.1,
        "anatomical_consistency": 10.0,
    }
    assert (proposed.optim.name, proposed.optim.learning_rate) == ("adamw", 1e-4)
    assert proposed.train.batch_size == 32 and proposed.model.width == 32
    soft = _phantom_hrnet("proposed_soft_cpu")
    assert "soft_anatomical_consistency" in soft.task.losses and soft.data.input_size == (128, 128)
    with pytest.raises(ValueError, match="mse|proposed"):
        _phantom_hrnet("mse_soft")


@functools.cache
def _isbi_output(model_kwargs: tuple, hw: tuple[int, int]) -> jax.ShapeDtypeStruct:
    """The heatmaps' shape and dtype of the HRNet an ISBI config builds; the configs
    that differ only in their loss share the model, traced once (HRNet-W32 at
    512 x 416 takes seconds)."""
    model = nnx.eval_shape(
        lambda: build_model(
            "hrnet", num_outputs=19, input_size=hw, rngs=nnx.Rngs(0), **dict(model_kwargs)
        )
    )
    x = jax.ShapeDtypeStruct((1, *hw, 1), jnp.float32)
    out = jax.eval_shape(lambda m, x: m(x), model, x)
    return out["heatmaps"] if isinstance(out, dict) else out


@pytest.mark.parametrize("arg", ["kl", "mse", "kl_cpu", "mse_smoke"])
def test_isbi_config_has_only_the_landmark_decoder(arg):

    config = _phantom_hrnet(arg, CONFIGS / "isbi2015_hrnet.py")
    task = task_spec(config)
    want = {"kl_heatmap": 1.0} if arg.startswith("kl") else {"heatmap_mse": 1.0}
    assert dict(task.losses) == want
    assert config.model.num_regions == 0 and config.data.format == "isbi2015"
    assert (config.optim.name, config.train.batch_size) == (
        ("adamw", 32) if arg in ("kl", "mse") else ("adamw", 8 if "cpu" in arg else 2)
    )
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    h, w = config.data.input_size
    heatmaps = _isbi_output(tuple(sorted(kwargs.items())), (h, w))
    assert heatmaps.shape == (1, h, w, 19)
    with pytest.raises(ValueError, match="kl|mse"):
        _phantom_hrnet("proposed", CONFIGS / "isbi2015_hrnet.py")
