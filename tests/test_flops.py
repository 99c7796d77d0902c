"""The model-FLOPs formula behind MFU, against XLA's own count of the compiled train step."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jdjudge.config.schema import Config, LoraConfig, ModelConfig
from jdjudge.data.batching import random_full_rows
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.training.flops import (
    layer_matmul_params,
    peak_flops,
    token_lora_params,
    token_matmul_params,
    train_flops_per_token,
)
from jdjudge.training.jitted import build_steps
from jdjudge.training.model_state import build_model_state
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

VOCAB, LENGTH, ROWS = 256, 64, 4


@pytest.mark.parametrize("rank", [0, 8])
def test_flops_per_token_match_the_compiled_step(rank):
    model = ModelConfig(
        hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2
    )
    config = Config(model=model, lora=LoraConfig(rank=rank))
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, 10)
    model_state = build_model_state(config, VOCAB, LENGTH, mesh, optimizer)
    labels, synonyms = np.array([[5], [6], [7]], np.int32), np.ones((3, 1), bool)
    steps = build_steps(
        model_state, optimizer, judge_loss(config.objective, labels, synonyms), mesh
    )
    state = model_state.init_state(jax.random.key(0))
    batch = random_full_rows(VOCAB, ROWS, LENGTH)
    lowered = steps.train.lower(state, global_batch(batch, mesh), jax.random.key(1),
                                model_state.frozen)  # fmt: skip
    cost = lowered.compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    decoder = model_state.model.config
    lora_params = token_lora_params(decoder, state.params) if rank else 0
    ours = train_flops_per_token(decoder, LENGTH, lora_params) * ROWS * LENGTH
    assert ours == pytest.approx(xla, rel=0.05)


def test_layer_params_count_the_seven_projections():
    from jdjudge.models.config import DecoderConfig

    cfg = DecoderConfig(vocab_size=10, hidden_size=64, intermediate_size=96, num_layers=3,
                        num_heads=4, num_kv_heads=2)  # fmt: skip
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96  # q, o; k, v (2 kv heads of 16); mlp
    assert layer_matmul_params(cfg) == 3 * per_layer
    # Unscanned, the last layer's q, o and MLP run at the answer positions only.
    assert token_matmul_params(cfg) == 3 * per_layer - (64 * 64 * 2 + 3 * 64 * 96)
    assert token_matmul_params(dataclasses.replace(cfg, scan_layers=True)) == 3 * per_layer
    assert peak_flops() is None  # CPU: no MFU claimed
