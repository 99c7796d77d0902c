"""LoRA tests: config checks, merge math, gradients (finite differences, torch autograd), the
production train state's layout, partition rules. Parity with peft is in test_lora_peft."""

from __future__ import annotations

import dataclasses
import functools
import re
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from jdjudge.config import fields
from jdjudge.config.schema import LoraConfig
from jdjudge.models import lora
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder, init_params, partition_rules
from jdjudge.models.layers import Projection
from jdjudge.sharding import spec_for, tree_paths
from tests.test_decoder import build_torch, torch_to_params

TINY = DecoderConfig(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    initializer_range=0.2,
)
CFG = LoraConfig(rank=4, alpha=8.0, dropout=0.0)


@functools.cache
def _logits_fn(config: DecoderConfig):
    return jax.jit(functools.partial(Decoder(config).apply, method=Decoder.logits))


@functools.cache
def base_params() -> dict:
    return jax.jit(functools.partial(init_params, TINY))(jax.random.key(0))


def logits(params, tokens: np.ndarray, config: DecoderConfig = TINY) -> np.ndarray:
    segs = np.ones_like(tokens)
    pos = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return np.asarray(_logits_fn(config)({"params": params}, tokens, segs, pos))


def tokens_batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, (3, 10)).astype(np.int32)


def random_adapters(params, cfg: LoraConfig = CFG, seed: int = 0) -> dict:
    """PEFT-style init, then B random so the adapters actually change the model."""
    adapters = lora.init_lora(params, cfg, jax.random.key(seed))
    flat = flatten_dict(adapters)
    rng = np.random.default_rng(seed)
    for key, leaf in flat.items():
        if key[-1] == lora.LORA_B:
            flat[key] = jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), jnp.float32)
    return unflatten_dict(flat)


def tree_equal(x, y) -> bool:
    pairs = zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
    same = jax.tree.structure(x) == jax.tree.structure(y)
    return same and all(np.array_equal(a, b) for a, b in pairs)


def stack_layers(tree: dict) -> dict:
    """Per-layer `layers_{i}` subtrees -> one `layers` subtree with a leading layer axis."""
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k[7:]))
    out = {k: v for k, v in tree.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[n] for n in names])
    return out


# --- Config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rank", -1, "rank=-1: must be >= 0"),
        ("alpha", 0.0, "alpha=0.0: must be > 0"),
        ("dropout", 1.0, "dropout=1.0: must be < 1"),
        ("dropout", -0.1, "dropout=-0.1: must be >= 0"),
        (
            "target_modules",
            ("q_proj", "qkv_proj"),
            "target_modules=('q_proj', 'qkv_proj'): one of q_proj, k_proj, v_proj, o_proj, "
            "gate_proj, up_proj, down_proj",
        ),
        ("target_modules", (), "target_modules=(): must be non-empty, without duplicates"),
        (
            "target_modules",
            ("q_proj", "q_proj"),
            "target_modules=('q_proj', 'q_proj'): must be non-empty, without duplicates",
        ),
    ],
)
def test_config_check_names_field(field, value, message):
    assert fields.check(LoraConfig(**{field: value})) == [message]
    with pytest.raises(ValueError, match=re.escape(message)):  # init_lora validates
        lora.init_lora(base_params(), dataclasses.replace(CFG, **{field: value}), jax.random.key(0))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rank", 2.0, "rank=2.0: must be an integer"),
        ("alpha", float("inf"), "alpha=inf: must be finite"),
        ("target_modules", "q_proj", "target_modules='q_proj': must be a tuple of str"),
    ],
)
def test_config_types_are_checked_when_resolved(field, value, message):
    with pytest.raises(fields.ConfigError, match=re.escape(message)):
        fields.resolve(LoraConfig, {"rank": 4, field: value})


def test_config_defaults_and_rank_zero():
    assert fields.check(LoraConfig()) == [] and not LoraConfig().enabled  # rank 0: full FT
    assert CFG.enabled and CFG.scale == 2.0
    with pytest.raises(ValueError, match="rank"):
        lora.init_lora(base_params(), LoraConfig(), jax.random.key(0))


def test_init_shapes_and_missing_targets():
    params = base_params()
    adapters = lora.init_lora(params, CFG, jax.random.key(1))
    flat = flatten_dict(adapters)
    assert len(flat) == 2 * 7 * TINY.num_layers
    a = flat[("layers_1", "mlp", "down_proj", "lora_a")]
    assert a.shape == (64, 4) and float(jnp.abs(a).max()) <= 1 / 8
    assert flat[("layers_1", "mlp", "down_proj", "lora_b")].shape == (4, 32)
    assert all(not np.any(np.asarray(v)) for k, v in flat.items() if k[-1] == lora.LORA_B)
    per_layer = 4 * (32 + 32) + 2 * 4 * (32 + 16) + 4 * (32 + 32) + 3 * 4 * (32 + 64)
    assert lora.lora_param_count(adapters) == TINY.num_layers * per_layer

    stacked = lora.init_lora(stack_layers(params), CFG, jax.random.key(1))
    assert stacked["layers"]["self_attn"]["k_proj"]["lora_a"].shape == (2, 32, 4)
    assert stacked["layers"]["self_attn"]["k_proj"]["lora_b"].shape == (2, 4, 16)

    no_mlp = {k: v for k, v in params.items() if not k.startswith("layers_")}
    no_mlp["layers_0"] = {"self_attn": params["layers_0"]["self_attn"]}
    with pytest.raises(ValueError, match="gate_proj"):
        lora.init_lora(no_mlp, CFG, jax.random.key(1))


# --- Merge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_zero_b_merge_is_exactly_the_base(param_dtype):
    params = jax.tree.map(lambda x: x.astype(param_dtype), base_params())
    merged = lora.merge(params, lora.init_lora(params, CFG, jax.random.key(1)), CFG)
    for got, want in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    if param_dtype == "float32":
        tokens = tokens_batch()
        np.testing.assert_array_equal(logits(merged, tokens), logits(params, tokens))


def test_merge_matches_numpy_and_stacked_layout():
    params = base_params()
    adapters = random_adapters(params)
    merged = lora.merge(params, adapters, CFG)
    flat_p, flat_m = flatten_dict(params), flatten_dict(merged)
    for path, (a, b) in lora.adapter_pairs(adapters).items():
        w = np.asarray(flat_p[(*path, "kernel")], np.float64)
        want = w + (8.0 / 4) * np.asarray(a, np.float64) @ np.asarray(b, np.float64)
        np.testing.assert_allclose(flat_m[(*path, "kernel")], want, atol=1e-6, rtol=0)
    untouched = [k for k in flat_p if k[-1] != "kernel" or k[-2] not in CFG.target_modules]
    assert all(flat_m[k] is flat_p[k] for k in untouched)

    stacked = lora.merge(stack_layers(params), stack_layers(adapters), CFG)
    want = stack_layers(merged)
    for got, ref in zip(jax.tree.leaves(stacked), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_stacked_adapters_drive_the_scanned_decoder():
    params = base_params()
    adapters = random_adapters(params)
    tokens = tokens_batch()
    want = logits(lora.merge(params, adapters, CFG), tokens)
    scanned = dataclasses.replace(TINY, scan_layers=True)
    merged = lora.merge(stack_layers(params), stack_layers(adapters), CFG)
    np.testing.assert_allclose(logits(merged, tokens, scanned), want, atol=1e-5, rtol=0)


def test_attached_adapters_give_the_merged_forward_in_both_layouts():
    """Training runs x·W + (x·A)·(s·B) at each projection; the merge W + s·A·B is the
    reference (float32, no dropout)."""
    params = base_params()
    adapters = random_adapters(params)
    tokens = tokens_batch()
    want = logits(lora.merge(params, adapters, CFG), tokens)
    assert not np.allclose(want, logits(params, tokens), atol=1e-3)  # the adapters matter
    np.testing.assert_allclose(logits(lora.attach(params, adapters, CFG), tokens), want, atol=1e-5)
    scanned = dataclasses.replace(TINY, scan_layers=True)
    stacked = lora.attach(stack_layers(params), stack_layers(adapters), CFG)
    np.testing.assert_allclose(logits(stacked, tokens, scanned), want, atol=1e-5, rtol=0)


def test_projection_dropout_is_per_element_and_only_in_training():
    """PEFT's LoRA dropout: each element of x is dropped (or scaled by 1/keep) on its own,
    per token, and only when a dropout rng is passed. With W = 0 and A = B = I the output is
    the dropped input itself."""
    n, keep = 16, 0.75
    layer = Projection(n, use_bias=False, lora_dropout=1 - keep)
    eye = jnp.eye(n)
    params = {"params": {"kernel": jnp.zeros((n, n)), "lora_a": eye, "lora_b": eye}}
    x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, (2, 50, n)), jnp.float32)
    np.testing.assert_allclose(layer.apply(params, x), x, rtol=1e-6)  # eval: no dropout
    rngs = {"dropout": jax.random.key(3)}
    ratio = np.asarray(layer.apply(params, x, rngs=rngs)) / np.asarray(x)
    assert np.all(np.isclose(ratio, 0.0) | np.isclose(ratio, 1 / keep, rtol=1e-6))
    assert abs(float((ratio > 0).mean()) - keep) < 0.05
    per_feature = (ratio > 0).reshape(-1, n)
    assert (per_feature.any(0) & ~per_feature.all(0)).all()  # no feature dropped wholesale
    again = np.asarray(layer.apply(params, x, rngs=rngs)) / np.asarray(x)
    np.testing.assert_array_equal(ratio, again)


# --- Gradients --------------------------------------------------------------------------------


def _loss(adapters, base, tokens, weights, cfg=CFG):
    params = lora.attach(base, adapters, cfg)  # the training forward
    segs = jnp.ones_like(tokens)
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    z = Decoder(TINY).apply({"params": params}, tokens, segs, pos, method=Decoder.logits)
    return jnp.mean(jax.nn.log_softmax(z) * weights)


def torch_adapter_grads(model, adapters, tokens: np.ndarray, weights: np.ndarray) -> dict:
    """∂loss/∂(A, B) by torch autograd through HF's Llama (float64), every adapted Linear's
    weight replaced by W + s·(A @ B)ᵀ: a reference sharing no code with jdjudge's merge."""
    torch = pytest.importorskip("torch")
    model = model.double()
    named = dict(model.named_parameters())
    leaves, overrides = {}, {}
    for path, (a, b) in lora.adapter_pairs(adapters).items():
        layer, group, proj = int(path[0].removeprefix("layers_")), path[1], path[2]
        ta = torch.tensor(np.asarray(a, np.float64), requires_grad=True)
        tb = torch.tensor(np.asarray(b, np.float64), requires_grad=True)
        name = f"model.layers.{layer}.{group}.{proj}.weight"
        overrides[name] = named[name].detach() + (CFG.alpha / CFG.rank) * (ta @ tb).T
        leaves[(*path, lora.LORA_A)], leaves[(*path, lora.LORA_B)] = ta, tb
    assert len(overrides) == 7 * TINY.num_layers
    ids = torch.from_numpy(np.array(tokens, np.int64))
    z = torch.func.functional_call(model, overrides, (ids,)).logits
    loss = (torch.log_softmax(z, -1) * torch.from_numpy(np.asarray(weights, np.float64))).mean()
    loss.backward()
    return unflatten_dict({key: t.grad.numpy() for key, t in leaves.items()})


def test_gradients_match_finite_differences_and_torch_autograd():
    model = build_torch(TINY, "llama", seed=0)
    base = torch_to_params(model.state_dict(), TINY)
    adapters = random_adapters(base)
    tokens = jnp.asarray(tokens_batch())
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(TINY.vocab_size,)), jnp.float32)
    loss = jax.jit(_loss)
    grads = jax.jit(jax.grad(_loss))(adapters, base, tokens, weights)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)

    checked = [
        ("layers_0", "self_attn", "q_proj", "lora_b"),
        ("layers_1", "mlp", "down_proj", "lora_a"),
    ]
    for key in checked:
        g = np.asarray(flatten_dict(grads)[key])
        idx = np.unravel_index(np.abs(g).argmax(), g.shape)
        eps = 1e-2

        def shifted(delta, key=key, idx=idx):
            flat = flatten_dict(adapters)
            flat[key] = flat[key].at[idx].add(delta)
            return float(loss(unflatten_dict(flat), base, tokens, weights))

        fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
        np.testing.assert_allclose(fd, g[idx], rtol=2e-2)

    want = torch_adapter_grads(model, adapters, np.asarray(tokens), np.asarray(weights))
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want))
    chex.assert_trees_all_close(grads, want, atol=1e-5 * scale, rtol=1e-4)
    assert min(float(np.abs(x).max()) for x in jax.tree.leaves(want)) > 1e-3 * scale


# --- Partition rules --------------------------------------------------------------------------


@pytest.mark.parametrize("stacked", [False, True])
def test_partition_rules_follow_the_adapted_kernel(stacked):
    mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 2, "tensor": 2})
    base = stack_layers(base_params()) if stacked else base_params()
    adapters = jax.eval_shape(lambda: lora.init_lora(base, CFG, jax.random.key(1)))
    rules = lora.partition_rules_for_lora()
    flat_base = {"/".join(k): v for k, v in flatten_dict(base).items()}
    moments = {"opt_state": {"0": {"mu": adapters}}}
    for path, leaf in zip(tree_paths(moments), jax.tree.leaves(moments), strict=True):
        spec = spec_for(path, leaf.shape, rules, mesh)
        module = path.split("/mu/")[1].rsplit("/", 1)[0]
        w = flat_base[f"{module}/kernel"]
        w_spec = spec_for(f"{module}/kernel", w.shape, partition_rules(), mesh)
        if path.endswith("lora_a"):  # split like W's `in` axis, rank axis whole
            assert spec[-2] == w_spec[-2] is not None and spec[-1] is None, path
        else:  # split like W's `out` axis
            assert spec[-1] == w_spec[-1] is not None and spec[-2] is None, path
        assert len(spec) == leaf.ndim and (not stacked or spec[0] is None)
