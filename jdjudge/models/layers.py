"""Building blocks of the Llama-style decoder.

Numerics follow HF Llama so parity tests can demand ~1e-5 agreement: RMSNorm and softmax run
in float32, matmuls in the configured compute dtype. Module and param names mirror the HF
state dict (`self_attn/q_proj/kernel` <-> `self_attn.q_proj.weight`) so import is mechanical.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdjudge.models.attention import attend, gathered_query_attention
from jdjudge.models.config import DecoderConfig

Array = jax.Array


def compute_dtype(config: DecoderConfig) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def param_dtype(config: DecoderConfig) -> jnp.dtype:
    return jnp.dtype(config.param_dtype)


def kernel_init(config: DecoderConfig) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=config.initializer_range)


class Projection(nn.Dense):
    """A linear projection (``nn.Dense``: same params, same numerics) that applies a LoRA
    adapter where the param tree carries one beside its kernel (``lora_a`` [in, r],
    ``lora_b`` [r, out], the scale already folded into B by ``lora.attach``):
    y = x·W + (dropout(x)·A)·B, computed as PEFT's unmerged forward does — in the adapters'
    float32, added to the base output and cast back. The frozen W is never copied or merged,
    so its gradient is never formed. Dropout is per element of x (PEFT's), and only when the
    caller passes a ``dropout`` rng (training).

    The tokens are flattened to one axis first, [B, L, in] -> [B·L, in]: the weight and
    adapter gradients then contract over one axis instead of two, which XLA:CPU otherwise
    serves by writing the output gradient transposed, [out, B·L], before the matmul
    (measured: a LoRA SwiGLU block's gradient at hidden 512 takes 315 ms flat against 539 ms
    on [8, 512, ·] inputs)."""

    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        flat = inputs.reshape(-1, inputs.shape[-1])
        y = super().__call__(flat)
        if self.has_variable("params", "lora_a"):
            y = self._add_adapter(flat, y)
        return y.reshape(*inputs.shape[:-1], y.shape[-1])

    def _add_adapter(self, inputs: Array, y: Array) -> Array:
        a = self.get_variable("params", "lora_a")
        b = self.get_variable("params", "lora_b")
        x = inputs.astype(a.dtype)
        if self.lora_dropout > 0.0 and self.has_rng("dropout"):
            keep = 1.0 - self.lora_dropout
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
            x = jnp.where(mask, x / keep, jnp.zeros_like(x))
        delta = (x @ a) @ b
        return (y.astype(delta.dtype) + delta).astype(y.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm, always computed in float32 (bf16 variance loses too much)."""

    eps: float
    dtype: jnp.dtype = jnp.float32  # Output dtype.
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def rope_inv_freq(config: DecoderConfig) -> Array:
    """Inverse RoPE frequencies [head_dim // 2], float32 op for op as HF computes them."""
    d = config.resolved_head_dim
    exponents = jnp.arange(0, d, 2, dtype=jnp.float32) / d
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_type == "default":
        return inv_freq
    if config.rope_type == "llama3":
        return llama3_inv_freq(inv_freq, config.rope_scaling or {})
    raise ValueError(f"unsupported rope_scaling type {config.rope_type!r}")


def llama3_inv_freq(inv_freq: Array, scaling: dict) -> Array:
    """Llama 3.1 frequency rescaling: long wavelengths slowed by `factor`, short ones kept, a
    linear blend (in 1/wavelength) between; same float32 operation order as transformers."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_cos_sin(
    config: DecoderConfig, positions: Array, gather_tables: bool | None = None
) -> tuple[Array, Array]:
    """cos/sin [B, L, head_dim] in float32 at ``positions``, shared by every layer.

    With ``gather_tables`` (default: on the CPU backend) the tables for positions 0..L-1 are
    evaluated when the step is traced and enter the program as constants, and the step only
    gathers their rows: computed in the step, XLA:CPU fuses the cos and sin into every
    consumer and evaluates them again for each layer and head, forward and backward (a train
    step measured 1–13% faster without that, docs/performance.md). Positions must lie in
    [0, L), as an item's do in its row; one at L or beyond gives NaN, not a clipped angle."""
    if gather_tables is None:
        gather_tables = jax.default_backend() == "cpu"
    if not gather_tables:
        return _cos_sin(positions.astype(jnp.float32), config)
    with jax.ensure_compile_time_eval():
        cos_table, sin_table = _cos_sin(jnp.arange(positions.shape[-1], dtype=jnp.float32), config)
    return (jnp.take(cos_table, positions, axis=0, mode="fill"),
            jnp.take(sin_table, positions, axis=0, mode="fill"))  # fmt: skip


def _cos_sin(positions: Array, config: DecoderConfig) -> tuple[Array, Array]:
    freqs = positions[..., None] * rope_inv_freq(config)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """HF's rotate-half RoPE on x [B, L, H, Dh]; done in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def gather_positions(x: Array, index: Array) -> Array:
    """x [B, L, ...] at row positions ``index`` int [B, N] -> [B, N, ...]."""
    index = index.reshape(*index.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, index, axis=1)


class Attention(nn.Module):
    """Grouped-query attention; KV heads are shared by query groups without materializing the
    repeat (query heads are reshaped to [kv_heads, group] instead, same head order as HF). The
    scores themselves are computed by ``models.attention`` (``config.attention``).

    With ``query_index`` [B, N], keys and values still come from every position but queries
    (and so the output, [B, N, D]) only from those N: what the last layer of a judge needs."""

    config: DecoderConfig

    @nn.compact
    def __call__(
        self, x: Array, cos: Array, sin: Array, segment_ids: Array, query_index: Array | None
    ) -> Array:
        cfg = self.config
        hd, nh, nkv = cfg.resolved_head_dim, cfg.num_heads, cfg.num_kv_heads
        dense = dict(
            dtype=compute_dtype(cfg), param_dtype=param_dtype(cfg), kernel_init=kernel_init(cfg),
            lora_dropout=cfg.lora_dropout,
        )  # fmt: skip
        b, length, _ = x.shape
        q_in, q_cos, q_sin = x, cos, sin
        if query_index is not None:
            q_in, q_cos, q_sin = (gather_positions(a, query_index) for a in (x, cos, sin))
        queries = q_in.shape[1]
        q = Projection(nh * hd, use_bias=cfg.attention_bias, name="q_proj", **dense)(q_in)
        k = Projection(nkv * hd, use_bias=cfg.attention_bias, name="k_proj", **dense)(x)
        v = Projection(nkv * hd, use_bias=cfg.attention_bias, name="v_proj", **dense)(x)
        q = apply_rope(q.reshape(b, queries, nh, hd), q_cos, q_sin)
        k = apply_rope(k.reshape(b, length, nkv, hd), cos, sin)
        v = v.reshape(b, length, nkv, hd)
        q = q.reshape(b, queries, nkv, nh // nkv, hd)
        if query_index is None:
            out = attend(q, k, v, segment_ids, cfg.attention, cfg.attention_block_size)
        else:
            out = gathered_query_attention(q, k, v, segment_ids, query_index)
        out = out.reshape(b, queries, nh * hd)
        return Projection(
            cfg.hidden_size, use_bias=cfg.resolved_attention_out_bias, name="o_proj", **dense
        )(out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dense = dict(
            use_bias=cfg.mlp_bias,
            dtype=compute_dtype(cfg),
            param_dtype=param_dtype(cfg),
            kernel_init=kernel_init(cfg),
            lora_dropout=cfg.lora_dropout,
        )
        gate = Projection(cfg.intermediate_size, name="gate_proj", **dense)(x)
        up = Projection(cfg.intermediate_size, name="up_proj", **dense)(x)
        return Projection(cfg.hidden_size, name="down_proj", **dense)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm residual block; its own module so nn.scan / nn.remat can wrap it.

    ``query_index`` [B, N] (optional) computes the block's output only at those positions,
    [B, N, D]: attention reads keys and values from the whole row, everything after it (the
    output projection, the residuals, the MLP) runs on N positions instead of L."""

    config: DecoderConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        segment_ids: Array,
        query_index: Array | None = None,
    ) -> Array:
        cfg = self.config
        norm = dict(eps=cfg.rms_norm_eps, dtype=compute_dtype(cfg), param_dtype=param_dtype(cfg))
        h = RMSNorm(name="input_layernorm", **norm)(x)
        attended = Attention(cfg, name="self_attn")(h, cos, sin, segment_ids, query_index)
        if query_index is not None:
            x = gather_positions(x, query_index)
        x = x + attended
        h = RMSNorm(name="post_attention_layernorm", **norm)(x)
        return x + MLP(cfg, name="mlp")(h)


# Saveable-residual policies for nn.remat; "full" saves nothing (recompute the whole layer).
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_class(config: DecoderConfig) -> type[nn.Module]:
    """DecoderLayer, wrapped in nn.remat when the config asks for activation checkpointing.

    Inside nn.scan the CSE barrier is unnecessary (the loop already prevents it), so it is only
    kept for the unrolled layout.
    """
    policy = config.remat_policy
    if policy == "none":
        return DecoderLayer
    return nn.remat(
        DecoderLayer, policy=_REMAT_POLICIES[policy], prevent_cse=not config.scan_layers
    )
