"""The train state and how step 0 is made: what a step changes and a checkpoint holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jdjudge.models.decoder import Decoder

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
