"""Config → typed objects: the one place where ml_collections keys meet the code's dataclasses."""

from __future__ import annotations

from ml_collections import ConfigDict

from jdjudge.losses import ObjectiveConfig
from jdjudge.models.config import DecoderConfig
from jdjudge.models.lora import LoraConfig


def objective_config(objective: ConfigDict) -> ObjectiveConfig:
    adv = objective.adversarial
    return ObjectiveConfig(
        alpha=float(objective.alpha),
        epsilon=float(adv.epsilon),
        adversarial_steps=int(adv.steps),
        step_size=float(adv.step_size),
        ball=str(adv.ball),
        solver=str(adv.solver),
    )


def decoder_config(model: ConfigDict, vocab_size: int) -> DecoderConfig:
    """The decoder for ``config.model``; the vocabulary comes from the tokenizer."""
    return DecoderConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(model.hidden_size),
        intermediate_size=int(model.intermediate_size),
        num_layers=int(model.num_layers),
        num_heads=int(model.num_heads),
        num_kv_heads=int(model.num_kv_heads),
        head_dim=None if model.head_dim is None else int(model.head_dim),
        rope_theta=float(model.rope_theta),
        rms_norm_eps=float(model.rms_norm_eps),
        tie_embeddings=bool(model.tie_embeddings),
        dtype=str(model.dtype),
        param_dtype=str(model.param_dtype),
        initializer_range=float(model.initializer_range),
        scan_layers=bool(model.scan_layers),
        remat=str(model.remat),
    )


def lora_config(lora: ConfigDict) -> LoraConfig | None:
    """LoRA settings, or None for full fine-tuning (``lora.rank = 0``)."""
    if int(lora.rank) == 0:
        return None
    return LoraConfig(
        rank=int(lora.rank),
        alpha=float(lora.alpha),
        dropout=float(lora.dropout),
        target_modules=tuple(lora.target_modules),
    ).validate()
