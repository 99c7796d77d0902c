"""The distributional judge objective (DESIGN.md §2).

L = α · KL(p̃ ‖ q) + (1 − α) · CE(r, q), where q is the judge's distribution over the K labels,
p the human distribution, r its majority label, and p̃ = p or an adversarial target near p.
All functions are pure JAX, batched over leading axes, and finite in value and gradient for
one-hot targets, zeros in p, and extreme logits.
"""

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdjudge.config.fields import validate
from jdjudge.config.schema import ObjectiveConfig
from jdjudge.objective.adversarial import adversarial_target


def label_log_probs(token_logits: ArrayLike, synonym_mask: ArrayLike) -> Array:
    """log q over K labels from the logits of each label's surface tokens.

    ``token_logits`` [..., K, S] holds up to S token logits per label and ``synonym_mask``
    [K, S] marks the real ones: synonyms' probabilities add (a masked log-sum-exp over S),
    then a log-softmax over K normalizes. Masked slots may hold anything (even ±inf): they
    get neither value nor gradient. A label without any token gets log q = −inf.
    """
    logits = jnp.asarray(token_logits)
    mask = jnp.broadcast_to(jnp.asarray(synonym_mask, dtype=bool), logits.shape)
    has_token = jnp.any(mask, axis=-1)
    # Double-where: masked slots never reach exp/log, so their gradients stay exactly 0.
    top = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    top = jax.lax.stop_gradient(jnp.where(has_token[..., None], top, 0.0))
    shifted = jnp.where(mask, logits - top, 0.0)
    total = jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1)
    merged = jnp.log(jnp.where(has_token, total, 1.0)) + top[..., 0]
    merged = jnp.where(has_token, merged, -jnp.inf)
    return jax.nn.log_softmax(merged, axis=-1)


def kl_divergence(p: ArrayLike, log_q: ArrayLike) -> Array:
    """KL(p ‖ q) = Σ p (log p − log q) over the last axis, with 0 · log 0 = 0.

    Terms with p = 0 are excluded through a safe log, so neither they nor −inf entries of
    log q produce NaN in value or gradient.
    """
    p = jnp.asarray(p)
    log_q = jnp.asarray(log_q)
    pos = p > 0
    safe_p = jnp.where(pos, p, 1.0)
    safe_log_q = jnp.where(pos, log_q, 0.0)
    return jnp.sum(jnp.where(pos, p * (jnp.log(safe_p) - safe_log_q), 0.0), axis=-1)


def majority_label(p: ArrayLike) -> Array:
    """argmax_k p_k; ties go to the lowest index (jnp.argmax returns the first maximum)."""
    return jnp.argmax(jnp.asarray(p), axis=-1)


def cross_entropy(labels: ArrayLike, log_q: ArrayLike) -> Array:
    """−log q[label], batched over leading axes."""
    labels = jnp.asarray(labels)
    picked = jnp.take_along_axis(jnp.asarray(log_q), labels[..., None], axis=-1)
    return -picked[..., 0]


def _weighted_mean(values: Array, weights: Array) -> Array:
    """Σ w·v / Σ w, 0 when all weights are 0; padded items (w = 0) cannot leak NaN."""
    total = jnp.sum(weights)
    kept = jnp.where(weights > 0, values, 0.0)
    return jnp.where(total > 0, jnp.sum(weights * kept) / jnp.where(total > 0, total, 1.0), 0.0)


def judge_objective(
    log_q: ArrayLike,
    p: ArrayLike,
    cfg: ObjectiveConfig,
    weights: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Weighted mean over items of α·KL(p̃ ‖ q) + (1 − α)·CE(r, q), plus per-item metrics.

    ``log_q`` and ``p`` are [B, K]; ``weights`` [B] (0 marks padding; default all 1). The
    majority r comes from the clean p. p̃ is an adversarial target (held constant, so the
    gradient is Danskin's) when ε > 0 and α > 0, else p. With α = 0 the KL term is left out
    of the loss entirely. aux holds per-item "loss", "kl" (clean), "kl_adversarial", "ce"
    and "correct" (argmax q equals the majority label).
    """
    validate(cfg)
    log_q = jnp.asarray(log_q)
    p = jnp.asarray(p, dtype=log_q.dtype)
    if weights is None:
        weights = jnp.ones(p.shape[:-1], dtype=log_q.dtype)
    weights = jnp.asarray(weights, dtype=log_q.dtype)
    if log_q.shape != p.shape or weights.shape != p.shape[:-1]:
        raise ValueError(
            f"judge_objective needs log_q and p of one shape [..., K] and weights [...]; got "
            f"log_q {log_q.shape}, p {p.shape}, weights {weights.shape}"
        )

    majority = majority_label(p)
    ce = cross_entropy(majority, log_q)
    kl_clean = kl_divergence(p, log_q)
    if cfg.is_adversarial:
        adv = cfg.adversarial
        target = adversarial_target(
            p,
            log_q,
            epsilon=adv.epsilon,
            steps=adv.steps,
            step_size=adv.step_size,
            ball=adv.ball,
            solver=adv.solver,
        )
        kl_target = kl_divergence(target, log_q)
    else:
        kl_target = kl_clean
    if cfg.alpha == 0:
        per_item = ce
    elif cfg.alpha == 1:
        per_item = kl_target
    else:
        per_item = cfg.alpha * kl_target + (1.0 - cfg.alpha) * ce
    # A non-finite target must surface as a non-finite loss (for the non-finite guard), not be
    # read as zeros by the safe logs or sanitized by a projection into an invented target.
    per_item = jnp.where(jnp.all(jnp.isfinite(p), axis=-1), per_item, jnp.nan)

    aux = {
        "loss": per_item,
        "kl": jax.lax.stop_gradient(kl_clean),
        "kl_adversarial": jax.lax.stop_gradient(kl_target),
        "ce": jax.lax.stop_gradient(ce),
        "correct": (jnp.argmax(log_q, axis=-1) == majority).astype(log_q.dtype),
    }
    return _weighted_mean(per_item, weights), aux
