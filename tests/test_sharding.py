"""Meshes and partition rules on simulated CPU devices (conftest asks XLA for 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs.tiny import get_config
from jdjudge.objective.losses import ObjectiveConfig
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder, partition_rules
from jdjudge.training.optim import make_optimizer
from jdjudge.sharding import (
    global_batch,
    make_mesh,
    resolve_mesh_shape,
    spec_for,
    tree_shardings,
)
from jdjudge.training.steps import init_params, make_train_step, new_train_state

MODEL = DecoderConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
)


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


def _state_and_step(mesh_shape):
    """A sharded train state and jitted step on the first prod(mesh_shape) devices."""
    devices = jax.devices()[: int(np.prod(list(mesh_shape.values())))]
    mesh = make_mesh(mesh_shape, devices)
    model = Decoder(MODEL)
    optimizer = make_optimizer(get_config().optimizer, total_steps=10)
    init = lambda r: new_train_state(init_params(model, r, seq_len=8), optimizer)  # noqa: E731
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = tree_shardings(abstract, partition_rules(), mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    label_ids = np.array([[5], [6], [7]], np.int32)
    step = jax.jit(
        make_train_step(model, optimizer, ObjectiveConfig(), label_ids, np.ones((3, 1), bool))
    )
    return mesh, state, step


def _batch(batch_size=8, length=8):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, length + 1, size=batch_size)
    tokens = rng.integers(4, 64, size=(batch_size, length)).astype(np.int32)
    real = np.arange(length)[None, :] < lengths[:, None]
    targets = rng.dirichlet(np.ones(3), size=batch_size).astype(np.float32)
    return {
        "tokens": np.where(real, tokens, 0).astype(np.int32),
        "segment_ids": real.astype(np.int32),
        "positions": np.where(real, np.arange(length)[None, :], 0).astype(np.int32),
        "answer_index": (lengths - 1).astype(np.int32),
        "targets": targets,
        "weights": np.ones(batch_size, np.float32),
    }


def test_fsdp_and_tensor_parallel_params_are_really_split():
    _, state, _ = _state_and_step({"data": 1, "fsdp": 2, "tensor": 2})
    q = state.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert {shard.data.shape for shard in q.addressable_shards} == {(16, 16)}
    mu = state.opt_state[1][0].mu["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert mu.sharding.spec == PartitionSpec("fsdp", "tensor")  # moments follow their params


def test_train_step_is_the_same_program_on_one_and_four_devices():
    """Sharding changes placement, not math: one step on a 2x2 mesh equals one device."""
    batch = _batch()
    results = []
    for shape in ({"data": 1, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 2, "tensor": 2}):
        mesh, state, step = _state_and_step(shape)
        new_state, metrics = step(state, global_batch(batch, mesh), jax.random.key(1))
        results.append((jax.device_get(metrics), jax.device_get(new_state.params)))
    (m1, p1), (m4, p4) = results
    assert jnp.isfinite(m1["loss"])
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
