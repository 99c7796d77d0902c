"""The production steps: jitted with the state's shardings, the batch split over the data
axes, and the state donated (updated in place).

``build_steps`` takes the model and state from ``model_state.build_model_state`` and the
objective as a loss function (``steps.judge_loss``), so the same builder serves any loss. The
jitted functions are returned as they are (no wrappers), so a caller can also ``.lower()`` and
``.compile()`` them for cost and memory analysis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from jdjudge.models.attention import mesh_context
from jdjudge.sharding import batch_sharding, replicated
from jdjudge.training.model_state import ModelState
from jdjudge.training.steps import LossFn, make_eval_step, make_train_step


@dataclass(frozen=True)
class Steps:
    """``train(state, batch, rng, frozen) -> (state, metrics)`` (donates ``state``) and
    ``evaluate(trainable, batch, frozen) -> weighted sums``; ``frozen`` is the LoRA base
    (``ModelState.frozen``) or None."""

    train: Any  # a jax.jit-wrapped function
    evaluate: Any


def build_steps(
    model_state: ModelState,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    mesh: Mesh,
) -> Steps:
    layout = model_state.layout
    shardings = layout.state_shardings
    train = jax.jit(
        _under_mesh(make_train_step(layout.model, optimizer, loss_fn, layout.params_fn), mesh),
        in_shardings=(
            shardings,
            batch_sharding(mesh),
            replicated(mesh),
            model_state.frozen_shardings,
        ),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),  # the state only: never the frozen base
    )
    evaluate = jax.jit(_under_mesh(make_eval_step(layout.model, loss_fn, layout.params_fn), mesh))
    return Steps(train=train, evaluate=evaluate)


def _under_mesh(step: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """``step`` traced with the mesh visible, so attention kernels that must run under
    ``shard_map`` (splash) know its axes; the jit itself stays unwrapped."""

    @functools.wraps(step)
    def traced(*args: Any) -> Any:
        with mesh_context(mesh):
            return step(*args)

    return traced
