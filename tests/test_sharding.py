"""Meshes and partition rules on simulated CPU devices (conftest asks XLA for 4); the
production step on 8 devices is in test_production_step.py."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec

from jdjudge.sharding import make_mesh, resolve_mesh_shape, spec_for
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
