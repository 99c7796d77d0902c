"""The optimizer: AdamW behind global-norm clipping, with linear warmup then decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jdjudge.config.schema import SCHEDULES, OptimizerConfig


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Warmup from 0 to ``learning_rate`` over ``warmup_steps``, then decay to
    ``learning_rate * end_lr_factor`` by ``total_steps`` (or stay flat for "constant")."""
    peak = cfg.learning_rate
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = peak * cfg.end_lr_factor
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_factor)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay on matrices only (norm scales are not decayed)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=_matrix_mask,
    )
    if cfg.grad_clip_norm > 0:
        return optax.chain(clip_by_global_norm(cfg.grad_clip_norm), adamw)
    return adamw


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale every gradient by min(1, max_norm / ‖g‖): optax's clip with a multiply.

    ``optax.clip_by_global_norm`` picks between ``g`` and ``g / ‖g‖ · max_norm`` with a
    leafwise ``select``, which XLA:CPU does not fuse into AdamW's update: on a 128k × 256
    embedding the clip + AdamW update took ~100 ms against ~40 ms with the scalar factor
    folded into the one elementwise pass (``docs/performance.md``, Measured changes). The
    state is optax's ``EmptyState``, so the optimizer state's tree is unchanged.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def _matrix_mask(params):
    """Decay weight matrices and embeddings; leave 1-D norm scales and biases alone."""
    return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
