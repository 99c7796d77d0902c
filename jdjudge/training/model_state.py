"""The model and its train state from the config: decoder, sharded init or HF import, LoRA base.

This is all that judging and exporting need (a model, and a state shape to restore into);
training adds the jitted steps on top (``jitted.build_steps``). Large arrays (an imported
checkpoint, a LoRA base) always enter jitted functions as arguments, never as closed-over
constants that XLA would copy into the executable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh

from jdjudge.config.schema import Config, LoraConfig, ModelConfig
from jdjudge.models import lora
from jdjudge.models.attention import auto_block_size, resolve_implementation
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder, partition_rules
from jdjudge.models.hf_config import decoder_config_from_hf
from jdjudge.models.hf_import import load_hf_model
from jdjudge.models.hub import resolve_model_dir
from jdjudge.sharding import tree_shardings
from jdjudge.training import label_head
from jdjudge.training.state import ParamsFn, TrainState, full_params, init_params, new_train_state


@dataclass(frozen=True)
class StateLayout:
    """What a run's state looks like, with nothing read or allocated: enough to restore a
    checkpoint into, to plan memory, or to count parameters."""

    model: Decoder
    lora: LoraConfig | None  # None: full fine-tuning
    abstract_base: Any  # the model's parameters: ShapeDtypeStructs carrying their shardings
    abstract_state: TrainState  # the same for the train state (parameters or adapters)
    params_fn: ParamsFn  # what the steps run (LoRA: adapters attached beside their kernels)
    merged_fn: ParamsFn  # the model a trainable tree stands for (LoRA: merged), for export
    head_ids: np.ndarray | None = None  # the label columns that alone train (label_head)

    @property
    def base_shardings(self) -> Any:
        return jax.tree.map(lambda leaf: leaf.sharding, self.abstract_base)

    @property
    def merged_model(self) -> Decoder:
        """The decoder ``merged_fn``'s parameters are for (the steps' may hold only label
        columns of the head): what judging and export run."""
        return Decoder(replace(self.model.config, head_columns=None))

    def step_label_ids(self, label_token_ids: np.ndarray) -> np.ndarray:
        """The ids the steps' loss gathers output columns with: the label tokens' own, or
        their columns in a label-only head."""
        if self.head_ids is None:
            return label_token_ids
        return label_head.column_index(self.head_ids, label_token_ids)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint must record to be loaded without the data: the trained columns."""
        if self.head_ids is None:
            return {}
        return {label_head.METADATA_KEY: self.head_ids.tolist()}

    @property
    def state_shardings(self) -> Any:
        return jax.tree.map(lambda leaf: leaf.sharding, self.abstract_state)


@dataclass(frozen=True)
class ModelState:
    """A layout with its starting weights: the LoRA base (read when built) and step 0."""

    layout: StateLayout
    frozen: Any  # the LoRA base parameters (device arrays), or None
    init_state: Callable[[jax.Array], TrainState]
    # What merged_fn merges a label-only head into, read when asked: the whole kernel, which
    # the steps never read, so it is not held on the device while training.
    merge_base: Callable[[], Any] | None = None

    @property
    def model(self) -> Decoder:
        return self.layout.model

    @property
    def frozen_shardings(self) -> Any:
        return None if self.frozen is None else self.layout.base_shardings

    def model_params(self, trainable: Any) -> Any:
        """The full parameters a trainable tree stands for (LoRA merged, a label-only head
        written back into the whole kernel), for export and judging."""
        base = self.frozen if self.merge_base is None else self.merge_base()
        return self.layout.merged_fn(trainable, base, None)


def with_attention_blocks(config: Config, train_lengths: np.ndarray) -> Config:
    """``model.attention_block_size=0`` resolved from the train items' median length when
    rows are packed and attention is ``blockwise`` (``attention.auto_block_size``); otherwise
    it stays 0, which ``attention.attend`` turns into a block for each row's length (splash on
    a TPU: 128, a multiple of its 128-lane tiles). An explicit size is kept."""
    if config.model.attention_block_size or not config.data.packing:
        return config
    if resolve_implementation(config.model.attention, config.model.dtype) != "blockwise":
        return config
    block = auto_block_size(float(np.median(train_lengths)))
    return replace(config, model=replace(config.model, attention_block_size=block))


def decoder_config(
    model: ModelConfig, vocab_size: int, max_seq_len: int, hf_config: dict[str, Any] | None = None
) -> DecoderConfig:
    """The decoder: from ``model.init_from``'s HF config.json (or ``hf_config``, its content
    had elsewhere: a planner's), or from the ``model.*`` keys (the vocabulary then comes from
    the tokenizer)."""
    if model.init_from:
        if hf_config is None:
            config_file = resolve_model_dir(model.init_from) / "config.json"
            hf_config = json.loads(config_file.read_text())
        return decoder_config_from_hf(hf_config, max_seq_len=max_seq_len, **_hf_options(model))
    return DecoderConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        num_kv_heads=model.num_kv_heads,
        head_dim=model.head_dim,
        rope_theta=model.rope_theta,
        rms_norm_eps=model.rms_norm_eps,
        tie_embeddings=model.tie_embeddings,
        initializer_range=model.initializer_range,
        **_hf_options(model),
    )


def _hf_options(model: ModelConfig) -> dict[str, Any]:
    """The ``model.*`` keys that still apply to an imported checkpoint."""
    return {
        "dtype": model.dtype,
        "param_dtype": model.param_dtype,
        "scan_layers": model.scan_layers,
        "remat": model.remat,
        "attention": model.attention,
        "attention_block_size": model.attention_block_size,
    }


def _abstract(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def _base_rng(config: Config) -> jax.Array:
    return jax.random.fold_in(jax.random.key(config.seed), 1)


def _init_adapters(lora_cfg: LoraConfig, optimizer: optax.GradientTransformation) -> Callable:
    def init(rng: jax.Array, base: Any) -> TrainState:
        return new_train_state(lora.init_lora(base, lora_cfg, rng), optimizer)

    return init


def state_layout(
    config: Config,
    vocab_size: int,
    seq_len: int,
    mesh: Mesh,
    optimizer: optax.GradientTransformation,
    label_token_ids: np.ndarray | None = None,
    hf_config: dict[str, Any] | None = None,
) -> StateLayout:
    """The decoder and the shapes and shardings of its parameters and train state. Reads no
    weights (an ``init_from`` checkpoint contributes only its config.json, or ``hf_config``
    is that file's content, had elsewhere).

    ``label_token_ids`` are the run's label tokens (the data's, or a checkpoint's recorded
    head columns): with ``model.head_rows = "labels"`` in full fine-tuning of an untied head
    only their columns of the head train (``label_head``). None: the whole model trains.
    """
    model = Decoder(decoder_config(config.model, vocab_size, seq_len, hf_config))
    rules = partition_rules()
    base_shapes = jax.eval_shape(partial(init_params, model, seq_len=seq_len), _base_rng(config))
    abstract_base = _abstract(base_shapes, tree_shardings(base_shapes, rules, mesh))
    lora_cfg = config.lora if config.lora.enabled else None
    head_ids = label_head.head_ids(config, model.config, label_token_ids)
    merged_fn: ParamsFn = full_params
    if lora_cfg is None:
        params_fn: ParamsFn = full_params
        trainable = base_shapes
        if head_ids is not None:  # the steps' head is [D, n]; the whole kernel stays out
            model = Decoder(replace(model.config, head_columns=len(head_ids)))
            small = partial(init_params, model, seq_len=seq_len)
            trainable = jax.eval_shape(small, _base_rng(config))

            def merged_fn(trainable: Any, kernel: Any, rng: jax.Array | None) -> Any:
                del rng
                return label_head.merge(trainable, kernel, head_ids)

        shapes = jax.eval_shape(partial(new_train_state, optimizer=optimizer), trainable)
        state_rules = rules
    else:
        shapes = jax.eval_shape(_init_adapters(lora_cfg, optimizer), jax.random.key(0), base_shapes)
        state_rules = lora.partition_rules_for_lora() + rules

        def params_fn(trainable: Any, base: Any, rng: jax.Array | None) -> Any:
            del rng  # the dropout rng reaches the adapted projections through the loss
            return lora.attach(base, trainable, lora_cfg)

        def merged_fn(trainable: Any, base: Any, rng: jax.Array | None) -> Any:
            del rng
            return lora.merge(base, trainable, lora_cfg)

        model = Decoder(replace(model.config, lora_dropout=float(lora_cfg.dropout)))

    abstract_state = _abstract(shapes, tree_shardings(shapes, state_rules, mesh))
    return StateLayout(model, lora_cfg, abstract_base, abstract_state, params_fn, merged_fn,
                       head_ids)  # fmt: skip


def _select(tree: Any, only: Collection[tuple[str, ...]] | None) -> Any:
    """The leaves of a nested dict at the paths ``only`` (all of them for None)."""
    if only is None:
        return tree
    return unflatten_dict({p: v for p, v in flatten_dict(tree).items() if p in only})


def build_model_state(
    config: Config,
    vocab_size: int,
    seq_len: int,
    mesh: Mesh,
    optimizer: optax.GradientTransformation,
    label_token_ids: np.ndarray | None = None,
) -> ModelState:
    """The layout plus its starting weights, for ``config`` (``label_token_ids``: see
    ``state_layout``).

    The starting weights come from ``model.init_from`` (an HF checkpoint, loaded straight
    into its shardings) or a random init from the seed. With LoRA those weights are the frozen
    base (read now) and the train state holds only the adapters; without it they are read or
    drawn when ``init_state`` is called, so restoring a checkpoint never reads them; a
    label-only head's whole kernel is read (only it) when ``model_params`` merges into it.
    """
    layout = state_layout(config, vocab_size, seq_len, mesh, optimizer, label_token_ids)
    shardings = layout.state_shardings

    def load_base(only: Collection[tuple[str, ...]] | None = None) -> Any:
        """The starting weights (or those at the param paths ``only``), in their shardings."""
        if config.model.init_from:
            _, params = load_hf_model(
                config.model.init_from,
                shardings_fn=lambda abstract: tree_shardings(abstract, partition_rules(), mesh),
                max_seq_len=seq_len,
                only=only,
                **_hf_options(config.model),
            )
            return params
        model, out_shardings = layout.merged_model, _select(layout.base_shardings, only)
        random_base = lambda rng: _select(init_params(model, rng, seq_len), only)  # noqa: E731
        return jax.jit(random_base, out_shardings=out_shardings)(_base_rng(config))

    if layout.head_ids is not None:

        def whole_head() -> jax.Array:
            return load_base({label_head.HEAD})[label_head.HEAD[0]][label_head.HEAD[1]]

        rest = set(flatten_dict(layout.abstract_base)) - {label_head.HEAD}
        start_columns = jax.jit(
            lambda base, kernel: new_train_state(
                label_head.take_columns(base, kernel, layout.head_ids), optimizer
            ),
            out_shardings=shardings,
            donate_argnums=0,  # the kernel is not: no output could reuse its buffer
        )
        init = lambda rng: start_columns(load_base(rest), whole_head())  # noqa: E731
        return ModelState(layout, None, init, merge_base=whole_head)
    if layout.lora is None:
        start = jax.jit(
            partial(new_train_state, optimizer=optimizer),
            out_shardings=shardings,
            donate_argnums=0,
        )
        return ModelState(layout, None, lambda rng: start(load_base()))  # seed: in _base_rng
    frozen = load_base()
    adapters = jax.jit(_init_adapters(layout.lora, optimizer), out_shardings=shardings)
    return ModelState(layout, frozen, lambda rng: adapters(rng, frozen))
