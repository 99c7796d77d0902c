"""Everything a run is made of, built from the config and the data.

``train.py`` (and evaluation, judging, export) call ``build_components`` and get the model,
the objective, the optimizer, the state's shardings, the frozen base (LoRA) and the jitted
steps with that base bound in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jdjudge.builders import decoder_config, lora_config, objective_config
from jdjudge.data.pipeline import JudgmentData
from jdjudge.losses import ObjectiveConfig
from jdjudge.models import lora
from jdjudge.models.decoder import Decoder, partition_rules
from jdjudge.optim import make_optimizer
from jdjudge.sharding import batch_sharding, replicated, tree_shardings
from jdjudge.train_step import (
    ParamsFn,
    TrainState,
    full_params,
    init_params,
    make_eval_step,
    make_train_step,
    new_train_state,
)


@dataclass(frozen=True)
class Components:
    model: Decoder
    objective: ObjectiveConfig
    optimizer: optax.GradientTransformation
    lora: lora.LoraConfig | None  # None: full fine-tuning
    abstract_state: TrainState  # ShapeDtypeStructs carrying their target shardings
    frozen: Any  # the LoRA base parameters (device arrays), or None
    init_state: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
    eval_step: Callable[[Any, Any], dict[str, jax.Array]]
    params_fn: ParamsFn

    def model_params(self, trainable: Any) -> Any:
        """The full parameters a trainable tree stands for (LoRA merged), for export/judging."""
        return self.params_fn(trainable, self.frozen, None)


def _abstract(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def build_components(
    config: ConfigDict, data: JudgmentData, mesh: Mesh, base_rng: jax.Array | None = None
) -> Components:
    """Model, objective, optimizer, sharded init and jitted (donating) steps for a run.

    With LoRA the base parameters are created here (from ``base_rng``, derived from the seed
    by default) and stay frozen; the train state holds only the adapters.
    """
    model = Decoder(decoder_config(config.model, vocab_size=len(data.tokenizer)))
    objective = objective_config(config.objective)
    optimizer = make_optimizer(config.optimizer, config.steps)
    lora_cfg = lora_config(config.lora)
    seq_len = data.train.tokens.shape[1]
    rules = partition_rules()
    init_base = partial(init_params, model, seq_len=seq_len)
    base_rng = jax.random.fold_in(jax.random.key(config.seed), 1) if base_rng is None else base_rng

    frozen, frozen_shardings, params_fn = None, None, full_params
    if lora_cfg is None:

        def init(rng: jax.Array) -> TrainState:
            return new_train_state(init_base(rng), optimizer)

    else:
        base_shapes = jax.eval_shape(init_base, base_rng)
        frozen_shardings = tree_shardings(base_shapes, rules, mesh)
        frozen = jax.jit(init_base, out_shardings=frozen_shardings)(base_rng)
        rules = lora.partition_rules_for_lora() + rules

        def init(rng: jax.Array) -> TrainState:
            return new_train_state(lora.init_lora(frozen, lora_cfg, rng), optimizer)

        def params_fn(trainable: Any, base: Any, rng: jax.Array | None) -> Any:
            return lora.merge(base, trainable, lora_cfg, dropout_rng=rng)

    shapes = jax.eval_shape(init, jax.random.key(0))
    shardings = tree_shardings(shapes, rules, mesh)
    label_ids, synonym_mask = data.label_token_ids, data.synonym_mask
    step = jax.jit(
        make_train_step(model, optimizer, objective, label_ids, synonym_mask, params_fn),
        in_shardings=(shardings, batch_sharding(mesh), replicated(mesh), frozen_shardings),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),  # the state only: never the frozen base
    )
    evaluate = jax.jit(make_eval_step(model, objective, label_ids, synonym_mask, params_fn))
    return Components(
        model=model,
        objective=objective,
        optimizer=optimizer,
        lora=lora_cfg,
        abstract_state=_abstract(shapes, shardings),
        frozen=frozen,
        init_state=jax.jit(init, out_shardings=shardings),
        train_step=lambda state, batch, rng: step(state, batch, rng, frozen),
        eval_step=lambda trainable, batch: evaluate(trainable, batch, frozen),
        params_fn=params_fn,
    )
