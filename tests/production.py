"""The production train state and jitted steps on a tiny model, for tests on any mesh.

Built through the same builders ``jdjudge.train`` uses (``build_model_state`` and
``build_steps``, with their shardings and donation), so a test of these is a test of the
program that trains.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from jdjudge.config.schema import Config, LoraConfig, ModelConfig, OptimizerConfig
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.training.jitted import Steps, build_steps
from jdjudge.training.model_state import ModelState, build_model_state
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

VOCAB, SEQ_LEN = 64, 8
TINY_MODEL = ModelConfig(
    hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
)
LABEL_IDS = np.array([[5], [6], [7]], np.int32)
SYNONYMS = np.ones((3, 1), bool)


def tiny_config(lora_rank: int = 0, **overrides: Any) -> Config:
    """No warmup and a large learning rate, so every step moves the parameters visibly."""
    lora = LoraConfig(rank=lora_rank, alpha=8.0, dropout=0.0)
    optimizer = OptimizerConfig(learning_rate=3e-3, warmup_steps=0)
    return Config(model=TINY_MODEL, lora=lora, optimizer=optimizer, **overrides)


def production(
    mesh_shape: dict[str, int], config: Config | None = None, total_steps: int = 10
) -> tuple[Any, ModelState, Steps]:
    """(mesh, model state, jitted steps) on the first prod(mesh_shape) devices."""
    config = config or tiny_config()
    devices = jax.devices()[: math.prod(mesh_shape.values())]
    mesh = make_mesh(mesh_shape, devices)
    optimizer = make_optimizer(config.optimizer, total_steps)
    model_state = build_model_state(config, VOCAB, SEQ_LEN, mesh, optimizer)
    loss_fn = judge_loss(config.objective, LABEL_IDS, SYNONYMS)
    return mesh, model_state, build_steps(model_state, optimizer, loss_fn, mesh)


def random_batch(seed: int = 0, batch_size: int = 8, length: int = SEQ_LEN) -> dict:
    """Right-padded rows of random tokens with Dirichlet targets, one item per row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=batch_size)
    tokens = rng.integers(4, VOCAB, size=(batch_size, length)).astype(np.int32)
    real = np.arange(length)[None, :] < lengths[:, None]
    return {
        "tokens": np.where(real, tokens, 0).astype(np.int32),
        "segment_ids": real.astype(np.int32),
        "positions": np.where(real, np.arange(length)[None, :], 0).astype(np.int32),
        "answer_index": (lengths - 1).astype(np.int32),
        "targets": rng.dirichlet(np.ones(3), size=batch_size).astype(np.float32),
        "weights": np.ones(batch_size, np.float32),
        "item_index": np.arange(batch_size, dtype=np.int32),
    }


def train_steps(mesh_shape: dict[str, int], config: Config, steps: int = 3) -> dict[str, Any]:
    """Losses and final model parameters (LoRA merged) after ``steps`` production steps."""
    mesh, model_state, jitted = production(mesh_shape, config)
    state = model_state.init_state(jax.random.key(0))
    initial = jax.device_get(model_state.model_params(state.params))
    losses = []
    for step in range(steps):
        batch = global_batch(random_batch(seed=step), mesh)
        rng = jax.random.fold_in(jax.random.key(1), step)
        state, metrics = jitted.train(state, batch, rng, model_state.frozen)
        losses.append(float(metrics["loss"]))
    return {
        "losses": np.asarray(losses),
        "params": jax.device_get(model_state.model_params(state.params)),
        "initial": initial,
        "state_shardings": model_state.layout.state_shardings,
    }
