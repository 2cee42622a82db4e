"""Transposed convolution as phase convolutions: same values, gradients and parameters as Flax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models.conv_transpose import ConvTranspose, conv_transpose_phases, transpose_padding

CASES = [
    # kernel, strides, padding, transpose_kernel
    ((2, 2), (2, 2), "VALID", False),  # U-Net / FPN / Swin-UNETR upsampling
    ((4, 4), (2, 2), ((2, 2), (2, 2)), False),  # ViT heatmap head
    ((4, 4), (2, 2), ((2, 2), (2, 2)), True),  # VGG U-Net (PyTorch k4 s2 p1)
    ((3, 3), (2, 2), "SAME", False),  # cephalogram U-Net
    ((3, 3), (1, 1), "SAME", False),
    ((3, 3), (2, 2), "VALID", False),
    ((1, 1), (2, 2), "VALID", False),  # kernel smaller than the stride: empty phases
    ((5, 3), (3, 2), "SAME", True),
    ((4, 2), (2, 3), ((1, 3), (0, 2)), False),
]


def _pair(kernel, strides, padding, transpose_kernel, *, use_bias=True):
    kw = dict(
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        transpose_kernel=transpose_kernel,
        use_bias=use_bias,
    )
    ref = nnx.ConvTranspose(3, 4, **kw, rngs=nnx.Rngs(0))
    ours = ConvTranspose(3, 4, **kw, impl="phases", rngs=nnx.Rngs(0))
    ours.bias = nnx.Param(jnp.linspace(-1, 1, 4)) if use_bias else None
    ref.bias = nnx.Param(jnp.linspace(-1, 1, 4)) if use_bias else None
    return ref, ours


@pytest.mark.parametrize("kernel, strides, padding, transpose_kernel", CASES)
def test_values_and_gradients_match_flax(kernel, strides, padding, transpose_kernel):
    ref, ours = _pair(kernel, strides, padding, transpose_kernel)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 7, 3)), jnp.float32)
    want, got = ref(x), ours(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

    def loss(module, x):
        y = module(x)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))

    g_ref = nnx.grad(loss, argnums=(0, 1))(ref, x)
    g_ours = nnx.grad(loss, argnums=(0, 1))(ours, x)
    np.testing.assert_allclose(np.asarray(g_ours[1]), np.asarray(g_ref[1]), atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(g_ours[0].kernel[...]), np.asarray(g_ref[0].kernel[...]), atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(g_ours[0].bias[...]), np.asarray(g_ref[0].bias[...]), atol=1e-4
    )


def test_parameters_are_flax_convtranspose_parameters():
    ref, ours = _pair((4, 4), (2, 2), ((2, 2), (2, 2)), True)
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
    assert shapes(ours) == shapes(ref)


def test_no_dilated_convolution_in_forward_or_backward():
    m = ConvTranspose(
        8, 4, (4, 4), (2, 2), padding=((2, 2), (2, 2)), impl="phases", rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(m)
    x = jnp.ones((1, 6, 5, 8))
    loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    assert "convolution" in hlo and "lhs_dilate" not in hlo and "rhs_dilate" not in hlo
    reference = nnx.ConvTranspose(8, 4, (4, 4), (2, 2), padding=((2, 2), (2, 2)), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(reference)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    assert "lhs_dilate" in hlo  # what the phases avoid


def test_auto_uses_phases_on_cpu_only_and_lax_on_request():
    m = ConvTranspose(2, 2, (2, 2), (2, 2), rngs=nnx.Rngs(0))
    x = jnp.ones((1, 3, 3, 2))
    assert m._use_phases(x) == (jax.default_backend() == "cpu")
    assert not ConvTranspose(2, 2, (2, 2), (2, 2), impl="lax", rngs=nnx.Rngs(0))._use_phases(x)
    with pytest.raises(ValueError, match="impl must be one of"):
        ConvTranspose(2, 2, (2, 2), impl="fast", rngs=nnx.Rngs(0))


def test_padding_conventions():
    assert transpose_padding(4, 2, "SAME") == (2, 2)
    assert transpose_padding(2, 2, "VALID") == (1, 1)
    assert transpose_padding(3, 2, "SAME") == (2, 1)
    with pytest.raises(ValueError, match="SAME, VALID or explicit"):
        transpose_padding(3, 2, "FULL")
    with pytest.raises(ValueError, match="2D only"):
        conv_transpose_phases(jnp.ones((1, 4, 3)), jnp.ones((2, 3, 3)), (2,), "SAME")
