"""Decoder hyperparameters.

One frozen dataclass describes every supported decoder family (Llama 2/3/3.1/3.2 including
Llama 3 RoPE scaling, Qwen2/2.5 with q/k/v biases, Mistral); `hf_config.py` maps HF configs onto
it. It stays free of JAX so configs, CLIs and the HF importer can build and check it without
touching an accelerator.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jdjudge.config.schema import ATTENTION_IMPLEMENTATIONS, DTYPES, REMAT_POLICIES

# RoPE variants implemented by `jdjudge.models.layers.rope_inv_freq`.
SUPPORTED_ROPE_TYPES = ("default", "llama3")
# Keys a llama3 `rope_scaling` dict must carry (HF names).
LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a Llama-style decoder.

    `dtype` is the compute dtype of matmuls; norms, softmax and the output head stay float32.
    `attention_bias` follows HF Llama (biases on q/k/v/o); Qwen2 has biases on q/k/v only, which
    is `attention_bias=True, attention_out_bias=False`.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    # HF-style dict, e.g. {"rope_type": "default"}; None means plain RoPE. Excluded from the
    # hash because dicts are unhashable and linen modules holding this config must hash.
    rope_scaling: dict[str, Any] | None = dataclasses.field(default=None, hash=False)
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool | None = None  # None: same as attention_bias.
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    # HF sliding-window attention is not implemented: a window is kept only as a guard, and the
    # decoder refuses rows longer than it (where HF would start masking differently).
    sliding_window: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    initializer_range: float = 0.02
    # Run the layers under nn.scan (params stacked as `layers/...` [num_layers, ...]): one
    # compiled layer body instead of num_layers copies, so compile time stays flat with depth.
    scan_layers: bool = False
    # Recompute layer activations in the backward pass: a name from REMAT_POLICIES or a bool.
    remat: bool | str = False
    # Attention implementation (ATTENTION_IMPLEMENTATIONS; see models.attention) and the block
    # of the blockwise/splash kernels (0: chosen for each row's length, attention.attend).
    attention: str = "auto"
    attention_block_size: int = 0
    # LoRA dropout on the adapted projections' inputs (training only; see layers.Projection).
    lora_dropout: float = 0.0
    # Columns of the untied lm_head kernel [D, head_columns]; None: all vocab_size. A judge
    # that trains only its n label columns runs with n here and label ids remapped into
    # [0, n) (`training.label_head`); export and judging use the whole head.
    head_columns: int | None = None

    @property
    def resolved_head_dim(self) -> int:
        """Per-head width; HF's default when `head_dim` is unset."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def resolved_attention_out_bias(self) -> bool:
        """Whether o_proj has a bias (HF Llama ties it to attention_bias; Qwen2 does not)."""
        if self.attention_out_bias is None:
            return self.attention_bias
        return self.attention_out_bias

    @property
    def rope_type(self) -> str:
        """RoPE variant name; HF configs spell the key `rope_type` (older ones `type`)."""
        if not self.rope_scaling:
            return "default"
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default")))

    @property
    def head_size(self) -> int:
        """Columns of the untied lm_head kernel: `head_columns`, else the whole vocabulary."""
        return self.vocab_size if self.head_columns is None else self.head_columns

    @property
    def remat_policy(self) -> str:
        """Normalized remat setting, one of REMAT_POLICIES."""
        if isinstance(self.remat, bool):
            return "full" if self.remat else "none"
        return str(self.remat)

    def validate(self) -> DecoderConfig:
        """Raise ValueError naming the offending field; returns self for chaining."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive int, got {value!r}")
        if self.head_dim is not None:
            if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int):
                raise ValueError(f"DecoderConfig.head_dim must be an int, got {self.head_dim!r}")
            if self.head_dim <= 0:
                raise ValueError(f"DecoderConfig.head_dim must be positive, got {self.head_dim}")
        elif self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"DecoderConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads}) when head_dim is unset"
            )
        if self.resolved_head_dim % 2 != 0:
            raise ValueError(
                f"DecoderConfig.head_dim must be even for RoPE, got {self.resolved_head_dim}"
            )
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"DecoderConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        for name in ("rope_theta", "rms_norm_eps"):
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(f"DecoderConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not float(self.initializer_range) >= 0.0:
            raise ValueError(
                f"DecoderConfig.initializer_range must be >= 0, got {self.initializer_range!r}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(
                    f"DecoderConfig.{name} must be one of {DTYPES}, got {getattr(self, name)!r}"
                )
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(
                f"DecoderConfig.rope_scaling must be a dict or None, got {self.rope_scaling!r}"
            )
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"DecoderConfig.rope_scaling type {self.rope_type!r} is not supported "
                f"(supported: {SUPPORTED_ROPE_TYPES})"
            )
        if self.rope_type == "llama3":
            _validate_llama3_scaling(self.rope_scaling or {})
        if self.sliding_window is not None and (
            isinstance(self.sliding_window, bool)
            or not isinstance(self.sliding_window, int)
            or self.sliding_window <= 0
        ):
            raise ValueError(
                f"DecoderConfig.sliding_window must be a positive int or None, "
                f"got {self.sliding_window!r}"
            )
        if self.head_columns is not None and (
            isinstance(self.head_columns, bool)
            or not isinstance(self.head_columns, int)
            or not 0 < self.head_columns <= self.vocab_size
            or self.tie_embeddings
        ):
            raise ValueError(
                "DecoderConfig.head_columns must be None or an int in [1, vocab_size] with an "
                f"untied head, got {self.head_columns!r}"
            )
        block = self.attention_block_size
        if self.attention not in ATTENTION_IMPLEMENTATIONS or not (block == 0 or block >= 8):
            raise ValueError(
                f"DecoderConfig.attention must be one of {ATTENTION_IMPLEMENTATIONS} with "
                f"attention_block_size 0 or >= 8, got {self.attention!r}, {block}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"DecoderConfig.remat must be a bool or one of {REMAT_POLICIES}, got {self.remat!r}"
            )
        return self

    @property
    def num_params(self) -> int:
        """Parameter count, for memory planning and logs (matches the param tree)."""
        d, hd = self.hidden_size, self.resolved_head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d
        if self.attention_bias:
            attn += q + 2 * kv
        if self.resolved_attention_out_bias:
            attn += d
        mlp = 3 * d * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + d
        per_layer = attn + mlp + 2 * d
        head = 0 if self.tie_embeddings else d * self.head_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head


def _validate_llama3_scaling(scaling: dict[str, Any]) -> None:
    """Llama 3 RoPE needs all four HF keys, positive, with high_freq_factor > low_freq_factor."""
    missing = [key for key in LLAMA3_ROPE_KEYS if key not in scaling]
    if missing:
        raise ValueError(f"DecoderConfig.rope_scaling (llama3) is missing {', '.join(missing)}")
    for key in LLAMA3_ROPE_KEYS:
        if not float(scaling[key]) > 0.0:
            raise ValueError(f"DecoderConfig.rope_scaling.{key} must be > 0, got {scaling[key]!r}")
    if not float(scaling["high_freq_factor"]) > float(scaling["low_freq_factor"]):
        raise ValueError(
            "DecoderConfig.rope_scaling.high_freq_factor must exceed low_freq_factor, got "
            f"{scaling['high_freq_factor']!r} <= {scaling['low_freq_factor']!r}"
        )
