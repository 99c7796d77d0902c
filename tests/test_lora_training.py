"""LoRA in the production train state: only adapters train, and the production step with
the layout's attached adapters (with dropout) lowers the loss."""

from __future__ import annotations

import math

import chex
import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from jdjudge.config.schema import Config, LoraConfig, ModelConfig, OptimizerConfig
from jdjudge.models import lora
from jdjudge.sharding import make_mesh
from jdjudge.training.model_state import state_layout
from jdjudge.training.optim import make_optimizer
from jdjudge.training.state import new_train_state
from jdjudge.training.steps import judge_loss, make_train_step
from tests.test_lora import base_params


def _production_layout(lora_cfg: LoraConfig, dims: dict, optimizer_cfg=None):
    config = Config(
        lora=lora_cfg, model=ModelConfig(**dims), optimizer=optimizer_cfg or OptimizerConfig()
    )
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, 10)
    return config, mesh, optimizer, state_layout(config, 97, 16, mesh, optimizer)


def _adam_moments(opt_state) -> tuple:
    adam = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1, opt_state
    return adam[0].mu, adam[0].nu


def test_production_state_trains_only_adapters():
    """The state train.py builds: rank·(in + out) trainable parameters per adapted kernel
    (counted by hand from the model's dims), and Adam moments of exactly those shapes."""
    d, ff, heads, kv, layers, r = 32, 64, 4, 2, 2, 4
    dims = dict(
        hidden_size=d, intermediate_size=ff, num_layers=layers, num_heads=heads, num_kv_heads=kv
    )
    _, _, _, layout = _production_layout(LoraConfig(rank=r, alpha=8.0), dims)
    head = d // heads
    kernels = {  # (group, in, out) of each adapted projection, from the Llama architecture
        "q_proj": ("self_attn", d, heads * head),
        "k_proj": ("self_attn", d, kv * head),
        "v_proj": ("self_attn", d, kv * head),
        "o_proj": ("self_attn", heads * head, d),
        "gate_proj": ("mlp", d, ff),
        "up_proj": ("mlp", d, ff),
        "down_proj": ("mlp", ff, d),
    }
    expected = {}
    for i in range(layers):
        for name, (group, d_in, d_out) in kernels.items():
            expected[(f"layers_{i}", group, name, "lora_a")] = (d_in, r)
            expected[(f"layers_{i}", group, name, "lora_b")] = (r, d_out)
    count = layers * sum(r * (d_in + d_out) for _, d_in, d_out in kernels.values())
    assert count == 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96) == 4096

    params = layout.abstract_state.params
    assert {k: v.shape for k, v in flatten_dict(params).items()} == expected
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == count
    for moment in _adam_moments(layout.abstract_state.opt_state):
        chex.assert_trees_all_equal_shapes_and_dtypes(moment, params)
    # No base-weight-shaped leaf anywhere in the state: params, moments, counters.
    leaves = jax.tree.leaves(layout.abstract_state)
    base_shapes = {x.shape for x in jax.tree.leaves(layout.abstract_base)}
    assert (97, d) in base_shapes and (d, ff) in base_shapes  # the base is there, frozen
    assert all(x.shape == () or x.shape in set(expected.values()) for x in leaves)
    assert not base_shapes & {x.shape for x in leaves}
    assert sum(math.prod(x.shape) for x in leaves if x.shape) == 3 * count  # params, mu, nu

    # Full fine-tuning (rank 0), by contrast, keeps moments for every base parameter.
    _, _, _, full = _production_layout(LoraConfig(), dims)
    for moment in _adam_moments(full.abstract_state.opt_state):
        chex.assert_trees_all_equal_shapes_and_dtypes(moment, full.abstract_base)


def test_production_lora_steps_lower_the_loss_with_dropout():
    """The production step with the layout's params_fn (adapters attached, PEFT dropout) on a
    state of the layout's shapes: dropout acts (two rngs, two losses), only adapters change,
    and the loss goes down."""
    cfg = LoraConfig(rank=4, alpha=8.0, dropout=0.1)
    dims = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    optimizer_cfg = OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
    config, _, optimizer, layout = _production_layout(cfg, dims, optimizer_cfg)
    base = base_params()  # same shapes as the layout's base (TINY has the dims above)
    chex.assert_trees_all_equal_shapes_and_dtypes(base, layout.abstract_base)
    state = new_train_state(lora.init_lora(base, cfg, jax.random.key(1)), optimizer)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, layout.abstract_state)
    labels, synonyms = np.array([[5], [6], [7]], np.int32), np.ones((3, 1), bool)
    loss_fn = judge_loss(config.objective, labels, synonyms)
    step = jax.jit(make_train_step(layout.model, optimizer, loss_fn, layout.params_fn))
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(4, 97, (8, 16)).astype(np.int32),
        "segment_ids": np.ones((8, 16), np.int32),
        "positions": np.broadcast_to(np.arange(16, dtype=np.int32), (8, 16)),
        "answer_index": np.full(8, 15, np.int32),
        "targets": rng.dirichlet(np.ones(3), 8).astype(np.float32),
        "weights": np.ones(8, np.float32),
    }
    b_nonzero = jax.tree.map(lambda x: x + 0.05, state.params)  # B = 0 would hide dropout
    probe = state.replace(params=b_nonzero)
    _, one = step(probe, batch, jax.random.key(100), base)
    _, two = step(probe, batch, jax.random.key(101), base)
    assert float(one["loss"]) != float(two["loss"])  # a fresh dropout mask per rng
    losses = []
    for i in range(5):
        state, metrics = step(state, batch, jax.random.key(i), base)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0], losses
    assert int(state.step) == 5 and int(state.skipped) == 0
