"""The pure training and evaluation steps: (state, batch, rng) -> (state, metrics).

Everything here is a function of its arguments; ``train.py`` jits these with shardings and
donates the state. The model is read only at the answer positions and only for the K label
tokens, so no [batch, sequence, vocab] logits exist anywhere in a step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdjudge.losses import ObjectiveConfig, judge_objective, kl_divergence, label_log_probs
from jdjudge.models.decoder import Decoder

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. A resume needs exactly this (plus the data order, which is a
    pure function of (seed, step))."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(
    model: Decoder, optimizer: optax.GradientTransformation, rng: jax.Array, seq_len: int
) -> TrainState:
    """Initialize from shapes only; call under ``jax.jit(out_shardings=...)`` so every
    parameter is created directly in its sharding, never whole on one device."""
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init(rng, dummy, jnp.ones_like(dummy), dummy)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
    )


def judge_log_probs(
    model: Decoder,
    params: Any,
    batch: Batch,
    label_token_ids: np.ndarray,
    synonym_mask: np.ndarray,
) -> jax.Array:
    """log q_θ(k|x): log-softmax over the K labels' (synonym-merged) next-token logits."""
    token_logits = model.apply(
        {"params": params},
        batch["tokens"],
        batch["segment_ids"],
        batch["positions"],
        batch["answer_index"],
        jnp.asarray(label_token_ids),
        method=Decoder.judge_logits,
    )
    return label_log_probs(token_logits, jnp.asarray(synonym_mask))


def _weighted_sums(aux: Mapping[str, jax.Array], log_q: jax.Array, batch: Batch) -> Metrics:
    """Per-item quantities summed with the item weights (0 for padding rows), so that
    evaluation can add batches of any fill and divide once at the end."""
    w = batch["weights"]
    sums = {
        "loss": jnp.sum(w * aux["loss"]),
        "kl": jnp.sum(w * aux["kl"]),
        "kl_adversarial": jnp.sum(w * aux["kl_adversarial"]),
        "ce": jnp.sum(w * aux["ce"]),
        "accuracy": jnp.sum(w * aux["correct"]),
        "weight": jnp.sum(w),
    }
    if "true_targets" in batch:
        sums["kl_truth"] = jnp.sum(w * kl_divergence(batch["true_targets"], log_q))
    return sums


def finalize_means(sums: Mapping[str, Any]) -> dict[str, float]:
    """Divide weighted sums by the total weight (host side, after summing batches)."""
    total = float(sums["weight"])
    return {key: float(value) / max(total, 1e-12) for key, value in sums.items() if key != "weight"}


def make_train_step(
    model: Decoder,
    optimizer: optax.GradientTransformation,
    objective: ObjectiveConfig,
    label_token_ids: np.ndarray,
    synonym_mask: np.ndarray,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Build ``train_step(state, batch, rng) -> (state, metrics)`` for one model/objective."""

    def loss_fn(params: Any, batch: Batch) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        log_q = judge_log_probs(model, params, batch, label_token_ids, synonym_mask)
        loss, aux = judge_objective(log_q, batch["targets"], objective, weights=batch["weights"])
        return loss, (aux, log_q)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        del rng  # no stochastic layers yet; kept in the signature for dropout/LoRA dropout
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (aux, log_q)), grads = grad_fn(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = finalize_in_graph(_weighted_sums(aux, log_q, batch))
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def finalize_in_graph(sums: Mapping[str, jax.Array]) -> Metrics:
    """Weighted means inside the jitted step (a training batch is its own unit)."""
    total = jnp.maximum(sums["weight"], 1e-12)
    return {key: value / total for key, value in sums.items() if key != "weight"}


def make_eval_step(
    model: Decoder,
    objective: ObjectiveConfig,
    label_token_ids: np.ndarray,
    synonym_mask: np.ndarray,
) -> Callable[[Any, Batch], Metrics]:
    """Build ``eval_step(params, batch) -> weighted sums`` (sum over batches, then
    ``finalize_means``)."""

    def eval_step(params: Any, batch: Batch) -> Metrics:
        log_q = judge_log_probs(model, params, batch, label_token_ids, synonym_mask)
        _, aux = judge_objective(log_q, batch["targets"], objective, weights=batch["weights"])
        return _weighted_sums(aux, log_q, batch)

    return eval_step
