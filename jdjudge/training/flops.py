"""Model FLOPs of a train step, from the config alone: what an MFU estimate divides by.

Per real token of a row of length L (the row the attention is computed over), with
P = the layers' matmul parameters (q, k, v, o, gate, up, down) and d_attn = heads · head_dim:

    forward      2·P + 4·layers·L·d_attn        (matmuls: 2 FLOPs a weight; QKᵀ and PV)
    full FT      3 × forward                    (backward: activations and weights, 2× forward)
    LoRA         2 × forward + 6·P_lora          (backward through activations only, W frozen;
                                                 the adapters' own matmuls forward and back)

The judge reads K label rows of the output head at one position per item, so the head adds
nothing per token; embeddings are lookups. Attention is counted over the full row (what the
einsum path computes), not the causal half. Peak FLOP/s are known for accelerators only, so
CPU runs report no MFU.
"""

from __future__ import annotations

import jax

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


def train_flops_per_token(cfg: DecoderConfig, row_length: int, lora_params: int = 0) -> float:
    """Model FLOPs a train step spends per real token (see the module docstring)."""
    d_attn = cfg.num_heads * cfg.resolved_head_dim
    forward = 2.0 * layer_matmul_params(cfg) + 4.0 * cfg.num_layers * row_length * d_attn
    if lora_params:
        return 2.0 * forward + 6.0 * lora_params
    return 3.0 * forward


def peak_flops(device: jax.Device | None = None) -> float | None:
    """The chip's dense bf16 peak FLOP/s, or None when unknown (CPU, an unlisted chip)."""
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
