"""Model FLOPs of a train step, from the config alone: what an MFU estimate divides by.

Per real token of a row of length L (the row the attention is computed over), with
P = the matmul parameters (q, k, v, o, gate, up, down) applied at every token, A = the layers
whose attention runs over every query, and d_attn = heads · head_dim:

    forward      2·P + 4·A·L·d_attn             (matmuls: 2 FLOPs a weight; QKᵀ and PV)
    full FT      3 × forward                    (backward: activations and weights, 2× forward)
    LoRA         2 × forward + 6·P_lora          (backward through activations only, W frozen;
                                                 the adapters' own matmuls forward and back,
                                                 P_lora those applied at every token)

The judge reads K label rows of the output head at one position per item, so the head adds
nothing per token; embeddings are lookups. Unscanned, the last layer runs only its k and v
projections at every token (``Decoder.answer_hidden``): P leaves out its q, o and MLP and A is
layers − 1 (the per-answer work is left out, as the head is). Attention is counted over the
full row (what the einsum path computes), not the causal half. Peak FLOP/s are known for
accelerators only, so CPU runs report no MFU.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from jdjudge.models.config import DecoderConfig

# Dense bf16 peak FLOP/s per chip, by `device_kind` prefix (vendor figures, no sparsity).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def layer_matmul_params(cfg: DecoderConfig) -> int:
    """Weights of the projections in all layers (the matmuls that scale with tokens)."""
    d, hd = cfg.hidden_size, cfg.resolved_head_dim
    attn = d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)  # q, o; k, v
    mlp = 3 * d * cfg.intermediate_size
    return cfg.num_layers * (attn + mlp)


def answers_only_last_layer(cfg: DecoderConfig) -> bool:
    """Whether the last layer runs at the answer positions only (``Decoder.answer_hidden``)."""
    return not cfg.scan_layers


def token_matmul_params(cfg: DecoderConfig) -> int:
    """The projection weights applied at every token: all layers', less the last layer's q, o
    and MLP when it runs at the answer positions only."""
    if not answers_only_last_layer(cfg):
        return layer_matmul_params(cfg)
    d, hd = cfg.hidden_size, cfg.resolved_head_dim
    skipped = 2 * d * hd * cfg.num_heads + 3 * d * cfg.intermediate_size  # q, o; the MLP
    return layer_matmul_params(cfg) - skipped


def token_lora_params(cfg: DecoderConfig, adapters: Any) -> int:
    """Adapter weights applied at every token: all of them, less the last layer's q, o and
    MLP adapters when it runs at the answer positions only (unscanned layers)."""
    skipped = re.compile(
        rf"(?:^|/)layers_{cfg.num_layers - 1}/(?:self_attn/(?:q_proj|o_proj)|mlp/\w+)/"
    )
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if not (answers_only_last_layer(cfg) and skipped.search(name)):
            total += int(np.prod(leaf.shape, dtype=np.int64))
    return total


def train_flops_per_token(cfg: DecoderConfig, row_length: int, lora_params: int = 0) -> float:
    """Model FLOPs a train step spends per real token (see the module docstring);
    ``lora_params`` counts the adapters applied at every token (``token_lora_params``)."""
    d_attn = cfg.num_heads * cfg.resolved_head_dim
    attention_layers = cfg.num_layers - int(answers_only_last_layer(cfg))
    forward = 2.0 * token_matmul_params(cfg) + 4.0 * attention_layers * row_length * d_attn
    if lora_params:
        return 2.0 * forward + 6.0 * lora_params
    return 3.0 * forward


def peak_flops(device: jax.Device | None = None) -> float | None:
    """The chip's dense bf16 peak FLOP/s, or None when unknown (CPU, an unlisted chip)."""
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
