"""ViT heatmap model ("vit_pose"), LoRA adapters, layer-wise decay, frozen training."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import configs, parallel
from lmjax.configs.phantom import get_config as phantom_config
from lmjax.models import build_model, count_params, load_lora, merge_lora, save_lora, weights
from lmjax.models.lora import LoRALinear, LoRAParam, trainable_paths
from lmjax.train import (
    TaskSpec,
    create_train_state,
    evaluation,
    loop,
    make_optimizer,
    make_train_step,
    restore,
    setup,
)
from lmjax.train.optim import OptimConfig, layer_decay_scales

K = 3
LORA = {"qkv": 4, "proj": 8}
CONFIG = pathlib.Path(__file__).parents[2] / "experiments" / "configs" / "isbi2015_vit_lora.py"


def _tiny(*, lora=True, seed=0, **kw):
    opts = dict(size="tiny", num_outputs=K, input_size=32, rngs=nnx.Rngs(seed))
    if lora:
        opts["lora_ranks"] = LORA
    return build_model("vit_pose", **{**opts, **kw})


def _images(n=2, h=32, w=32, c=1, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, c)), jnp.float32)


def _flat(state):
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _randomise(model, filt, seed=1):
    """Gives the variables picked by `filt` random values (as if trained)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, filt)
    new = [
        (p, v.replace(jnp.asarray(rng.normal(0, 0.1, v[...].shape), v[...].dtype)))
        for p, v in nnx.to_flat_state(state)
    ]
    nnx.update(model, nnx.from_flat_state(new))


def _encoder_params(model) -> int:
    encoder = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains("head"))))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(encoder))


# ---------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("kw", "hw", "c"),
    [({}, (32, 48), 1), ({"pos_embed": "sincos"}, (48, 32), 3), ({"remat": True}, (32, 32), 1)],
)
def test_tiny_maps_are_a_quarter_of_the_input(kw, hw, c):
    model = _tiny(lora=False, input_size=hw, in_channels=c, **kw)
    model.eval()
    out = model(_images(2, *hw, c))
    assert set(out) == {"heatmaps"}
    assert out["heatmaps"].shape == (2, hw[0] // 4, hw[1] // 4, K)
    assert out["heatmaps"].dtype == jnp.float32
    assert model.blocks[0].attn.qkv.kernel[...].shape == (32, 96)


def test_learned_position_table_is_resized_to_the_grid():
    model = _tiny(lora=False, input_size=32)  # a 2 x 2 table
    model.eval()
    assert model.pos_embed[...].shape == (1, 2, 2, 32)
    assert model(_images(1, 64, 48))["heatmaps"].shape == (1, 16, 12, K)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(_images(1, 40, 32))


def test_bf16_compute_keeps_float32_params_and_maps():
    model = _tiny(dtype=jnp.bfloat16)
    model.eval()
    assert model(_images())["heatmaps"].dtype == jnp.float32
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {x.dtype for x in params} == {jnp.dtype(jnp.float32)}


def test_b_and_l_parameter_counts_from_abstract_shapes():
    def count(size, hw):
        model = nnx.eval_shape(
            lambda: build_model(
                "vit_pose",
                size=size,
                num_outputs=19,
                input_size=hw,
                in_channels=3,
                rngs=nnx.Rngs(0),
            )
        )
        return _encoder_params(model), count_params(model)

    b_enc, _ = count("B", 224)
    l_enc, l_all = count("L", (1024, 768))
    # ViT-B/16 at 224 (no class token, no classifier): about 86 M; the 0.3 B Sapiens shape.
    assert 85.5e6 < b_enc < 86.5e6, b_enc
    assert 0.30e9 < l_enc < 0.31e9, l_enc
    assert 22e6 < l_all - l_enc < 24e6  # the heatmap head: two 768-channel deconvs and 1x1s


def test_unknown_size_and_lora_target_are_errors():
    with pytest.raises(ValueError, match="unknown ViT size 'XL'"):
        _tiny(size="XL")
    with pytest.raises(ValueError, match="no nnx.Linear named \\['qkvv'\\]"):
        _tiny(lora_ranks={"qkvv": 4})


def test_auto_attention_takes_the_fused_kernel_only_where_it_applies():
    from lmjax.models.vit import auto_attention

    assert auto_attention(jnp.bfloat16, 64, "gpu") == "cudnn"  # ViT-B/L in bf16
    assert auto_attention(jnp.float16, 128, "cuda") == "cudnn"
    assert auto_attention(jnp.float32, 64, "gpu") == "xla"  # cuDNN's kernel is half only
    assert auto_attention(jnp.bfloat16, 100, "gpu") == "xla"  # not a multiple of 8
    assert auto_attention(jnp.bfloat16, 256, "gpu") == "xla"
    assert auto_attention(jnp.bfloat16, 64, "cpu") == "xla"
    x = _images()
    auto = _tiny(lora=False)(x)["heatmaps"]
    xla = _tiny(lora=False, attention="xla")(x)["heatmaps"]
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))


# ---------------------------------------------------------------- LoRA


def test_lora_at_init_equals_the_base_model():
    base, adapted = _tiny(lora=False), _tiny()
    assert isinstance(adapted.blocks[1].attn.qkv, LoRALinear)
    assert isinstance(adapted.blocks[1].attn.proj, LoRALinear)
    assert adapted.blocks[0].attn.proj.lora_b[...].shape == (8, 32)
    assert adapted.blocks[0].attn.qkv.lora_a[...].shape == (32, 4)
    # Same base weights: LoRA is added after the base model draws its parameters.
    for p, x in _flat(nnx.state(base, nnx.Param)).items():
        q = (*p[:-1], "base", p[-1]) if p[-2:-1] in (("qkv",), ("proj",)) else p
        np.testing.assert_array_equal(x, _flat(nnx.state(adapted, nnx.Param))[q])
    x = _images()
    base.eval()
    adapted.eval()
    np.testing.assert_array_equal(adapted(x)["heatmaps"], base(x)["heatmaps"])
    # In train mode the LoRA dropout is live, but B = 0 keeps the outputs equal.
    base.train()
    adapted.train()
    np.testing.assert_array_equal(adapted(x)["heatmaps"], base(x)["heatmaps"])


def test_merged_model_equals_the_adapted_one():
    model = _tiny()
    _randomise(model, LoRAParam)
    model.eval()
    merged = merge_lora(model)
    assert not jax.tree.leaves(nnx.state(merged, LoRAParam))
    assert count_params(merged) == count_params(_tiny(lora=False))
    assert isinstance(model.blocks[0].attn.qkv, LoRALinear)  # the original is untouched
    x = _images()
    a, b = model(x)["heatmaps"], merged(x)["heatmaps"]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    base = _tiny(lora=False)
    base.eval()
    assert float(jnp.max(jnp.abs(base(x)["heatmaps"] - a))) > 1e-3  # the adapters matter


def test_lora_only_file_round_trip(tmp_path):
    trained = _tiny()
    _randomise(trained, nnx.Any(LoRAParam, nnx.PathContains("head")))
    path = tmp_path / "adapters.npz"
    keys = save_lora(trained, path)
    assert any(k.endswith("lora_a") for k in keys) and any(k.startswith("head/") for k in keys)
    assert not any(k.endswith("qkv/base/kernel") or k.startswith("blocks/0/fc1") for k in keys)
    assert any("mean" in k for k in keys)  # the head's batch statistics travel too
    fresh = _tiny()  # the same base (seed), adapters at their init
    load_lora(fresh, path)
    x = _images()
    trained.eval()
    fresh.eval()
    np.testing.assert_array_equal(fresh(x)["heatmaps"], trained(x)["heatmaps"])
    stored = sum(a.size for a in np.load(path).values())
    assert stored < 0.5 * count_params(trained)
    with pytest.raises(ValueError, match="does not match the model"):
        load_lora(_tiny(lora_ranks={"qkv": 4}), path)


# ---------------------------------------------------------------- optimizer


def test_layer_decay_scales_hand_values():
    model = _tiny()
    assert model.num_layers == 3
    scale = layer_decay_scales(model.layer_index, model.num_layers, 0.85)
    hand = {
        ("patch_embed", "kernel"): 0.85**4,
        ("pos_embed",): 0.85**4,
        ("blocks", 0, "attn", "qkv", "lora_a"): 0.85**3,
        ("blocks", 1, "fc1", "kernel"): 0.85**2,
        ("blocks", 2, "norm2", "scale"): 0.85**1,
        ("norm", "bias"): 1.0,
        ("head", "final", "kernel"): 1.0,
    }
    for path, value in hand.items():
        assert scale(path) == pytest.approx(value, rel=1e-12), path
    # Through the optimizer: plain SGD with lr 1 on unit gradients returns -scale.
    tx, _ = make_optimizer(
        {"name": "sgd", "momentum": 0.0, "learning_rate": 1.0, "layer_decay": 0.85},
        lr_scale=scale,
    )
    params = nnx.state(model, nnx.Param)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    for path, u in _flat(updates).items():
        np.testing.assert_allclose(u, -scale(path), rtol=1e-6)
    with pytest.raises(ValueError, match="layer numbering"):
        make_optimizer({"layer_decay": 0.85})


def test_only_lora_and_head_train():
    model = _tiny()
    paths = trainable_paths(model, "lora_and_head")
    scale = layer_decay_scales(model.layer_index, model.num_layers, 0.85)
    tx, _ = make_optimizer(
        {"name": "adamw", "learning_rate": 5e-3, "weight_decay": 0.1, "clip_norm": 1.0},
        lr_scale=scale,
        trainable=paths.__contains__,
    )
    mesh = parallel.make_mesh()
    graphdef, state = create_train_state(model, tx, 0, mesh=mesh)
    before = _flat(jax.device_get(state.params))
    # Adam moments exist for the trainable parameters only.
    moments = sum(math.prod(x.shape) for x in jax.tree.leaves(state.opt_state))
    n_train = sum(before[p].size for p in paths)
    assert n_train < moments < 3 * n_train + 10
    step = make_train_step(graphdef, TaskSpec(sigma=1.0), tx, mesh)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {
            "image": rng.normal(size=(4, 32, 32, 1)).astype(np.float32),
            "landmarks": rng.uniform(2, 29, (4, K, 2)).astype(np.float32),
            "visible": np.ones((4, K), bool),
        }
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
    assert float(metrics["skipped"]) == 0
    after = _flat(jax.device_get(state.params))
    assert set(after) == set(before)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    frozen = set(before) - set(paths)
    assert not changed & frozen  # frozen parameters bitwise unchanged
    assert any(p[-1] == "lora_b" for p in changed)
    assert any(p[0] == "head" for p in changed)
    assert any(p[-1] == "lora_a" for p in changed)


def test_trainable_lora_needs_adapters():
    with pytest.raises(ValueError, match="no LoRA adapters"):
        trainable_paths(_tiny(lora=False), "lora_and_head")
    with pytest.raises(ValueError, match="unknown trainable setting 'head'"):
        trainable_paths(_tiny(), "head")
    assert trainable_paths(_tiny(), "all") is None


# ---------------------------------------------------------------- config and loop


def _experiment(arg):
    return configs.load(f"{CONFIG}:{arg}", resolved=False)


@pytest.mark.parametrize("arg", ["b", "l", "tiny_cpu"])
def test_experiment_config_builds(arg):
    c = _experiment(arg)
    optim = OptimConfig.from_any({**c.optim.to_dict(), "total_steps": c.train.steps})
    assert (optim.name, optim.learning_rate, optim.layer_decay) == ("adamw", 5e-4, 0.85)
    skip = ("name", "trainable", *weights.CONFIG_KEYS)
    kwargs = {k: v for k, v in c.model.to_dict().items() if k not in skip}
    model = nnx.eval_shape(
        lambda: build_model(
            c.model.name,
            num_outputs=19,
            input_size=tuple(c.data.input_size),
            in_channels=1,
            rngs=nnx.Rngs(0),
            **kwargs,
        )
    )
    assert model.num_layers == {"b": 12, "l": 24, "tiny_cpu": 3}[arg]
    assert trainable_paths(model, c.model.trainable)
    if arg == "l":
        assert tuple(c.data.input_size) == (1024, 768) and c.model.remat
        assert c.task.sigma == 12.0 and c.data.augment == "medsapiens"
    with pytest.raises(ValueError, match="argument must be one of"):
        _experiment("xl")


def test_phantom_training_with_lora_and_layer_decay(tmp_path):
    config = phantom_config("tiny")
    with config.unlocked():
        config.data.input_size = (64, 64)
        config.data.augment = ""
        config.model = type(config.model)(
            {
                "name": "vit_pose",
                "size": "tiny",
                "lora_ranks": LORA,
                "lora_dropout": 0.1,
                "trainable": "lora_and_head",
            }
        )
        config.task.deep_supervision = False
        config.optim.name = "adamw"
        config.optim.learning_rate = 5e-3
        config.optim.layer_decay = 0.85
        config.train.steps = 30
        config.train.eval_every = 30
        config.train.log_every = 5
    _, val, _ = setup.load_splits(config)
    mesh, state0, _, eval_step, _ = setup.build(config, val.landmark_set.num_landmarks)
    start = _flat(jax.device_get(state0.params))
    before, _, _ = evaluation.evaluate_state(config, eval_step, mesh, state0, val)
    after = loop.train(config, tmp_path, log=lambda *_: None)
    # 30 steps take the validation MRE from about 118 to 82 px (measured).
    assert after["mre"] < 0.85 * before["mre"], (before["mre"], after["mre"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses
    _, _, state, _ = restore.restore_trained(tmp_path, which="latest")
    end = _flat(jax.device_get(state.params))
    paths = {p for p in start if p[-1] in ("lora_a", "lora_b") or p[0] == "head"}
    for p in start:
        if p not in paths:
            np.testing.assert_array_equal(end[p], start[p], err_msg=str(p))
    assert any(not np.array_equal(end[p], start[p]) for p in paths)


def test_remat_keeps_outputs_and_gradients():
    # Same parameters, blocks recomputed in the backward pass or kept: same numbers.
    plain = _tiny(lora=False, remat=False)
    remat = _tiny(lora=False, remat=True)
    graphdef_plain, params, rest = nnx.split(plain, nnx.Param, ...)
    graphdef_remat, _, _ = nnx.split(remat, nnx.Param, ...)
    images = _images()

    def loss_and_maps(graphdef):
        @jax.jit
        def f(p):
            model = nnx.merge(graphdef, p, rest, copy=True)
            maps = model(images)["heatmaps"]
            return jnp.mean(maps**2), maps

        return jax.value_and_grad(f, has_aux=True)(params)

    (loss_a, maps_a), grads_a = loss_and_maps(graphdef_plain)
    (loss_b, maps_b), grads_b = loss_and_maps(graphdef_remat)
    np.testing.assert_allclose(maps_b, maps_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    flat_a, flat_b = _flat(grads_a), _flat(grads_b)
    assert flat_a.keys() == flat_b.keys()
    for path, g in flat_a.items():
        np.testing.assert_allclose(flat_b[path], g, rtol=1e-4, atol=1e-7, err_msg=str(path))
    assert any(np.abs(g).max() > 0 for g in flat_a.values())

    # The recomputation is really in the program: a remat per block.
    def total(graphdef):
        return lambda p: nnx.merge(graphdef, p, rest, copy=True)(images)["heatmaps"].sum()

    assert str(jax.make_jaxpr(jax.grad(total(graphdef_remat)))(params)).count("remat2[") == 3
    assert "remat2[" not in str(jax.make_jaxpr(jax.grad(total(graphdef_plain)))(params))
