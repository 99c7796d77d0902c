"""The pure training and evaluation steps: (state, batch, rng) -> (state, metrics).

A step takes its objective as a loss function ``loss_fn(model, params, batch, rngs)`` returning
``(loss, aux)`` (``judge_loss`` builds the judge's), so the step knows nothing of labels or
targets. Everything
here is a function of its arguments; ``jitted.build_steps`` jits these with shardings and
donates the state. The model is read only at the answer positions and only for the K label
tokens, so no [batch, sequence, vocab] logits exist anywhere in a step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdjudge.config.schema import ObjectiveConfig
from jdjudge.models.decoder import Decoder
from jdjudge.objective.losses import judge_objective, kl_divergence, label_log_probs
from jdjudge.training.state import ParamsFn, TrainState, full_params

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
# loss_fn(model, params, batch, rngs) -> (mean loss, {"sums": weighted sums,
# "nonfinite_items": ids}); rngs is {"dropout": key} in training (LoRA dropout), else None.
LossFn = Callable[[Decoder, Any, Batch, Any], tuple[jax.Array, dict[str, Any]]]


def judge_log_probs(
    model: Decoder,
    params: Any,
    batch: Batch,
    label_token_ids: np.ndarray,
    synonym_mask: np.ndarray,
    rngs: Mapping[str, jax.Array] | None = None,
) -> jax.Array:
    """log q_θ(k|x) per item, [items, K]: log-softmax over the K labels' (synonym-merged)
    next-token logits. Right-padded batches hold one item per row (answer_index [B]); packed
    batches several (answer_index [R, N]); either way items are flattened in row order."""
    token_logits = model.apply(
        {"params": params},
        batch["tokens"],
        batch["segment_ids"],
        batch["positions"],
        batch["answer_index"],
        jnp.asarray(label_token_ids),
        method=Decoder.judge_logits,
        rngs=dict(rngs or {}),
    )
    log_q = label_log_probs(token_logits, jnp.asarray(synonym_mask))
    return log_q.reshape(-1, log_q.shape[-1])


ITEM_KEYS = ("targets", "true_targets", "weights", "item_index")


def item_view(batch: Batch) -> dict[str, jax.Array]:
    """The per-item arrays of a batch flattened to [items, ...] (matching judge_log_probs)."""
    items = {}
    for key in ITEM_KEYS:
        if key in batch:
            value = batch[key]
            extra = 1 if key in ("targets", "true_targets") else 0
            items[key] = value.reshape((-1, *value.shape[value.ndim - extra :]))
    return items


def _weighted_sums(aux: Mapping[str, jax.Array], log_q: jax.Array, items: Batch) -> Metrics:
    """Per-item quantities summed with the item weights (0 for padding rows), so that
    evaluation can add batches of any fill and divide once at the end."""
    w = items["weights"]
    sums = {
        "loss": jnp.sum(w * aux["loss"]),
        "kl": jnp.sum(w * aux["kl"]),
        "kl_adversarial": jnp.sum(w * aux["kl_adversarial"]),
        "ce": jnp.sum(w * aux["ce"]),
        "accuracy": jnp.sum(w * aux["correct"]),
        "weight": jnp.sum(w),
    }
    sums.update(_cheap_sums(items["targets"], log_q, w))
    if "true_targets" in items:
        sums["kl_truth"] = jnp.sum(w * kl_divergence(items["true_targets"], log_q))
    return sums


def _cheap_sums(p: jax.Array, log_q: jax.Array, w: jax.Array) -> Metrics:
    """JS divergence, total variation and the Brier score against the majority: cheap to
    add to every evaluation pass (``jdjudge.evaluation.metrics`` defines them for reports)."""
    q = jnp.exp(log_q)
    log_m = jnp.log(0.5 * (p + q))  # > -inf: q > 0 wherever a label has a token
    js = 0.5 * kl_divergence(p, log_m) + 0.5 * jnp.sum(q * (log_q - log_m), axis=-1)
    onehot = jax.nn.one_hot(jnp.argmax(p, axis=-1), p.shape[-1], dtype=q.dtype)
    return {
        "js": jnp.sum(w * js),
        "tv": jnp.sum(w * 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)),
        "brier": jnp.sum(w * jnp.sum((q - onehot) ** 2, axis=-1)),
    }


def judge_loss(
    objective: ObjectiveConfig, label_token_ids: np.ndarray, synonym_mask: np.ndarray
) -> LossFn:
    """The judge's loss function: the objective on the K label tokens' distribution, with
    the weighted metric sums and the dataset indices of items whose loss is non-finite."""

    def loss_fn(
        model: Decoder, params: Any, batch: Batch, rngs: Any = None
    ) -> tuple[jax.Array, dict[str, Any]]:
        log_q = judge_log_probs(model, params, batch, label_token_ids, synonym_mask, rngs)
        items = item_view(batch)
        loss, aux = judge_objective(log_q, items["targets"], objective, weights=items["weights"])
        index = items.get("item_index", jnp.arange(log_q.shape[0]))
        bad = ~jnp.isfinite(aux["loss"]) & (items["weights"] > 0)
        return loss, {
            "sums": _weighted_sums(aux, log_q, items),
            "nonfinite_items": jnp.where(bad, index, -1),
        }

    return loss_fn


def finalize_means(sums: Mapping[str, Any]) -> dict[str, float]:
    """Divide weighted sums by the total weight (host side, after summing batches)."""
    total = float(sums["weight"])
    return {key: float(value) / max(total, 1e-12) for key, value in sums.items() if key != "weight"}


def finalize_in_graph(sums: Mapping[str, jax.Array]) -> Metrics:
    """Weighted means inside the jitted step (a training batch is its own unit)."""
    total = jnp.maximum(sums["weight"], 1e-12)
    return {key: value / total for key, value in sums.items() if key != "weight"}


def make_train_step(
    model: Decoder,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    params_fn: ParamsFn = full_params,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Build ``train_step(state, batch, rng, frozen=None) -> (state, metrics)``.

    Gradients are taken w.r.t. ``state.params`` only; ``frozen`` (the LoRA base) is a plain
    argument, so it gets neither gradient buffers nor optimizer state.
    """

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        def objective(trainable: Any) -> tuple[jax.Array, dict[str, Any]]:
            return loss_fn(model, params_fn(trainable, frozen, rng), batch, {"dropout": rng})

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)

        def update(_: None) -> tuple[Any, Any]:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        def keep(_: None) -> tuple[Any, Any]:
            return state.params, state.opt_state

        # Non-finite guard: a NaN/Inf loss or gradient leaves the state untouched, so a
        # poisoned batch can never reach the parameters (or a checkpoint). A cond, not a
        # leafwise select: both results of a select must exist at once, which defeats the
        # in-place (donated) update of every parameter and optimizer buffer.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.lax.cond(finite, update, keep, None)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = finalize_in_graph(aux["sums"])
        metrics["grad_norm"] = grad_norm
        metrics["finite"] = finite
        metrics["nonfinite_items"] = aux["nonfinite_items"]
        return new_state, metrics

    return train_step


def make_eval_step(
    model: Decoder, loss_fn: LossFn, params_fn: ParamsFn = full_params
) -> Callable[..., Metrics]:
    """Build ``eval_step(trainable, batch, frozen=None) -> weighted sums`` (sum over batches,
    then ``finalize_means``). No dropout at evaluation."""

    def eval_step(trainable: Any, batch: Batch, frozen: Any = None) -> Metrics:
        _, aux = loss_fn(model, params_fn(trainable, frozen, None), batch, None)
        return aux["sums"]

    return eval_step
