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
# (trainable, frozen, rng or None) -> the model's full parameters. Full fine-tuning trains the
# parameters themselves; LoRA trains adapters merged into a frozen base inside the step.
ParamsFn = Callable[[Any, Any, jax.Array | None], Any]


def full_params(trainable: Any, frozen: Any, rng: jax.Array | None) -> Any:
    """Full fine-tuning: the trainable tree is the model."""
    del frozen, rng
    return trainable


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. A resume needs exactly this (plus the data order, which is a
    pure function of (seed, step))."""

    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array  # updates skipped by the non-finite guard, over the whole run


def init_params(model: Decoder, rng: jax.Array, seq_len: int) -> Any:
    """The model's parameters from shapes only; call under ``jax.jit(out_shardings=...)`` so
    every parameter is created directly in its sharding, never whole on one device."""
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(rng, dummy, jnp.ones_like(dummy), dummy)["params"]


def new_train_state(trainable: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0 for the trainable tree (full parameters, or LoRA adapters)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero, params=trainable, opt_state=optimizer.init(trainable), skipped=zero
    )


def judge_log_probs(
    model: Decoder,
    params: Any,
    batch: Batch,
    label_token_ids: np.ndarray,
    synonym_mask: np.ndarray,
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
    if "true_targets" in items:
        sums["kl_truth"] = jnp.sum(w * kl_divergence(items["true_targets"], log_q))
    return sums


def finalize_means(sums: Mapping[str, Any]) -> dict[str, float]:
    """Divide weighted sums by the total weight (host side, after summing batches)."""
    total = float(sums["weight"])
    return {key: float(value) / max(total, 1e-12) for key, value in sums.items() if key != "weight"}


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``pred`` else ``old``, leaf by leaf (no host round trip)."""
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def make_train_step(
    model: Decoder,
    optimizer: optax.GradientTransformation,
    objective: ObjectiveConfig,
    label_token_ids: np.ndarray,
    synonym_mask: np.ndarray,
    params_fn: ParamsFn = full_params,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Build ``train_step(state, batch, rng, frozen=None) -> (state, metrics)``.

    Gradients are taken w.r.t. ``state.params`` only; ``frozen`` (the LoRA base) is a plain
    argument, so it gets neither gradient buffers nor optimizer state.
    """

    def loss_fn(
        trainable: Any, frozen: Any, batch: Batch, items: Batch, rng: jax.Array
    ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        params = params_fn(trainable, frozen, rng)
        log_q = judge_log_probs(model, params, batch, label_token_ids, synonym_mask)
        loss, aux = judge_objective(log_q, items["targets"], objective, weights=items["weights"])
        return loss, (aux, log_q)

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        items = item_view(batch)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (aux, log_q)), grads = grad_fn(state.params, frozen, batch, items, rng)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Non-finite guard: a NaN/Inf loss or gradient leaves the state untouched, so a
        # poisoned batch can never reach the parameters (or a checkpoint).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = TrainState(
            step=state.step + 1,
            params=_select(finite, params, state.params),
            opt_state=_select(finite, opt_state, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = finalize_in_graph(_weighted_sums(aux, log_q, items))
        metrics["grad_norm"] = grad_norm
        metrics["finite"] = finite
        # Dataset indices of the items whose loss is non-finite (−1 elsewhere), for the error.
        index = items.get("item_index", jnp.arange(log_q.shape[0]))
        bad = ~jnp.isfinite(aux["loss"]) & (items["weights"] > 0)
        metrics["nonfinite_items"] = jnp.where(bad, index, -1)
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
    params_fn: ParamsFn = full_params,
) -> Callable[..., Metrics]:
    """Build ``eval_step(trainable, batch, frozen=None) -> weighted sums`` (sum over batches,
    then ``finalize_means``). No dropout at evaluation."""

    def eval_step(trainable: Any, batch: Batch, frozen: Any = None) -> Metrics:
        params = params_fn(trainable, frozen, None)
        log_q = judge_log_probs(model, params, batch, label_token_ids, synonym_mask)
        items = item_view(batch)
        _, aux = judge_objective(log_q, items["targets"], objective, weights=items["weights"])
        return _weighted_sums(aux, log_q, items)

    return eval_step
