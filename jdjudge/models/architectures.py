"""The HF ``config.json`` of the paper's models, for planning without the Hub.

``python -m jdjudge.plan`` needs a model's architecture before anything is downloaded, and a
machine that plans (a laptop, a CI runner) often cannot reach the Hub at all. These dicts are
the published ``config.json`` contents of the four checkpoints the paper fine-tunes (only the
keys ``hf_config.decoder_config_from_hf`` reads, plus the identifying ones); a planner uses
one only when the real file is neither a local directory nor in the Hugging Face cache, and
says so. Training never reads them: it always loads the checkpoint's own config.json.
"""

from __future__ import annotations

import copy
from typing import Any

_LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "max_position_embeddings": 131072,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

_QWEN_25_7B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 131072,
    "sliding_window": 131072,
    "use_sliding_window": False,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}

# Hub id -> config.json. The instruct checkpoints share their base's architecture; only the
# end-of-turn tokens (and Qwen's advertised context) differ.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": _LLAMA_31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": {**_LLAMA_31_8B, "eos_token_id": [128001, 128008, 128009]},
    "Qwen/Qwen2.5-7B": _QWEN_25_7B,
    "Qwen/Qwen2.5-7B-Instruct": {
        **_QWEN_25_7B,
        "max_position_embeddings": 32768,
        "eos_token_id": 151645,
    },
}


def known_hf_config(hub_id: str) -> dict[str, Any] | None:
    """A copy of ``hub_id``'s config.json from the table, or None for a model not in it."""
    config = KNOWN_MODELS.get(hub_id)
    return None if config is None else copy.deepcopy(config)
