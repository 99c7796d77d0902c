"""HF config <-> DecoderConfig, for the Llama, Qwen2 and Mistral families.

Anything the decoder does not compute exactly as transformers does (other RoPE types, other
activations, sliding windows that would bite, quantized weights, dropout) is refused with a
ValueError naming the option: a judge that silently computes something else is worse than none.
Reads plain dicts (config.json) as well as `transformers.PretrainedConfig` objects; transformers
itself is not needed here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jdjudge.config.schema import DTYPES
from jdjudge.models.config import LLAMA3_ROPE_KEYS, DecoderConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
# transformers' defaults for keys a config.json may omit (per family, as of transformers 5).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "qwen2": {
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
    },
    "mistral": {"rms_norm_eps": 1e-6, "max_position_embeddings": 131072, "sliding_window": 4096},
}
_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def decoder_config_from_hf(
    hf_config: Any,
    dtype: str = "bfloat16",
    param_dtype: str | None = None,
    max_seq_len: int | None = None,
    **overrides: Any,
) -> DecoderConfig:
    """The DecoderConfig computing what transformers computes for `hf_config`.

    `param_dtype=None` keeps the checkpoint's stored dtype (config `dtype`/`torch_dtype`,
    float32 if absent). `max_seq_len` is the longest row the caller will run: a sliding window
    at least that long never masks anything, so it is accepted. `overrides` (e.g.
    `scan_layers=True`, `remat="full"`) are applied to the result.
    """
    d = _as_dict(hf_config)
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})"
        )
    d = {**_FAMILY_DEFAULTS[model_type], **d}  # An explicit None (e.g. sliding_window) stays.
    _refuse_unsupported(d)
    missing = [key for key in _REQUIRED if d.get(key) is None]
    if missing:
        raise ValueError(f"HF config is missing {', '.join(missing)}")
    heads = int(d["num_attention_heads"])
    theta, rope_scaling = _rope(d)
    qwen = model_type == "qwen2"
    cfg = DecoderConfig(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d["head_dim"]) if d.get("head_dim") is not None else None,
        rope_theta=theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=float(d["rms_norm_eps"]),
        tie_embeddings=bool(d.get("tie_word_embeddings") or False),
        attention_bias=True if qwen else bool(d.get("attention_bias") or False),
        attention_out_bias=False if qwen else None,
        mlp_bias=False if model_type != "llama" else bool(d.get("mlp_bias") or False),
        max_position_embeddings=int(d["max_position_embeddings"]),
        sliding_window=_sliding_window(d, max_seq_len),
        dtype=dtype,
        param_dtype=param_dtype or _stored_dtype(d),
        initializer_range=float(d.get("initializer_range") or 0.02),
    )
    return dataclasses.replace(cfg, **overrides).validate()


def hf_config_from_decoder(cfg: DecoderConfig, model_type: str = "llama") -> dict[str, Any]:
    """config.json content that transformers loads back into the same computation."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})"
        )
    _check_family_biases(cfg, model_type)
    rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": float(cfg.rope_theta)}
    if cfg.rope_type == "llama3":
        rope.update({key: (cfg.rope_scaling or {})[key] for key in LLAMA3_ROPE_KEYS})
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.initializer_range,
        "attention_dropout": 0.0,
    }
    if cfg.head_dim is not None:  # Qwen2 configs normally omit it; HF then derives it.
        out["head_dim"] = cfg.head_dim
    if model_type == "llama":
        out.update(attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias)
    elif model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    else:  # qwen2: a kept window is one every processed row fits in, so all layers may use it.
        window = cfg.sliding_window
        out.update(use_sliding_window=window is not None, sliding_window=window)
        out["max_window_layers"] = 0 if window is not None else cfg.num_layers
    return out


def _as_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, dict):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return dict(hf_config.to_dict())
    raise TypeError(f"expected a dict or transformers.PretrainedConfig, got {type(hf_config)}")


def _refuse_unsupported(d: dict[str, Any]) -> None:
    """Options the decoder would silently compute differently."""
    if (d.get("hidden_act") or "silu") != "silu":
        raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported (only 'silu')")
    quant = d.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else quant
        raise ValueError(f"quantization_config ({method!r}) is not supported: load unquantized")
    if float(d.get("attention_dropout", 0.0) or 0.0) != 0.0:
        raise ValueError(f"attention_dropout={d['attention_dropout']} is not supported (only 0)")
    if float(d.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor={d['partial_rotary_factor']} is not supported")


def _rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from v5 `rope_parameters` or legacy `rope_theta`/`rope_scaling`."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if params and all(isinstance(v, dict) for v in params.values()):  # Per-layer-type dicts.
        distinct = {repr(sorted(v.items())) for v in params.values()}
        if len(distinct) > 1:
            raise ValueError(f"rope_parameters differ by layer type ({sorted(params)})")
        params = next(iter(params.values()))
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta") or d.get("rope_theta") or 10000.0)
    if float(params.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ValueError("rope_parameters.partial_rotary_factor != 1 is not supported")
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(
            f"rope type {rope_type!r} is not supported (supported: 'default', 'llama3')"
        )
    scaling = {"original_max_position_embeddings": d["max_position_embeddings"], **params}
    missing = [key for key in LLAMA3_ROPE_KEYS if key not in scaling]
    if missing:
        raise ValueError(f"llama3 rope_parameters are missing {', '.join(missing)}")
    return theta, {"rope_type": "llama3", **{key: scaling[key] for key in LLAMA3_ROPE_KEYS}}


def _sliding_window(d: dict[str, Any], max_seq_len: int | None) -> int | None:
    """The window if one applies to some layer; refused where a row could outgrow it."""
    window = d.get("sliding_window")
    if d["model_type"] == "llama" or window is None:
        return None
    if d["model_type"] == "qwen2":
        if not d.get("use_sliding_window"):
            return None
        layer_types = d.get("layer_types") or [
            "sliding_attention" if i >= int(d["max_window_layers"]) else "full_attention"
            for i in range(int(d["num_hidden_layers"]))
        ]
        if "sliding_attention" not in layer_types:
            return None
    longest = max_seq_len if max_seq_len is not None else int(d["max_position_embeddings"])
    if int(window) < longest:
        raise ValueError(
            f"sliding_window={window} is in effect for sequences up to {longest} tokens and "
            "sliding-window attention is not implemented; pass max_seq_len <= sliding_window "
            "if no row will be longer"
        )
    return int(window)


def _stored_dtype(d: dict[str, Any]) -> str:
    stored = str(d.get("dtype") or d.get("torch_dtype") or "float32").removeprefix("torch.")
    return stored if stored in DTYPES else "float32"


def _check_family_biases(cfg: DecoderConfig, model_type: str) -> None:
    """Each HF family hard-codes its bias layout; refuse configs it cannot express."""
    biases = (cfg.attention_bias, cfg.resolved_attention_out_bias, cfg.mlp_bias)
    allowed = {
        "llama": {(False, False, False), (True, True, False), (False, False, True), (True,) * 3},
        "qwen2": {(True, False, False)},
        "mistral": {(False, False, False)},
    }[model_type]
    if biases not in allowed:
        raise ValueError(
            f"model_type {model_type!r} cannot express attention_bias={biases[0]}, "
            f"attention_out_bias={biases[1]}, mlp_bias={biases[2]} (Qwen2's layout is q/k/v "
            "biases only: use model_type='qwen2')"
        )
