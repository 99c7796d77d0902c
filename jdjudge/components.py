"""Everything a run is made of, built from the config and the data.

``train.py`` (and export) call ``build_components`` and get the model, the objective, the
optimizer, the state's shardings, the frozen base (LoRA) and the jitted steps with that base
bound in. Large arrays (an imported checkpoint, a LoRA base) always enter jitted functions as
arguments, never as closed-over constants that XLA would copy into the executable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jdjudge.builders import decoder_config, lora_config, objective_config
from jdjudge.losses import ObjectiveConfig
from jdjudge.models import lora
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder, partition_rules
from jdjudge.models.hf_config import decoder_config_from_hf
from jdjudge.models.hf_import import load_hf_model, resolve_model_dir
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


def model_config(config: ConfigDict, vocab_size: int, max_seq_len: int) -> DecoderConfig:
    """The decoder: from ``model.init_from``'s HF config.json, or from the ``model.*`` keys."""
    model = config.model
    if not model.init_from:
        return decoder_config(model, vocab_size)
    hf_config = json.loads((resolve_model_dir(model.init_from) / "config.json").read_text())
    return decoder_config_from_hf(hf_config, max_seq_len=max_seq_len, **_hf_options(model))


def _hf_options(model: ConfigDict) -> dict[str, Any]:
    """The ``model.*`` keys that still apply to an imported checkpoint."""
    return {
        "dtype": str(model.dtype),
        "param_dtype": str(model.param_dtype),
        "scan_layers": bool(model.scan_layers),
        "remat": str(model.remat),
    }


def build_components(
    config: ConfigDict,
    vocab_size: int,
    seq_len: int,
    mesh: Mesh,
    total_steps: int,
    label_token_ids: Any,
    synonym_mask: Any,
) -> Components:
    """Model, objective, optimizer, sharded init and jitted (donating) steps for a run.

    The starting weights come from ``model.init_from`` (an HF checkpoint, loaded straight
    into its shardings) or a random init from the seed. With LoRA those weights are the frozen
    base and the train state holds only the adapters.
    """
    cfg = model_config(config, vocab_size, seq_len)
    model = Decoder(cfg)
    objective = objective_config(config.objective)
    optimizer = make_optimizer(config.optimizer, total_steps)
    lora_cfg = lora_config(config.lora)
    rules = partition_rules()
    base_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    random_base = partial(init_params, model, seq_len=seq_len)
    base_shapes = jax.eval_shape(random_base, base_rng)
    base_shardings = tree_shardings(base_shapes, rules, mesh)

    def load_base() -> Any:
        """The starting weights, placed in their shardings (read or drawn on first use)."""
        if config.model.init_from:
            _, params = load_hf_model(
                config.model.init_from,
                shardings_fn=lambda abstract: tree_shardings(abstract, rules, mesh),
                max_seq_len=seq_len,
                **_hf_options(config.model),
            )
            return params
        return jax.jit(random_base, out_shardings=base_shardings)(base_rng)

    frozen, frozen_shardings, params_fn = None, None, full_params
    if lora_cfg is None:
        start = jax.jit(partial(new_train_state, optimizer=optimizer), donate_argnums=0)
        shapes = jax.eval_shape(partial(new_train_state, optimizer=optimizer), base_shapes)
        state_rules = rules
        make_state = lambda rng: start(load_base())  # noqa: E731 - the seed is in base_rng
    else:
        frozen, frozen_shardings = load_base(), base_shardings
        state_rules = lora.partition_rules_for_lora() + rules

        def init_adapters(rng: jax.Array, base: Any) -> TrainState:
            return new_train_state(lora.init_lora(base, lora_cfg, rng), optimizer)

        shapes = jax.eval_shape(init_adapters, jax.random.key(0), base_shapes)
        adapters = jax.jit(init_adapters, out_shardings=tree_shardings(shapes, state_rules, mesh))
        make_state = lambda rng: adapters(rng, frozen)  # noqa: E731

        def params_fn(trainable: Any, base: Any, rng: jax.Array | None) -> Any:
            return lora.merge(base, trainable, lora_cfg, dropout_rng=rng)

    shardings = tree_shardings(shapes, state_rules, mesh)
    step = jax.jit(
        make_train_step(model, optimizer, objective, label_token_ids, synonym_mask, params_fn),
        in_shardings=(shardings, batch_sharding(mesh), replicated(mesh), frozen_shardings),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),  # the state only: never the frozen base
    )
    evaluate = jax.jit(make_eval_step(model, objective, label_token_ids, synonym_mask, params_fn))

    def init_state(rng: jax.Array) -> TrainState:
        return jax.device_put(make_state(rng), shardings)

    return Components(
        model=model,
        objective=objective,
        optimizer=optimizer,
        lora=lora_cfg,
        abstract_state=_abstract(shapes, shardings),
        frozen=frozen,
        init_state=init_state,
        train_step=lambda state, batch, rng: step(state, batch, rng, frozen),
        eval_step=lambda trainable, batch: evaluate(trainable, batch, frozen),
        params_fn=params_fn,
    )
