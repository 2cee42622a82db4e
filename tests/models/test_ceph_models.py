"""The cephalogram paper's U-Net and FPN ("ceph_unet", "ceph_fpn"), on tiny inputs.

The shared models use the tiny phantom's landmark count and 8 features, so the
parameter shapes (and the kernels compiled to initialise them) are the same as in the
training tests at the end of the file.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmjax import configs
from lmjax.configs.phantom import get_config as phantom_config
from lmjax.models import build_model, count_params
from lmjax.task import task_spec
from lmjax.train import evaluation, loop, setup
from lmjax.train.logs import TENSORBOARD_DIR
from tests.train.test_logs import read_scalars

NAMES = ("ceph_unet", "ceph_fpn")
K, FEATURES = 16, 8  # the phantom's 16 landmarks
CONFIG = pathlib.Path(__file__).resolve().parents[2] / "experiments/configs/isbi2015_ceph_seg.py"

_apply = nnx.jit(lambda model, images: model(images))


def _kwargs(**kw):
    return dict(num_outputs=K, input_size=32, features=FEATURES, rngs=nnx.Rngs(0)) | kw


@functools.cache
def _params(name: str) -> nnx.State:
    return nnx.state(build_model(name, **_kwargs()))


def _tiny(name: str, **kw) -> nnx.Module:
    """A fresh tiny model with the shared parameters; `kw` changes settings (dtype, ...)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(name, **_kwargs(**kw))))
    return nnx.merge(graphdef, _params(name), copy=True)


def _images(shape=(2, 32, 48, 1), seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def _batch_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


# ------------------------------------------------------------------ hand counts


def _conv(cin: int, cout: int, k: int = 3) -> int:
    return k * k * cin * cout + cout  # kernel and bias


def _bn(c: int) -> int:
    return 2 * c  # scale and bias; the running statistics are not parameters


def _unet_count(f: int, k: int, cin: int = 1, extra_conv: bool = False) -> int:
    ch = [f * 2**i for i in range(5)]
    n = 0
    for i, c in enumerate(ch):  # blocks 1-5: conv, batch norm, conv
        n += _conv(cin if i == 0 else ch[i - 1], c) + _bn(c) + _conv(c, c)
    for c in ch[:4]:  # blocks 6-9: 3x3 transposed conv, then conv, batch norm, conv
        n += _conv(2 * c, c) + _conv(2 * c, c) + _bn(c) + _conv(c, c)
    if extra_conv:  # block 9's optional batch norm and third conv
        n += _bn(f) + _conv(f, f)
    return n + _conv(f, k, 1)


def _fpn_count(f: int, k: int, cin: int = 1) -> int:
    ch = [f * 2**i for i in range(4)]

    def conv_block(a, b):
        return _conv(a, b) + _bn(b) + _conv(b, b) + _bn(b)

    n = sum(conv_block(cin if i == 0 else ch[i - 1], c) for i, c in enumerate(ch))
    for c in ch[:3]:  # FPN blocks: 2x2 up conv, 1x1 skip conv, ConvBlock
        n += _conv(2 * c, c, 2) + _conv(c, c, 1) + conv_block(c, c)
    n += 2 * conv_block(f, f)  # blocks 8 and 9
    return n + _conv(f, k, 1)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("ceph_unet", {}, _unet_count(4, 3)),
        ("ceph_unet", {"extra_conv": True}, _unet_count(4, 3, extra_conv=True)),
        ("ceph_unet", {"in_channels": 3}, _unet_count(4, 3, cin=3)),
        ("ceph_fpn", {}, _fpn_count(4, 3)),
        ("ceph_fpn", {"in_channels": 3}, _fpn_count(4, 3, cin=3)),
    ],
)
def test_parameter_count_matches_hand_count(name, kwargs, expected):
    model = nnx.eval_shape(
        lambda: build_model(name, **_kwargs(num_outputs=3, features=4, **kwargs))
    )
    assert count_params(model) == expected
    n_norms = len(jax.tree.leaves(nnx.state(model, nnx.BatchStat))) // 2  # mean and var
    assert n_norms == (9 + bool(kwargs.get("extra_conv")) if name == "ceph_unet" else 18)


def test_paper_widths_for_isbi():
    """256 x 256 input, 19 landmarks, the paper's default widths."""
    unet = nnx.eval_shape(
        lambda: build_model("ceph_unet", num_outputs=19, input_size=256, rngs=nnx.Rngs(0))
    )
    fpn = nnx.eval_shape(
        lambda: build_model("ceph_fpn", num_outputs=19, input_size=256, rngs=nnx.Rngs(0))
    )
    assert unet.channels == (64, 128, 256, 512, 1024) and fpn.channels == (64, 128, 256, 512)
    assert count_params(unet) == _unet_count(64, 19) == 34_519_251
    assert count_params(fpn) == _fpn_count(64, 19) == 7_163_539


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_logits_at_full_resolution(name, dtype):
    model = _tiny(name, dtype=dtype)
    model.eval()
    images = _images()  # not square: 32 x 48
    out = _apply(model, images)
    assert list(out) == ["heatmaps"]
    assert out["heatmaps"].shape == (2, 32, 48, K)
    assert out["heatmaps"].dtype == jnp.float32  # the 1x1 head computes in float32
    assert bool(jnp.all(jnp.isfinite(out["heatmaps"])))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # parameters stay float32
    if dtype == jnp.bfloat16:
        assert "bf16" in _apply.lower(model, images).as_text()
        reference = _tiny(name)
        reference.eval()
        want = _apply(reference, images)["heatmaps"]
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(out["heatmaps"], want, atol=0.1 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_batch_norm_statistics_update_in_train_mode_only(name):
    model = _tiny(name)
    images = _images()
    start = _batch_stats(model)
    model.train()
    _apply(model, images)
    trained = _batch_stats(model)
    assert all(not np.allclose(a, b) for a, b in zip(start, trained, strict=True))
    model.eval()
    _apply(model, images)
    for a, b in zip(trained, _batch_stats(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dropout_only_in_train_mode():
    images = _images()
    model = _tiny("ceph_unet")
    model.train()
    a, b = (_apply(model, images)["heatmaps"] for _ in range(2))
    assert not np.allclose(a, b)  # fresh dropout masks at every call
    model.eval()
    a, b = (_apply(model, images)["heatmaps"] for _ in range(2))
    np.testing.assert_array_equal(a, b)
    # Without dropout, train mode is deterministic too: the difference above is dropout.
    for model in (_tiny("ceph_unet", dropout_rate=0.0), _tiny("ceph_fpn")):
        model.train()
        a, b = (_apply(model, images)["heatmaps"] for _ in range(2))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_not_divisible_by_8_are_refused(name):
    with pytest.raises(ValueError, match=rf"{name} input_size needs H and W divisible by 8"):
        build_model(name, **_kwargs(input_size=36))
    with pytest.raises(ValueError, match=r"divisible by 8, got 32 x 44"):
        build_model(name, **_kwargs(input_size=(32, 44)))
    model = nnx.eval_shape(lambda: build_model(name, **_kwargs()))
    with pytest.raises(ValueError, match=r"divisible by 8, got 40 x 36"):
        model(jnp.zeros((1, 40, 36, 1)))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="dropout_rate"):
        build_model("ceph_unet", **_kwargs(dropout_rate=1.0))
    with pytest.raises(TypeError, match="'ceph_fpn'.*'dropout_rate'"):
        build_model("ceph_fpn", **_kwargs(dropout_rate=0.3))


# ------------------------------------------------------------------ config


def _isbi_config(arg: str):
    return configs.load(f"{CONFIG}:{arg}", resolved=False)


@pytest.mark.parametrize("arg", ["unet", "fpn", "unet_gpu", "fpn_cpu", "unet_smoke"])
def test_isbi_config_builds(arg):
    config = _isbi_config(arg)
    assert config.model.name == {"unet": "ceph_unet", "fpn": "ceph_fpn"}[arg.split("_")[0]]
    assert tuple(config.data.input_size) == (256, 256)
    task = task_spec(config)
    assert (task.mode, task.target_kind, task.side) == ("segmentation", "square", 20.0)
    assert dict(task.losses) == {"dice": 1.0} and task.extractor == "threshold_opening"
    assert task.compute_dtype == ("bfloat16" if arg.endswith("gpu") else "float32")
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    model = nnx.eval_shape(
        lambda: build_model(
            config.model.name, num_outputs=19, input_size=(256, 256), rngs=nnx.Rngs(0), **kwargs
        )
    )
    assert count_params(model) > 0
    with pytest.raises(ValueError, match="unet or fpn"):
        _isbi_config("vit")


# ------------------------------------------------------------------ training


def _phantom_config(name: str):
    config = phantom_config("tiny")
    with config.unlocked():
        config.data.augment = ""
        # The running statistics must settle within the short run: momentum 0.9.
        config.model = ml_collections.ConfigDict(
            {"name": name, "features": FEATURES, "bn_momentum": 0.9}
        )
        if name == "ceph_unet":
            config.model.dropout_rate = 0.1
        config.task.mode = "segmentation"
        config.task.target = "square"
        config.task.side = 8.0
        config.task.losses = {"dice": 1.0}
        config.task.extractor = "threshold_opening"
        config.task.deep_supervision = False
        config.optim.learning_rate = 1e-2
        config.train.steps = 90
        config.train.eval_every = 90
        config.train.log_every = 30
    return config


@pytest.mark.parametrize("name", NAMES)
def test_trains_on_the_phantom(name, tmp_path):
    config = _phantom_config(name)
    _, val, _ = setup.load_splits(config)
    mesh, state, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    losses = [v for _, v in read_scalars(tmp_path / TENSORBOARD_DIR)["train/loss"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert after["missed"] <= before["missed"], (before["missed"], after["missed"])
    assert after["mre"] <= 0.5 * before["mre"], (before["mre"], after["mre"])
