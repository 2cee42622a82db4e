"""U-Net, shared layers and the model registry, on tiny inputs (CPU, a few seconds each)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lmjax.models import build_model, count_params, list_models, registry, unet_num_levels
from lmjax.models.layers import ConvNormAct, upsample2x_bilinear, upsample2x_nearest

TINY = dict(num_outputs=3, features=8)

# One jitted forward for all models: eager calls compile every op for every shape,
# which costs more on 2 CPU cores than one compile of the whole network.
_apply = nnx.jit(lambda model, images: model(images))


def _images(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def _tiny_kwargs(**kw):
    return dict(input_size=32, num_deep_supervision=3, rngs=nnx.Rngs(0), **TINY, **kw)


@functools.cache
def _tiny_params() -> nnx.State:
    """Parameters of a 4-level, 8-feature U-Net for 32 x 32 inputs, built once: random
    init compiles a kernel per parameter shape, the slow part of these tests."""
    return nnx.state(build_model("unet", **_tiny_kwargs()))


def _tiny(**kw) -> nnx.Module:
    """A fresh tiny U-Net with the shared parameters; `kw` changes settings such as dtype."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model("unet", **_tiny_kwargs(**kw))))
    return nnx.merge(graphdef, _tiny_params())


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    "size, kwargs, levels",
    [
        (64, {}, 5),  # 64 -> 32 -> 16 -> 8 -> 4
        (256, {}, 7),  # bottleneck 4 x 4
        (512, {}, 8),  # 7 downsamplings, bottleneck 4 x 4
        (1024, {}, 8),  # capped by max_levels
        ((64, 48), {}, 4),  # shorter side decides: 48 -> 24 -> 12 -> 6
        (100, {}, 3),  # 100 -> 50 -> 25, odd: stop
        (64, {"min_feature_size": 8}, 4),
        (512, {"max_levels": 6}, 6),
        (3, {}, 1),
    ],
)
def test_num_levels_rule(size, kwargs, levels):
    assert unet_num_levels(size, **kwargs) == levels


def test_builder_uses_rule_or_explicit_levels():
    auto = nnx.eval_shape(lambda: build_model("unet", input_size=64, rngs=nnx.Rngs(0), **TINY))
    assert auto.num_levels == 5 and len(auto.encoder) == 5 and len(auto.decoder) == 4
    assert auto.channels == (8, 16, 32, 64, 128)
    explicit = nnx.eval_shape(
        lambda: build_model("unet", input_size=64, num_levels=3, rngs=nnx.Rngs(0), **TINY)
    )
    assert explicit.num_levels == 3
    capped = nnx.eval_shape(
        lambda: build_model(
            "unet", input_size=64, max_features=16, rngs=nnx.Rngs(0), num_outputs=3, features=8
        )
    )
    assert capped.channels == (8, 16, 16, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        build_model("unet", input_size=(64, 40), num_levels=5, rngs=nnx.Rngs(0), **TINY)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "upsample_kwargs",
    [
        {"upsample": "transpose"},
        {"upsample": "resize", "resize_method": "bilinear", "resize_kernel": 1},
        {"upsample": "resize", "resize_method": "nearest", "resize_kernel": 3},
    ],
)
def test_output_shapes_non_square(upsample_kwargs):
    model = build_model(
        "unet", input_size=(64, 48), rngs=nnx.Rngs(0), **TINY, **upsample_kwargs
    )  # 4 levels: heads at 64 x 48 and 32 x 24 (the coarsest decoder level has none)
    out = _apply(model, _images((2, 64, 48, 1)))
    assert out["heatmaps"].shape == (2, 64, 48, 3)
    assert out["heatmaps"].dtype == jnp.float32
    assert [o.shape for o in out["deep_supervision"]] == [(2, 64, 48, 3), (2, 32, 24, 3)]
    np.testing.assert_array_equal(out["deep_supervision"][0], out["heatmaps"])
    assert np.all(np.isfinite(out["heatmaps"]))


def test_deep_supervision_all_decoder_levels_and_off():
    model = _tiny()  # 4 levels, heads at all 3 decoder levels
    images = _images((2, 32, 32, 1))
    out = _apply(model, images)
    assert [o.shape[1:3] for o in out["deep_supervision"]] == [(32, 32), (16, 16), (8, 8)]
    # Switching deep supervision off keeps the parameters and the full-resolution map.
    n_params = count_params(model)
    model.deep_supervision = False
    off = _apply(model, images)
    assert set(off) == {"heatmaps"}
    np.testing.assert_allclose(off["heatmaps"], out["heatmaps"], rtol=1e-5, atol=1e-5)
    assert count_params(model) == n_params
    with pytest.raises(ValueError, match="num_deep_supervision"):
        build_model(
            "unet", input_size=32, num_levels=4, num_deep_supervision=4, rngs=nnx.Rngs(0), **TINY
        )


def test_input_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by 8"):
        _apply(_tiny(), _images((1, 32, 30, 1)))


# ----------------------------------------------------------------------------- numerics


def test_bf16_compute_gives_float32_close_to_fp32():
    fp32, bf16 = _tiny(), _tiny(dtype=jnp.bfloat16)  # same parameters
    params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # parameters stay float32
    images = _images((2, 32, 32, 1))
    a, b = _apply(fp32, images), _apply(bf16, images)
    assert b["heatmaps"].dtype == jnp.float32
    assert all(o.dtype == jnp.float32 for o in b["deep_supervision"])
    rel = jnp.linalg.norm(a["heatmaps"] - b["heatmaps"]) / jnp.linalg.norm(a["heatmaps"])
    assert float(rel) < 0.05


def test_instance_norm_is_per_sample_and_channel():
    layer = ConvNormAct(2, 4, rngs=nnx.Rngs(0))
    x = _images((2, 16, 12, 2)) * 3.0 + 1.0
    normed = layer.norm(layer.conv(x))  # before the activation
    np.testing.assert_allclose(normed.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normed.std(axis=(1, 2)), 1.0, atol=1e-3)
    # Changing one sample of the batch leaves the other's output unchanged, in the
    # whole network too (no statistics shared across the batch).
    model = _tiny()
    images = _images((2, 32, 32, 1))
    changed = images.at[1].set(10.0 * _images((32, 32, 1), seed=5))
    a, b = _apply(model, images)["heatmaps"], _apply(model, changed)["heatmaps"]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[1], b[1])


def _conv_ref(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 'same' convolution (stride 1, zero padding 1) in NumPy, NHWC / HWIO."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, 0.01 * x)


def test_batch_norm_option_pools_the_batch_and_keeps_running_statistics():
    layer = ConvNormAct(2, 4, norm="batch", rngs=nnx.Rngs(0))
    x = _images((3, 6, 5, 2)) * 2.0 + 0.5
    conv = _conv_ref(np.asarray(x, np.float64), np.asarray(layer.conv.kernel[...]))
    assert layer.conv.bias is None  # cancelled by the norm
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    layer.train()
    ref = _leaky((conv - mean) / np.sqrt(var + 1e-5))
    np.testing.assert_allclose(layer(x), ref, rtol=1e-4, atol=1e-4)
    # PyTorch's momentum 0.1: running = 0.9 running + 0.1 batch (from 0 and 1).
    np.testing.assert_allclose(layer.norm.mean[...], 0.1 * mean, rtol=1e-4, atol=1e-5)
    layer.eval()  # now the running statistics, whatever the batch
    running = 0.1 * mean, 0.9 + 0.1 * var
    ref = _leaky((conv - running[0]) / np.sqrt(running[1] + 1e-5))
    np.testing.assert_allclose(layer(x), ref, rtol=1e-3, atol=1e-3)


def test_no_norm_option_is_conv_with_bias_and_leaky_relu():
    layer = ConvNormAct(2, 3, norm="none", rngs=nnx.Rngs(0))
    assert layer.norm is None
    layer.conv.bias[...] = jnp.asarray([0.5, -0.25, 1.0])
    x = _images((2, 5, 4, 2))
    ref = _conv_ref(np.asarray(x, np.float64), np.asarray(layer.conv.kernel[...]))
    np.testing.assert_allclose(layer(x), _leaky(ref + [0.5, -0.25, 1.0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="norm must be one of instance, batch, none"):
        ConvNormAct(2, 3, norm="group", rngs=nnx.Rngs(0))


def test_unet_norm_option_parameters_and_forward():
    def build(norm):
        return nnx.eval_shape(lambda: build_model("unet", **_tiny_kwargs(norm=norm)))

    instance, batch, none = build("instance"), build("batch"), build("none")
    # Batch norm has the same affine parameters; its running statistics are no Param.
    assert count_params(batch) == count_params(instance)
    stats = jax.tree.leaves(nnx.state(batch, nnx.BatchStat))
    convs = 2 * 4 + 2 * 3  # two per encoder level (4) and per decoder level (3)
    assert len(stats) == 2 * convs
    # No norm: each conv gains a bias of its width and loses the norm's scale and bias.
    widths = [8, 16, 32, 64]
    norm_params = 2 * sum(2 * c for c in widths) + 2 * sum(2 * c for c in widths[:3])
    assert count_params(none) == count_params(instance) - norm_params // 2
    model = build_model("unet", **_tiny_kwargs(norm="none"))
    out = _apply(model, _images((2, 32, 32, 1)))
    assert out["heatmaps"].shape == (2, 32, 32, 3) and np.all(np.isfinite(out["heatmaps"]))


def test_upsample_helpers_match_jax_image_resize():
    x = _images((2, 5, 7, 3))
    for method, fn in (("bilinear", upsample2x_bilinear), ("nearest", upsample2x_nearest)):
        ref = jax.image.resize(x, (2, 10, 14, 3), method)
        np.testing.assert_allclose(fn(x), ref, atol=1e-6)


# ----------------------------------------------------------------------------- size


def _hand_count(levels, features, max_features, in_channels, outputs, n_heads, up_taps):
    """Parameters of the U-Net from its architecture, independent of the code."""
    ch = [min(features * 2**i, max_features) for i in range(levels)]
    conv3 = lambda cin, cout: 9 * cin * cout  # 3x3, no bias (instance norm follows)
    norm = lambda c: 2 * c  # affine scale and bias
    n, prev = 0, in_channels
    for c in ch:  # encoder: two conv-norm per level
        n += conv3(prev, c) + norm(c) + conv3(c, c) + norm(c)
        prev = c
    for i in range(levels - 1):  # decoder: upsample (no bias), two conv-norm on the concat
        n += up_taps * ch[i + 1] * ch[i] + conv3(2 * ch[i], ch[i]) + norm(ch[i])
        n += conv3(ch[i], ch[i]) + norm(ch[i])
    n += sum(ch[i] * outputs + outputs for i in range(n_heads))  # 1x1 heads with bias
    return n


def test_parameter_count_default_five_levels():
    def build(**kw):
        return nnx.eval_shape(
            lambda: build_model(
                "unet", num_outputs=19, input_size=256, in_channels=1, num_levels=5,
                rngs=nnx.Rngs(0), **kw,
            )
        )  # fmt: skip

    # 5 levels -> 4 decoder levels -> 3 heads; transposed conv has 2 x 2 taps.
    expected = _hand_count(5, 32, 512, 1, 19, n_heads=3, up_taps=4)
    assert expected == 7_766_265
    assert count_params(build()) == expected
    resize = build(upsample="resize", resize_kernel=1)
    assert count_params(resize) == _hand_count(5, 32, 512, 1, 19, n_heads=3, up_taps=1)
    no_ds = build(deep_supervision=False)  # the heads stay: same parameters
    assert count_params(no_ds) == expected


# ----------------------------------------------------------------------------- registry


def test_registry_lists_unet():
    assert "unet" in list_models()


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'nope'.*unet"):
        build_model("nope", num_outputs=3, input_size=32, rngs=nnx.Rngs(0))


def test_unknown_or_missing_argument_names_model_and_argument():
    with pytest.raises(TypeError, match="'unet'.*'featurs'"):
        build_model("unet", num_outputs=3, input_size=32, featurs=8, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="'unet'.*num_outputs"):
        build_model("unet", input_size=32, rngs=nnx.Rngs(0))


def test_register_model_checks_names_and_signature(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))

    @registry.register_model("toy")
    def toy(*, num_outputs, input_size, in_channels=1, rngs, width=4):
        return nnx.Linear(in_channels, num_outputs, rngs=rngs)

    assert "toy" in registry.list_models()
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("toy")(lambda **kw: None)
    with pytest.raises(TypeError, match="rngs"):
        registry.register_model("bad")(lambda *, num_outputs, input_size, in_channels: None)


# ----------------------------------------------------------------------------- training


def test_jit_functional_call_and_adam_reduce_loss():
    model = _tiny()
    images = _images((2, 32, 32, 1))
    eager = model(images)["heatmaps"]  # the one eager call: jit must agree with it
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def forward(params, images):
        return nnx.merge(graphdef, params, rest)(images)

    np.testing.assert_allclose(forward(params, images)["heatmaps"], eager, rtol=1e-4, atol=1e-4)

    targets = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            out = nnx.merge(graphdef, p, rest)(images)
            return jnp.mean((out["heatmaps"] - targets) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(8):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
