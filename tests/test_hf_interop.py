"""HF interop: config mapping, safetensors import/export, parity with transformers (PyTorch).

Every checkpoint is a tiny random model built and saved here (the Hub is never reached).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec

from jdjudge.models.decoder import Decoder, stack_layers
from jdjudge.models.hf_config import decoder_config_from_hf, hf_config_from_decoder
from jdjudge.models.hf_export import export_hf
from jdjudge.models.hf_import import load_hf_checkpoint, load_hf_model, load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

BASE = dict(
    vocab_size=211,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    initializer_range=0.2,  # Large enough that logits and attention are far from uniform.
    rms_norm_eps=1e-6,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 100.0,  # Small theta + short original context: all three frequency bands.
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
FAMILIES = {
    "llama-gqa-untied": ("llama", dict(num_key_value_heads=2)),
    "llama-tied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-rope": (
        "llama",
        dict(hidden_size=64, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
        | dict(rope_parameters=LLAMA3_ROPE),
    ),
    "qwen2-biases": ("qwen2", dict(num_key_value_heads=2)),
    "mistral": ("mistral", dict(num_key_value_heads=1, sliding_window=None)),
}
LENGTHS, SEQ = [40, 29, 6], 40  # Right-padded; 40 > original_max_position_embeddings (32).
LABEL_IDS = np.array([5, 17, 42, 199], np.int32)


def build_hf(family: str, overrides: dict, seed: int = 0):
    """A random transformers model with non-trivial norm scales and biases (eager, fp32)."""
    cfg_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[family]
    config = cfg_cls(**(BASE | overrides), attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> (torch model, checkpoint dir); each built and saved once, on first use."""
    cache: dict = {}

    def get(case: str):
        if case not in cache:
            model = build_hf(*FAMILIES[case])
            path = tmp_path_factory.mktemp(case)
            model.save_pretrained(path)
            cache[case] = (model, path)
        return cache[case]

    return get


def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, BASE["vocab_size"], size=(len(LENGTHS), SEQ)).astype(np.int32)
    valid = np.arange(SEQ)[None] < np.array(LENGTHS)[:, None]
    positions = np.where(valid, np.arange(SEQ)[None], 0).astype(np.int32)
    return np.where(valid, tokens, 0), valid.astype(np.int32), positions


def torch_logits(model, tokens, segs) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(segs).long()
        )
    return out.logits.float().numpy()


@functools.cache
def _forward(cfg):
    def both(module, tokens, segs, pos, answer, labels):
        full = module.logits(tokens, segs, pos)
        return full, module.judge_logits(tokens, segs, pos, answer, labels)

    return jax.jit(functools.partial(Decoder(cfg).apply, method=both))


def jax_outputs(cfg, params, tokens, segs, pos):
    """(full logits [B, L, V], label distribution [B, K] at the last real position)."""
    answer = np.array(LENGTHS, np.int32) - 1
    full, judge = _forward(cfg)({"params": params}, tokens, segs, pos, answer, LABEL_IDS[:, None])
    return np.asarray(full), np.asarray(jax.nn.softmax(judge[..., 0], axis=-1))


def assert_parity(cfg, params, model, tag: str) -> None:
    tokens, segs, pos = batch()
    ref = torch_logits(model, tokens, segs)
    full, dist = jax_outputs(cfg, params, tokens, segs, pos)
    valid = segs.astype(bool)
    logit_diff = np.abs(full - ref)[valid].max()
    last = ref[np.arange(len(LENGTHS)), np.array(LENGTHS) - 1][:, LABEL_IDS]
    ref_dist = np.asarray(jax.nn.softmax(last, axis=-1))
    dist_diff = np.abs(dist - ref_dist).max()
    print(f"{tag}: max |logit diff| {logit_diff:.2e}, max |label prob diff| {dist_diff:.2e}")
    assert np.abs(ref[valid]).max() > 0.5  # Not vacuous.
    assert logit_diff <= 1e-4
    assert dist_diff <= 1e-5


# --- Import parity ----------------------------------------------------------------------


@pytest.mark.parametrize("case", list(FAMILIES))
def test_import_matches_transformers(saved, case):
    model, path = saved(case)
    cfg, params = load_hf_model(path, dtype="float32")
    assert cfg.tie_embeddings == model.config.tie_word_embeddings
    assert ("lm_head" in params) != cfg.tie_embeddings
    if case == "llama3-rope":
        assert cfg.rope_type == "llama3" and cfg.rope_theta == 100.0
    if case == "qwen2-biases":
        assert cfg.attention_bias and not cfg.resolved_attention_out_bias
    assert_parity(cfg, params, model, case)


def test_scanned_remat_import_matches_unrolled(saved):
    model, path = saved("llama3-rope")
    cfg, params = load_hf_model(path, dtype="float32")
    scan_cfg, scanned = load_hf_model(path, dtype="float32", scan_layers=True, remat="full")
    assert scan_cfg.scan_layers and "layers" in scanned and "layers_0" not in scanned
    stacked = stack_layers(params, cfg.num_layers)
    jax.tree.map(np.testing.assert_array_equal, scanned, stacked)
    assert_parity(scan_cfg, scanned, model, "llama3-rope scan+remat")


def test_sharded_checkpoint_import(saved, tmp_path):
    model, single = saved("qwen2-biases")
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    _, want = load_hf_model(single, dtype="float32")
    _, got = load_hf_model(tmp_path, dtype="float32")
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_import_places_params_in_their_shardings(saved):
    from jdjudge.models.decoder import partition_rules
    from jdjudge.sharding import make_mesh, tree_shardings

    _, path = saved("llama-gqa-untied")
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    shardings_fn = lambda abstract: tree_shardings(abstract, partition_rules(), mesh)  # noqa: E731
    _, params = load_hf_model(path, dtype="float32", shardings_fn=shardings_fn)
    _, plain = load_hf_model(path, dtype="float32")
    want = flatten_dict(shardings_fn(jax.eval_shape(lambda: params)))
    for key, leaf in flatten_dict(params).items():
        assert leaf.sharding == want[key], key
    assert params["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.spec == PartitionSpec(
        "fsdp", "tensor"
    )
    jax.tree.map(np.testing.assert_array_equal, params, plain)


# --- Checkpoint and config errors ---------------------------------------------------------


def _edit_checkpoint(src, dst, edit) -> None:
    tensors = safetensors_numpy.load_file(src / "model.safetensors")
    edit(tensors)
    safetensors_numpy.save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())


UP = "model.layers.1.mlp.up_proj.weight"
EDITS = {
    "missing": (lambda t: t.pop(UP), f"missing tensors: {UP}"),
    "unexpected": (
        lambda t: t.update({"model.layers.0.mlp.extra.weight": np.ones(3, np.float32)}),
        "unexpected: model.layers.0.mlp.extra.weight",
    ),
    "shape": (
        lambda t: t.update({UP: np.ones((64, 31), np.float32)}),
        f"shape mismatch: {UP} (expected (64, 32), got (64, 31))",
    ),
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_checkpoint_errors_name_the_tensor(saved, tmp_path, kind):
    _, path = saved("llama-gqa-untied")
    edit, message = EDITS[kind]
    _edit_checkpoint(path, tmp_path, edit)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_hf_model(tmp_path, dtype="float32")


def test_missing_weights_file_is_named(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin"):
        load_hf_checkpoint(tmp_path, decoder_config_from_hf(_llama_dict()))


def _llama_dict(**changes) -> dict:
    return transformers.LlamaConfig(**(BASE | {"num_key_value_heads": 2})).to_dict() | changes


REFUSED = {
    "model_type": (dict(model_type="gemma"), "model_type 'gemma'"),
    "rope_type": (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "'yarn'"),
    "legacy_rope_scaling": (
        dict(rope_parameters=None, rope_scaling={"type": "linear", "factor": 2.0}),
        "'linear'",
    ),
    "hidden_act": (dict(hidden_act="gelu"), "hidden_act"),
    "quantization": (dict(quantization_config={"quant_method": "gptq"}), "quantization_config"),
    "partial_rotary": (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    "dropout": (dict(attention_dropout=0.1), "attention_dropout"),
    "llama3_keys": (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}), "low_freq"),
    "mistral_window": (
        dict(model_type="mistral", sliding_window=4096, max_position_embeddings=32768),
        "sliding_window=4096",
    ),
    "qwen2_window": (
        dict(model_type="qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1),
        "sliding_window=16",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_options_are_refused(case):
    changes, message = REFUSED[case]
    with pytest.raises(ValueError, match=message):
        decoder_config_from_hf(_llama_dict(**changes))


def test_legacy_and_v5_rope_fields_agree():
    v5 = decoder_config_from_hf(_llama_dict(rope_parameters=LLAMA3_ROPE))
    legacy = {k: v for k, v in _llama_dict().items() if k != "rope_parameters"}
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
    legacy |= {"rope_theta": 100.0, "rope_scaling": {"type": "llama3", **scaling}}
    assert decoder_config_from_hf(legacy) == v5
    config_object = transformers.LlamaConfig(**(BASE | {"num_key_value_heads": 2}))
    config_object.rope_parameters = dict(LLAMA3_ROPE)
    assert decoder_config_from_hf(config_object) == v5
    assert v5.rope_scaling["original_max_position_embeddings"] == 32


def test_sliding_window_accepted_only_where_rows_fit():
    mistral = _llama_dict(model_type="mistral", sliding_window=64, max_position_embeddings=128)
    cfg = decoder_config_from_hf(mistral, dtype="float32", max_seq_len=48)
    assert cfg.sliding_window == 64
    params = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0), *batch()))
    too_long = jnp.zeros((1, 65), jnp.int32)
    with pytest.raises(ValueError, match="sliding_window=64"):
        jax.eval_shape(lambda: Decoder(cfg).apply(params, too_long, too_long, too_long))
    hf = hf_config_from_decoder(cfg, "mistral")
    assert hf["sliding_window"] == 64
    assert decoder_config_from_hf(hf, dtype="float32", max_seq_len=48) == cfg


# --- Export -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, model_type",
    [
        ("llama-tied", "llama"),
        ("llama3-rope", "llama"),
        ("qwen2-biases", "qwen2"),
        ("mistral", "mistral"),
    ],
)
def test_export_round_trip(saved, tmp_path, case, model_type):
    model, path = saved(case)
    cfg, params = load_hf_model(path, dtype="float32", scan_layers=case == "llama3-rope")
    export_hf(params, cfg, tmp_path, model_type=model_type, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert reloaded.config.tie_word_embeddings == cfg.tie_embeddings
    tokens, segs, _ = batch()
    np.testing.assert_allclose(
        torch_logits(reloaded.eval(), tokens, segs), torch_logits(model, tokens, segs), atol=1e-6
    )
    assert load_hf_model(tmp_path, dtype="float32", scan_layers=cfg.scan_layers)[0] == cfg


def test_bfloat16_export_reads_back_exactly(saved, tmp_path):
    from safetensors import safe_open

    _, path = saved("qwen2-biases")
    cfg, params = load_hf_model(path, dtype="float32")
    export_hf(params, cfg, tmp_path, model_type="qwen2", dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    cfg16, params16 = load_hf_model(tmp_path)  # param_dtype follows the checkpoint.
    assert cfg16.param_dtype == "bfloat16" and cfg16.dtype == "bfloat16"
    want = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    jax.tree.map(np.testing.assert_array_equal, params16, want)
    with safe_open(tmp_path / "model.safetensors", framework="flax") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q.T, params16["layers_0"]["self_attn"]["q_proj"]["kernel"])


def test_export_refuses_a_layout_the_family_cannot_express(saved, tmp_path):
    _, path = saved("qwen2-biases")
    cfg, params = load_hf_model(path, dtype="float32")
    with pytest.raises(ValueError, match="model_type='qwen2'"):
        export_hf(params, cfg, tmp_path, model_type="llama")
    lora_like = {**params, "extra": {"kernel": jnp.zeros(2)}}
    with pytest.raises(ValueError, match="extra/kernel"):
        export_hf(lora_like, cfg, tmp_path, model_type="qwen2")


def test_tokenizer_travels_with_export(saved, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "yes": 4, "no": 5}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    _, path = saved("llama-tied")
    cfg, params = load_hf_model(path, dtype="float32")
    export_hf(params, cfg, tmp_path, tokenizer=tok)
    loaded = load_tokenizer(tmp_path)
    assert loaded("yes no")["input_ids"][-2:] == [4, 5]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)


def test_hf_config_round_trip_per_family():
    for model_type in ("llama", "qwen2", "mistral"):
        hf = hf_config_from_decoder(
            decoder_config_from_hf(_llama_dict(model_type=model_type, sliding_window=None)),
            model_type,
        )
        cfg = decoder_config_from_hf(hf)
        assert hf_config_from_decoder(cfg, model_type) == hf
        assert dataclasses.replace(cfg, dtype="float32").validate()
