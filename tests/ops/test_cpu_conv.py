"""The CPU train step's convolutions: gradients equal jax.grad of lax's, the switch."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import parallel
from lmjax.models import build_model
from lmjax.ops import cpu_conv
from lmjax.train import TaskSpec, create_train_state, make_optimizer, make_train_step

DN = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, strides, padding, dilation):
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=DN
    )


# (kernel, strides, padding, dilation): the U-Net's 3x3 same / stride-2 and 1x1
# heads, HRNet's and the ConvTranspose phases' shapes, and uneven cases.
CASES = [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    ((3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    ((2, 2), (1, 1), ((1, 0), (0, 1)), (1, 1)),
    ((5, 3), (2, 1), ((2, 2), (1, 1)), (1, 1)),
    ((7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((3, 3), (1, 2), ((0, 0), (0, 0)), (1, 1)),
]


@pytest.mark.parametrize("kernel,strides,padding,dilation", CASES)
def test_gradients_equal_jax_grad_of_lax_conv(kernel, strides, padding, dilation):
    rng = np.random.default_rng(sum(kernel) + strides[0])
    x = jnp.asarray(rng.standard_normal((2, 11, 9, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, 3, 4)), jnp.float32)

    def loss(conv, x, w):  # a nonlinear loss, so the cotangent varies per pixel
        y = conv(x, w, strides, padding, dilation)
        return jnp.sum(jnp.sin(y)), y

    # One compiled program per convolution gives its output and both gradients.
    def outputs_and_grads(conv):
        fn = jax.value_and_grad(lambda x, w: loss(conv, x, w), (0, 1), has_aux=True)
        (_, y), grads = jax.jit(fn)(x, w)
        return y, grads

    y_want, want = outputs_and_grads(_lax_conv)
    y, got = outputs_and_grads(cpu_conv.gemm_conv)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))
    np.testing.assert_allclose(y, y_want, atol=1e-5)


def test_weight_grad_is_the_im2col_gemm():
    # The weight gradient of one 3x3 tap against a hand-built sum over pixels.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 2)).astype(np.float32)
    g = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    dw = cpu_conv.weight_grad(
        jnp.asarray(x), jnp.asarray(g), (3, 3, 2, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)
    )
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i, j in ((0, 0), (1, 2), (2, 1)):
        want = np.einsum("bhwc,bhwo->co", xp[:, i : i + 5, j : j + 4], g)
        np.testing.assert_allclose(dw[i, j], want, rtol=1e-5, atol=1e-5)


def test_with_cpu_convs_swaps_only_what_the_mode_routes():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 6, 3)), jnp.float32)
    w3 = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    w1 = jnp.asarray(rng.standard_normal((1, 1, 4, 2)), jnp.float32)

    @jax.jit  # an inner jit: its convolutions are found too
    def block(x, w3):
        return jax.nn.relu(_lax_conv(x, w3, (1, 1), ((1, 1), (1, 1)), (1, 1)))

    def loss(params):
        y = block(x, params["w3"])
        return jnp.mean(_lax_conv(y, params["w1"], (1, 1), ((0, 0), (0, 0)), (1, 1)) ** 2), y

    params = {"w3": w3, "w1": w1}
    want = jax.grad(loss, has_aux=True)(params)[0]

    def convs(mode):
        jaxpr = jax.make_jaxpr(cpu_conv.with_cpu_convs(loss, mode))(params)
        text = str(jaxpr)
        return text.count("custom_vjp_call"), text.count("conv_general_dilated")

    assert convs("off") == (0, 2)
    assert convs("auto") == (1, 1)  # the 1x1 only
    # the 3x3 inside the inner jit too (its forward stays a lax conv, inside the custom_vjp)
    assert convs("all") == (2, 1)
    for mode in cpu_conv.MODES:
        got = jax.grad(cpu_conv.with_cpu_convs(loss, mode), has_aux=True)(params)[0]
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    aux = cpu_conv.with_cpu_convs(loss, "all")(params)[1]
    np.testing.assert_allclose(aux, loss(params)[1], atol=1e-6)


def test_mode_applies_on_cpus_only():
    cpus = jax.devices("cpu")
    assert cpu_conv.effective("auto", cpus) == "auto"
    assert cpu_conv.effective("all", parallel.make_mesh()) == "all"
    assert cpu_conv.effective("off", cpus) == "off"
    gpus = [SimpleNamespace(platform="gpu")]
    assert cpu_conv.effective("auto", gpus) == "off"
    assert cpu_conv.effective("auto", [SimpleNamespace(platform="cpu"), *gpus]) == "off"
    assert cpu_conv.effective("auto", []) == "off"
    with pytest.raises(ValueError, match="train.cpu_conv_kernels must be one of auto, all, off"):
        cpu_conv.effective("fast", cpus)


def test_unet_train_step_matches_with_and_without():
    tx, _ = make_optimizer({"name": "sgd", "learning_rate": 1.0, "momentum": 0.0})
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    batch = parallel.shard_batch(
        {
            "image": rng.normal(size=(2, 32, 24, 1)).astype(np.float32),
            "landmarks": rng.uniform(3, 20, (2, 2, 2)).astype(np.float32),
            "visible": np.ones((2, 2), bool),
        },
        mesh,
    )
    out = {}
    for mode in ("off", "auto"):
        model = build_model(
            "unet",
            features=8,
            num_levels=3,
            num_outputs=2,
            in_channels=1,
            input_size=(32, 24),
            upsample="resize",
            rngs=nnx.Rngs(0),
        )
        graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
        step = make_train_step(graphdef, TaskSpec(sigma=1.5), tx, mesh, cpu_conv_kernels=mode)
        hlo = step.lower(state, batch).as_text()
        out[mode] = (jax.device_get(step(state, batch)), hlo)
    (s_off, m_off), hlo_off = out["off"]
    (s_auto, m_auto), hlo_auto = out["auto"]
    # The 1x1 heads and upsampling convs became dots.
    assert hlo_auto.count("stablehlo.convolution") < hlo_off.count("stablehlo.convolution")
    np.testing.assert_allclose(m_auto["loss"], m_off["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_auto["grad_norm"], m_off["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_auto.params), jax.tree.leaves(s_off.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
