"""Meshes and partition rules on simulated CPU devices (conftest asks XLA for 4); the
production step on 8 devices is in test_production_step.py."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jdjudge.config.schema import LORA_MODULES, Config, LoraConfig, ModelConfig
from jdjudge.sharding import make_mesh, resolve_mesh_shape, spec_for, tree_paths
from jdjudge.training.model_state import state_layout
from jdjudge.training.optim import make_optimizer
from tests.production import production, tiny_config


def test_resolve_mesh_shape():
    assert resolve_mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 4) == (4, 1, 1)
    assert resolve_mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
    with pytest.raises(ValueError, match="at most one axis"):
        resolve_mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 4)
    with pytest.raises(ValueError, match="needs 8 devices"):
        resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 4)
    with pytest.raises(ValueError, match="not divisible"):
        resolve_mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 4)


def test_indivisible_dimensions_fall_back_to_replication():
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2})
    rules = [(r"w$", ("fsdp", "tensor"))]
    assert spec_for("w", (8, 6), rules, mesh) == PartitionSpec("fsdp", "tensor")
    assert spec_for("w", (7, 6), rules, mesh) == PartitionSpec(None, "tensor")
    assert spec_for("w", (), rules, mesh) == PartitionSpec()
    with pytest.raises(ValueError, match="no partition rule"):
        spec_for("other", (2, 2), rules, mesh)


def test_fsdp_and_tensor_parallel_params_are_really_split():
    _, model_state, _ = production({"data": 1, "fsdp": 2, "tensor": 2})
    state = model_state.init_state(jax.random.key(0))
    q = state.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert {shard.data.shape for shard in q.addressable_shards} == {(16, 16)}
    mu = state.opt_state[1][0].mu["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert mu.sharding.spec == PartitionSpec("fsdp", "tensor")  # moments follow their params


def test_lora_adapters_follow_their_kernels_shardings():
    _, model_state, _ = production({"data": 1, "fsdp": 2, "tensor": 2}, tiny_config(lora_rank=4))
    state = model_state.init_state(jax.random.key(0))
    q = state.params["layers_0"]["self_attn"]["q_proj"]
    assert q["lora_a"].sharding.spec == PartitionSpec("fsdp", None)
    assert q["lora_b"].sharding.spec == PartitionSpec(None, "tensor")
    base = model_state.frozen["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert base.sharding.spec == PartitionSpec("fsdp", "tensor")


FAMILIES = {  # config.json of a small model of each supported family (only it is read)
    "llama": {"model_type": "llama", "tie_word_embeddings": False},
    "llama-tied": {"model_type": "llama", "tie_word_embeddings": True},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": False},  # q/k/v biases
    "mistral": {"model_type": "mistral", "tie_word_embeddings": False, "sliding_window": 64},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_of_every_family_gets_a_sharding(tmp_path, family, lora_rank, scan):
    """Full fine-tuning and LoRA on every projection, scanned and unrolled: each leaf of the
    train state and of the base has a rule, and every matrix big enough to split is split."""
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
             "rms_norm_eps": 1e-6, "rope_theta": 10000.0}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({**shape, **FAMILIES[family]}))
    model = dataclasses.replace(ModelConfig(), init_from=str(tmp_path), scan_layers=scan)
    lora = LoraConfig(rank=lora_rank, target_modules=LORA_MODULES)
    config = dataclasses.replace(Config(), model=model, lora=lora)
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2})
    optimizer = make_optimizer(config.optimizer, 10)
    layout = state_layout(config, 128, 16, mesh, optimizer, np.array([[5], [6], [7]]))
    for tree in (layout.abstract_state, layout.abstract_base):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            assert isinstance(leaf.sharding, NamedSharding), path
            matrix = leaf.ndim >= 2 and min(leaf.shape[-2:]) >= 4 and "lora_" not in str(path)
            if matrix:  # kernels, embeddings and their Adam moments
                assert set(leaf.sharding.spec) - {None}, f"{path} {leaf.shape} is not split"
    if family == "qwen2":
        biases = [p for p in tree_paths(layout.abstract_base) if p.endswith("q_proj/bias")]
        assert biases, "qwen2's q/k/v biases are missing"
