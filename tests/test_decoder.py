"""Decoder tests: parity with HF PyTorch Llama/Qwen2, label-only head, packing, padding, scan
and remat. Checkpoint-level interop (config.json, safetensors, export) is in test_hf_interop."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import (
    Decoder,
    init_params,
    partition_rules,
    stack_layers,
    unstack_layers,
)
from jdjudge.models.hf_import import ArraySource, params_from_source
from jdjudge.models.layers import rope_cos_sin, rope_inv_freq

TINY = DecoderConfig(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    initializer_range=0.2,  # Large enough that logits and attention are far from uniform.
)


@functools.cache
def _jitted(config: DecoderConfig, method: str):
    model = Decoder(config)
    return jax.jit(functools.partial(model.apply, method=getattr(Decoder, method)))


def run(config: DecoderConfig, params, *args, method: str = "__call__"):
    return _jitted(config, method)({"params": params}, *args)


def right_padded(lengths: list[int], length: int, vocab: int, seed: int = 0):
    """tokens, segment_ids (1 valid / 0 pad), positions (0..n-1, 0 on padding)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(len(lengths), length)).astype(np.int32)
    ar = np.arange(length)[None]
    valid = ar < np.asarray(lengths)[:, None]
    tokens = np.where(valid, tokens, 0)
    return tokens, valid.astype(np.int32), np.where(valid, ar, 0).astype(np.int32)


# --- Parity with transformers (PyTorch) ---------------------------------------------------


def torch_to_params(state_dict, config: DecoderConfig) -> dict:
    """HF state dict -> params, through the importer's own name/layout mapping."""
    arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    return params_from_source(ArraySource(arrays), config)


def build_torch(config: DecoderConfig, family: str, seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.initializer_range,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attn_implementation="eager",
    )
    if family == "llama":
        hf_cfg = transformers.LlamaConfig(
            **common,
            head_dim=config.resolved_head_dim,
            attention_bias=config.attention_bias,
            mlp_bias=config.mlp_bias,
        )
        cls = transformers.LlamaForCausalLM
    else:
        hf_cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(seed)
    model = cls(hf_cfg).eval()
    with torch.no_grad():  # Non-trivial norm scales and biases, so their wiring is tested.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return model


PARITY_CASES = {
    "gqa-untied": dict(),
    "mha-tied": dict(num_kv_heads=4, tie_embeddings=True),
    "mqa-head_dim-12": dict(num_kv_heads=1, head_dim=12, rope_theta=500.0),
    "bias-mlp_bias": dict(attention_bias=True, mlp_bias=True, rms_norm_eps=1e-6),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_hf_llama(case):
    config = dataclasses.replace(TINY, **PARITY_CASES[case])
    _check_parity(config, "llama")


def test_parity_with_hf_qwen2():
    config = dataclasses.replace(TINY, attention_bias=True, attention_out_bias=False)
    _check_parity(config, "qwen2")


def _check_parity(config: DecoderConfig, family: str) -> None:
    import torch

    model = build_torch(config, family)
    params = torch_to_params(model.state_dict(), config)
    expected = set(flatten_dict(init_params(config, jax.random.key(0))))
    assert set(flatten_dict(params)) == expected

    lengths = [11, 7, 3]
    tokens, segs, pos = right_padded(lengths, 11, config.vocab_size)
    with torch.no_grad():
        ref = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(segs).long(),
        ).logits.numpy()
    ours = np.asarray(run(config, params, tokens, segs, pos, method="logits"))
    valid = segs.astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    print(f"{family}: max abs diff vs torch = {diff:.2e}")
    assert np.abs(ref[valid]).max() > 0.5  # The comparison is not vacuous.
    assert diff <= 1e-4


def test_llama3_rope_frequencies_match_transformers():
    """Llama 3.1's own settings: every frequency band, compared with HF's function."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = dict(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    hf_cfg = transformers.LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **scaling},
    )
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg)
    cfg = dataclasses.replace(
        TINY,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=8,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", **scaling},
    )
    got = np.asarray(rope_inv_freq(cfg))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=0)
    plain = np.asarray(rope_inv_freq(dataclasses.replace(cfg, rope_scaling=None)))
    assert (got < plain).any() and (got == plain).any()  # Scaled and untouched bands both occur.


@pytest.mark.parametrize("gather_tables", [True, False])
def test_rope_cos_sin_match_float64_angles(gather_tables):
    """Both ways of building the RoPE tables (gathered from constants, or computed in the
    step) give numpy's float64 cos/sin of position · inverse frequency, at packed positions
    that restart per item and at the padding's 0."""
    positions = np.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 6, 7]], np.int32)
    cos, sin = jax.jit(rope_cos_sin, static_argnums=(0, 2))(TINY, positions, gather_tables)
    angles = positions[..., None].astype(np.float64) * np.asarray(rope_inv_freq(TINY), np.float64)
    angles = np.concatenate([angles, angles], axis=-1)
    np.testing.assert_allclose(np.asarray(cos), np.cos(angles), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), np.sin(angles), rtol=0, atol=2e-6)


def test_rope_tables_out_of_range_position_is_nan():
    cos, _ = rope_cos_sin(TINY, np.array([[0, 4]], np.int32), gather_tables=True)
    assert np.isfinite(cos[0, 0]).all() and np.isnan(cos[0, 1]).all()  # a row of 2 tokens


def test_cpu_forward_evaluates_no_cos_or_sin():
    """On the CPU backend the step gathers the tables; no cos or sin is left to evaluate in
    the compiled forward (XLA would otherwise fuse them into every layer's consumers)."""
    params = init_params(TINY, jax.random.key(0))
    tokens, segs, pos = right_padded([5, 8], 8, TINY.vocab_size)
    hlo = _jitted(TINY, "__call__").lower({"params": params}, tokens, segs, pos)
    text = hlo.compile().as_text()
    assert "cosine(" not in text and "sine(" not in text


# --- Packing and padding --------------------------------------------------------------------


def test_packed_segments_match_separate_sequences():
    params = init_params(TINY, jax.random.key(2))
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, TINY.vocab_size, 3), rng.integers(0, TINY.vocab_size, 2)
    packed = np.zeros((1, 7), np.int32)
    packed[0, :5] = np.concatenate([a, b])
    segs = np.array([[1, 1, 1, 2, 2, 0, 0]], np.int32)
    pos = np.array([[0, 1, 2, 0, 1, 0, 0]], np.int32)
    hidden = run(TINY, params, packed, segs, pos)

    alone_tokens = np.zeros((2, 7), np.int32)
    alone_tokens[0, :3], alone_tokens[1, :2] = a, b
    alone_segs = (np.arange(7)[None] < np.array([[3], [2]])).astype(np.int32)
    alone_pos = np.where(alone_segs, np.arange(7)[None], 0).astype(np.int32)
    alone = run(TINY, params, alone_tokens, alone_segs, alone_pos)
    np.testing.assert_allclose(hidden[0, :3], alone[0, :3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(hidden[0, 3:5], alone[1, :2], atol=1e-5, rtol=0)


def test_padding_rows_are_finite_and_do_not_leak():
    params = init_params(TINY, jax.random.key(3))
    tokens, segs, pos = right_padded([6, 0, 3], 6, TINY.vocab_size, seed=3)
    hidden = run(TINY, params, tokens, segs, pos)
    assert np.isfinite(np.asarray(hidden)).all()
    # Changing padded tokens must not change valid positions.
    tokens2 = np.where(segs.astype(bool), tokens, 5)
    hidden2 = run(TINY, params, tokens2, segs, pos)
    np.testing.assert_allclose(hidden2[2, :3], hidden[2, :3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(hidden2[0], hidden[0], atol=1e-6, rtol=0)


def test_bfloat16_compute_close_to_float32():
    params = init_params(TINY, jax.random.key(4))
    tokens, segs, pos = right_padded([8, 5, 0], 8, TINY.vocab_size, seed=4)
    ref = run(TINY, params, tokens, segs, pos, method="logits")
    bf16 = dataclasses.replace(TINY, dtype="bfloat16")
    got = run(bf16, params, tokens, segs, pos, method="logits")
    assert got.dtype == jnp.float32 and np.isfinite(np.asarray(got)).all()
    valid = segs.astype(bool)
    scale = np.abs(np.asarray(ref)[valid]).max()
    assert np.abs(np.asarray(got - ref)[valid]).max() <= 0.05 * scale

    # bf16 params initialize and run too.
    bf16_params_cfg = dataclasses.replace(bf16, param_dtype="bfloat16")
    p16 = init_params(bf16_params_cfg, jax.random.key(4))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    assert np.isfinite(np.asarray(run(bf16_params_cfg, p16, tokens, segs, pos))).all()


# --- Scan over layers and remat -------------------------------------------------------------


_SCAN_BASE = dataclasses.replace(TINY, num_layers=3, attention_bias=True)


def _judge_loss(config: DecoderConfig, params, *batch):
    z = Decoder(config).apply({"params": params}, *batch, method=Decoder.judge_logits)
    return jax.nn.logsumexp(z[..., 0], axis=-1).sum()


@functools.cache
def _loss_and_grad(config: DecoderConfig):
    return jax.jit(jax.value_and_grad(functools.partial(_judge_loss, config)))


@pytest.mark.parametrize("scan, remat", [(False, "full"), (True, "dots_no_batch")])
def test_scan_and_remat_match_unrolled(scan, remat):
    """Same (stacked) weights: same outputs and gradients of a judge loss."""
    variant = dataclasses.replace(_SCAN_BASE, scan_layers=scan, remat=remat)
    params = init_params(_SCAN_BASE, jax.random.key(6))
    moved = stack_layers(params, _SCAN_BASE.num_layers) if scan else params
    tokens, segs, pos = right_padded([7, 4], 7, _SCAN_BASE.vocab_size, seed=6)
    batch = (tokens, segs, pos, jnp.array([6, 3]), jnp.array([[1], [2], [3]]))
    want_loss, want_grads = _loss_and_grad(_SCAN_BASE)(params, *batch)
    got_loss, got_grads = _loss_and_grad(variant)(moved, *batch)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    if scan:
        got_grads = unstack_layers(got_grads)
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), got_grads, want_grads
    )


def test_scanned_init_stacks_a_leading_layer_axis():
    cfg = dataclasses.replace(TINY, num_layers=3, scan_layers=True)
    shapes = flatten_dict(jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0)))
    layer_leaves = {k: v.shape for k, v in shapes.items() if k[0] == "layers"}
    assert layer_leaves[("layers", "self_attn", "q_proj", "kernel")] == (3, 32, 32)
    assert all(shape[0] == 3 for shape in layer_leaves.values())
    assert not any(k[0].startswith("layers_") for k in shapes)


# --- Plumbing ------------------------------------------------------------------------------


def test_jit_grad_through_judge_logits():
    params = init_params(TINY, jax.random.key(5))
    tokens, segs, pos = right_padded([5, 4], 5, TINY.vocab_size, seed=5)
    model = Decoder(TINY)

    @jax.jit
    def loss(p):
        z = model.apply(
            {"params": p},
            tokens,
            segs,
            pos,
            jnp.array([4, 3]),
            jnp.array([[1], [2], [3]]),
            method=Decoder.judge_logits,
        )
        return jax.nn.logsumexp(z[..., 0], axis=-1).sum()

    grads = jax.grad(loss)(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # Only the three label columns of lm_head get gradient.
    nonzero = np.flatnonzero(np.abs(np.asarray(grads["lm_head"]["kernel"])).sum(0))
    assert nonzero.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(tie_embeddings=True),
        dict(attention_bias=True, mlp_bias=True),
        dict(scan_layers=True, attention_bias=True, mlp_bias=True),
    ],
)
def test_partition_rules_cover_every_param_once(overrides):
    config = dataclasses.replace(TINY, **overrides)
    shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
    rules = partition_rules()
    for path, leaf in flatten_dict(shapes, sep="/").items():
        hits = [spec for pattern, spec in rules if re.search(pattern, path)]
        assert len(hits) == 1, (path, hits)
        assert len(hits[0]) == leaf.ndim, (path, hits[0], leaf.shape)
        if path.startswith("layers/"):  # The stacked layer axis is never split.
            assert hits[0][0] is None, (path, hits[0])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_layers=-1), "num_layers"),
        (dict(num_heads=4, num_kv_heads=3), "num_heads"),
        (dict(dtype="fp8"), "dtype"),
        (dict(param_dtype="float64"), "param_dtype"),
        (dict(head_dim=7), "head_dim"),
        (dict(hidden_size=30), "hidden_size"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 8.0}), "rope_scaling"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
        (dict(remat="sometimes"), "remat"),
        (dict(sliding_window=0), "sliding_window"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **overrides).validate()


def test_config_defaults_and_hash():
    assert TINY.validate().resolved_head_dim == 8
    cfg = dataclasses.replace(TINY, head_dim=16, rope_scaling={"rope_type": "default"})
    assert cfg.validate().resolved_head_dim == 16
    hash(cfg)  # Linen modules holding the config must be hashable.
    n = sum(
        x.size
        for x in jax.tree.leaves(
            jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
        )
    )
    assert n == cfg.num_params
