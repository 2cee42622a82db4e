"""The PyTorch peer in experiments/peer is the same network and loss as lmjax's U-Net.

With the lmjax model's weights copied into the port, forward outputs (every deep
supervision head) agree, the parameter counts match, and one train step of each
reports the same loss and gradient norm. torch is an optional extra (`.[peer]`),
absent in CI, so the file skips without it.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed; the peer port is optional (pip install '.[peer]')"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from lmjax import parallel  # noqa: E402
from lmjax.models.unet import build_unet  # noqa: E402
from lmjax.train import TaskSpec, create_train_state, make_train_step  # noqa: E402

PEER = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "peer" / "torch_unet.py"


def _load_peer():
    spec = importlib.util.spec_from_file_location("peer_torch_unet", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tu = _load_peer()
HW = (32, 24)


def _pair(upsample: str, resize_kernel: int = 1, resize_method: str = "bilinear", seed: int = 0):
    model = build_unet(
        num_outputs=3,
        input_size=HW,
        num_levels=3,
        features=4,
        upsample=upsample,
        resize_kernel=resize_kernel,
        resize_method=resize_method,
        rngs=nnx.Rngs(seed),
    )
    # Non-trivial norm parameters, so a scale/bias mix-up cannot pass unnoticed.
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] in ("scale", "bias"):
            var[...] = jnp.asarray(rng.normal(1.0 if path[-1] == "scale" else 0.0, 0.3, var.shape))
    port = tu.from_lmjax(model)
    tu.copy_from_lmjax(model, port)
    return model, port


@functools.cache
def _shared_pair(upsample: str, resize_kernel: int = 1, resize_method: str = "bilinear"):
    """`_pair` built once per architecture, for the tests that only read it."""
    return _pair(upsample, resize_kernel, resize_method)


def _images(b: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((b, *HW, 1)).astype(np.float32)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize(
    "upsample, resize_kernel, resize_method",
    [("transpose", 1, "bilinear"), ("resize", 1, "bilinear"), ("resize", 3, "nearest")],
)
def test_forward_matches_with_copied_weights(upsample, resize_kernel, resize_method):
    model, port = _shared_pair(upsample, resize_kernel, resize_method)
    x = _images()
    ours = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x))
    with torch.no_grad():
        theirs = port(_nchw(x))
    assert len(ours["deep_supervision"]) == len(theirs["deep_supervision"]) == 1
    for a, b in zip(
        [ours["heatmaps"], *ours["deep_supervision"]],
        [theirs["heatmaps"], *theirs["deep_supervision"]],
        strict=True,
    ):
        a = np.asarray(a).transpose(0, 3, 1, 2)
        assert a.shape == tuple(b.shape)
        assert np.abs(a).max() > 0.1  # the comparison is not between two near-zero maps
        np.testing.assert_allclose(b.numpy(), a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_parameter_counts_match(upsample):
    model, port = _shared_pair(upsample)
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert tu.num_parameters(port) == ours


def test_transposed_kernel_is_mirrored():
    # Without the spatial flip the transposed convolutions would not agree.
    model, port = _shared_pair("transpose")
    kernel = np.asarray(model.up[0].conv.kernel[...])
    np.testing.assert_array_equal(
        port.up[0].conv.weight.detach().numpy(), kernel[::-1, ::-1].transpose(2, 3, 0, 1)
    )


def test_copy_refuses_a_different_architecture():
    model, _ = _shared_pair("resize")
    other = tu.TorchUNet(1, 3, num_levels=3, features=8, upsample="resize")
    with pytest.raises(ValueError, match="shape"):
        tu.copy_from_lmjax(model, other)


def test_gaussian_heatmaps_match_lmjax():
    from lmjax.ops.targets import gaussian_heatmaps

    coords = np.array([[[3.2, 7.9], [np.nan, 1.0], [20.0, 30.5]]], np.float32)
    visible = np.array([[True, True, False]])
    ours = gaussian_heatmaps(coords, shape=HW, sigma=2.0, visible=visible)
    theirs = tu.gaussian_heatmaps(torch.from_numpy(coords), torch.from_numpy(visible), HW, 2.0)
    np.testing.assert_allclose(theirs.numpy(), np.asarray(ours).transpose(0, 3, 1, 2), atol=1e-6)
    assert theirs[0, 1:].abs().max() == 0  # NaN and invisible render empty channels


def test_train_step_loss_and_grad_norm_match():
    model, port = _pair("resize")
    losses = {"heatmap_mse": 1.0, "coord_l1": 0.001}
    task = TaskSpec(
        sigma=2.0,
        losses=losses,
        extractor="soft_argmax",
        extractor_kwargs={"temperature": 0.05},
        deep_supervision=True,
    )
    mesh = parallel.make_mesh(1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
    step = make_train_step(graphdef, task, tx, mesh)
    rng = np.random.default_rng(2)
    host = {
        "image": _images(),
        "landmarks": rng.uniform([2, 2], [HW[1] - 3, HW[0] - 3], (2, 3, 2)).astype(np.float32),
        "visible": np.array([[True, True, False], [True, True, True]]),
        "valid": np.ones(2, bool),
    }
    _, metrics = step(state, parallel.shard_batch(host, mesh))

    objective = tu.HeatmapObjective(sigma=2.0, losses=losses, temperature=0.05)
    opt, sched = tu.make_optimizer(port.parameters(), learning_rate=1e-3)
    batch = {k: torch.from_numpy(v) for k, v in host.items()}
    batch["image"] = _nchw(host["image"])
    theirs = tu.train_step(port, objective, opt, sched, batch, clip_norm=1.0)
    for name in ("loss", "loss_heatmap_mse", "loss_coord_l1"):
        key = name.removeprefix("loss_") if name != "loss" else "loss"
        np.testing.assert_allclose(float(theirs[key]), float(metrics[name]), rtol=1e-4)
    np.testing.assert_allclose(float(theirs["grad_norm"]), float(metrics["grad_norm"]), rtol=1e-3)
