"""Llama-style decoder in flax.linen, with a label-only output head.

Training needs the next-token logits of K label tokens (S surface forms each) at one answer
position per item, so `judge_logits` gathers just those K*S columns of the output projection:
[B, L, V] logits are never built outside the `logits` method (tests, parity, debugging).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdjudge.models.config import DecoderConfig
from jdjudge.models.layers import (
    RMSNorm,
    compute_dtype,
    kernel_init,
    layer_class,
    param_dtype,
    rope_cos_sin,
)

Array = jax.Array


class LMHead(nn.Module):
    """Untied output projection [D, V] (or [D, head_columns]: a judge training only its label
    columns); a module only so the param path is `lm_head/kernel`."""

    config: DecoderConfig

    def setup(self) -> None:
        cfg = self.config
        self.kernel = self.param(
            "kernel", kernel_init(cfg), (cfg.hidden_size, cfg.head_size), param_dtype(cfg)
        )


class Decoder(nn.Module):
    """Decoder-only LM over packed rows.

    Inputs are `tokens`, `segment_ids` (0 = padding; packed items have distinct positive ids)
    and `positions` (index within the item, for RoPE), all int32 [B, L].
    """

    config: DecoderConfig

    def setup(self) -> None:
        cfg = self.config.validate()
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=kernel_init(cfg),
            dtype=compute_dtype(cfg),
            param_dtype=param_dtype(cfg),
        )
        layer = layer_class(cfg)
        if cfg.scan_layers:  # One module named `layers` whose params carry a leading layer axis.
            self.layers = layer(cfg)
        else:  # `layers_0`, `layers_1`, ...: one param subtree per layer, as in HF.
            self.layers = [layer(cfg) for _ in range(cfg.num_layers)]
        # The final norm feeds only the float32 head, so it returns float32.
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype=jnp.float32, param_dtype=param_dtype(cfg))
        if not cfg.tie_embeddings:
            self.lm_head = LMHead(cfg)

    def __call__(self, tokens: Array, segment_ids: Array, positions: Array) -> Array:
        """Final-norm hidden states, float32 [B, L, D]."""
        x, cos, sin = self._embed(tokens, positions)
        if self.config.scan_layers:
            x, _ = _scan_layers(self.config)(self.layers, x, cos, sin, segment_ids)
        else:
            for layer in self.layers:
                x = layer(x, cos, sin, segment_ids)
        return self.norm(x)

    def answer_hidden(
        self, tokens: Array, segment_ids: Array, positions: Array, answer_index: Array
    ) -> Array:
        """Final-norm hidden states at the answer positions only, float32 [B, N, D].

        The same numbers as ``self(...)`` gathered at ``answer_index`` [B, N], but the last
        layer runs its queries, output projection and MLP on the N answer positions, not the
        L of the row (its keys and values still cover the row): with 4 layers a quarter of
        the layers' work. Scanned layers (``scan_layers``: one ``nn.scan`` body for every
        layer) compute the whole last layer and gather."""
        if self.config.scan_layers:
            hidden = self(tokens, segment_ids, positions)
            return jnp.take_along_axis(hidden, answer_index[..., None], axis=1)
        x, cos, sin = self._embed(tokens, positions)
        *body, last = self.layers
        for layer in body:
            x = layer(x, cos, sin, segment_ids)
        return self.norm(last(x, cos, sin, segment_ids, answer_index))

    def _embed(self, tokens: Array, positions: Array) -> tuple[Array, Array, Array]:
        """Token embeddings [B, L, D] and the RoPE tables every layer shares."""
        if self.is_initializing() and not self.config.tie_embeddings:
            _ = self.lm_head.kernel  # Create the head's params in `init` too.
        cfg = self.config
        window = cfg.sliding_window
        if window is not None and tokens.shape[-1] > window:
            raise ValueError(
                f"rows of length {tokens.shape[-1]} exceed sliding_window={window}: HF would "
                "apply sliding-window attention there, which this decoder does not implement"
            )
        return (self.embed_tokens(tokens), *rope_cos_sin(cfg, positions))

    def output_columns(self, token_ids: Array | None = None) -> Array:
        """Output-projection columns [D, ...] for `token_ids` (all V columns when None).

        Ids are clipped into [0, V): out-of-range ids (e.g. synonym padding) must be masked by
        the caller, as a jitted gather cannot raise.
        """
        cfg = self.config
        if cfg.tie_embeddings:
            table = self.embed_tokens.embedding  # [V, D]
            if token_ids is None:
                return table.T
            ids = jnp.clip(token_ids, 0, cfg.vocab_size - 1)
            return jnp.moveaxis(jnp.take(table, ids, axis=0), -1, 0)
        kernel = self.lm_head.kernel  # [D, V]
        if token_ids is None:
            return kernel
        return jnp.take(kernel, jnp.clip(token_ids, 0, cfg.vocab_size - 1), axis=1)

    def label_logits(self, hidden_at_answer: Array, label_token_ids: Array) -> Array:
        """Logits of only the label tokens: [..., D] x int[K, S] -> float32 [..., K, S].

        The matmul is B*K*S*D, so it runs in float32 at no measurable cost.
        """
        k, s = label_token_ids.shape
        cols = self.output_columns(label_token_ids.reshape(-1)).astype(jnp.float32)
        logits = hidden_at_answer.astype(jnp.float32) @ cols
        return logits.reshape(*hidden_at_answer.shape[:-1], k, s)

    def judge_logits(
        self,
        tokens: Array,
        segment_ids: Array,
        positions: Array,
        answer_index: Array,
        label_token_ids: Array,
    ) -> Array:
        """Label logits at the answer positions: float32 [B, K, S] (or [B, N, K, S] when
        `answer_index` is [B, N], for several packed items per row)."""
        idx = answer_index.astype(jnp.int32)
        squeeze = idx.ndim == 1
        if squeeze:
            idx = idx[:, None]
        picked = self.answer_hidden(tokens, segment_ids, positions, idx)  # [B, N, D]
        if squeeze:
            picked = picked[:, 0]
        return self.label_logits(picked, label_token_ids)

    def logits(self, tokens: Array, segment_ids: Array, positions: Array) -> Array:
        """Full-vocabulary float32 logits [B, L, V]: for tests, parity and debugging only."""
        hidden = self(tokens, segment_ids, positions)
        return hidden @ self.output_columns().astype(jnp.float32)


def _layer_step(layer: nn.Module, x: Array, cos: Array, sin: Array, segment_ids: Array):
    """Scan body: the hidden state is the carry; there are no per-step outputs."""
    return layer(x, cos, sin, segment_ids), None


def _scan_layers(config: DecoderConfig):
    """nn.scan over one layer module: params stacked on axis 0, RoPE tables and segments shared."""
    return nn.scan(
        _layer_step,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},  # a LoRA dropout mask per layer
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=config.num_layers,
    )


def stack_layers(params: dict, num_layers: int) -> dict:
    """Unrolled params (`layers_0`, ...) -> the scanned layout (`layers` with a layer axis)."""
    per_layer = [params[f"layers_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)}


def unstack_layers(params: dict) -> dict:
    """Scanned params (`layers` with a layer axis) -> the unrolled layout (`layers_0`, ...)."""
    stacked = params["layers"]
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        rest[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return rest


def init_params(config: DecoderConfig, rng: Array, seq_len: int = 8) -> dict:
    """Initialize a full param tree (wrap in jax.eval_shape for shapes only)."""
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    return Decoder(config).init(rng, dummy, jnp.ones_like(dummy), dummy)["params"]


def abstract_params(config: DecoderConfig) -> dict:
    """The param tree as ShapeDtypeStructs (no memory, no compute): for shardings and import."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


# Anchored regexes over "/"-joined param paths (match with re.search or re.fullmatch); every
# param matches exactly one. Specs name mesh axes "fsdp" and "tensor"; the (optional) leading
# path wildcard lets the same rules apply under wrappers (e.g. a LoRA or model/ prefix).
_ANY = r"^(?:.*/)?"


def partition_rules() -> list[tuple[str, tuple]]:
    """Logical PartitionSpec tuples for every decoder param (Megatron-style tensor split).

    Layer params appear unrolled (`layers_3/...`) or stacked by nn.scan (`layers/...`, with a
    leading layer axis that stays unsplit); each rule names exactly one of the two layouts.
    """
    top = [
        (_ANY + r"embed_tokens/embedding$", ("tensor", "fsdp")),
        (_ANY + r"lm_head/kernel$", ("fsdp", "tensor")),
        (_ANY + r"norm/scale$", (None,)),
    ]
    unrolled = [(_ANY + r"layers_\d+/" + pattern, spec) for pattern, spec in _LAYER_RULES]
    stacked = [(_ANY + r"layers/" + pattern, (None, *spec)) for pattern, spec in _LAYER_RULES]
    return top + unrolled + stacked


# Per-layer param rules, relative to the layer's subtree.
_LAYER_RULES: list[tuple[str, tuple]] = [
    (r"self_attn/(?:q_proj|k_proj|v_proj)/kernel$", ("fsdp", "tensor")),
    (r"self_attn/(?:q_proj|k_proj|v_proj)/bias$", ("tensor",)),
    (r"self_attn/o_proj/kernel$", ("tensor", "fsdp")),
    (r"self_attn/o_proj/bias$", (None,)),
    (r"mlp/(?:gate_proj|up_proj)/kernel$", ("fsdp", "tensor")),
    (r"mlp/(?:gate_proj|up_proj)/bias$", ("tensor",)),
    (r"mlp/down_proj/kernel$", ("tensor", "fsdp")),
    (r"mlp/down_proj/bias$", (None,)),
    (r"(?:input_layernorm|post_attention_layernorm)/scale$", (None,)),
]
