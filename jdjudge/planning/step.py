"""The production train step over abstract inputs: lowered and compiled, never run.

Everything here is what training builds (``model_state.state_layout`` for the shapes and
shardings of the parameters and train state, ``jitted.build_steps`` for the jit with its
shardings and donation, ``steps.judge_loss`` for the objective), fed ShapeDtypeStructs
instead of arrays: no weights are read or allocated, so an 8B model plans on a laptop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jdjudge.config.schema import Config
from jdjudge.models.architectures import KNOWN_MODELS, known_hf_config
from jdjudge.models.hub import hub_offline, hub_reachable, looks_like_local_path
from jdjudge.planning.abstract_batch import label_ids
from jdjudge.sharding import replicated
from jdjudge.training.flops import token_lora_params, train_flops_per_token
from jdjudge.training.jitted import build_steps
from jdjudge.training.model_state import ModelState, StateLayout, state_layout
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

TABLE_SOURCE = "architecture from jdjudge's table of known models; no download"


def hf_config_for(name: str) -> tuple[dict[str, Any], str]:
    """``model.init_from``'s config.json and where it came from: a local directory, the
    Hugging Face cache, the table of known models, or (an unknown id, the Hub answering) a
    download of that one small file. Never the weights."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model.init_from={name!r}: the directory has no config.json")
        return json.loads((path / "config.json").read_text()), f"{path / 'config.json'}"
    if path.exists() or looks_like_local_path(name):
        raise ValueError(f"model.init_from={name!r}: no such model directory")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), "config.json from the Hugging Face cache"
    known = known_hf_config(name)
    if known is not None:
        return known, TABLE_SOURCE
    if hub_offline() or not hub_reachable():
        raise ValueError(
            f"model.init_from={name!r}: not a local directory nor cached, the Hub is out of "
            f"reach, and not a known model ({', '.join(KNOWN_MODELS)}); point "
            "--config.model.init_from at a directory with its config.json"
        )
    try:
        downloaded = hf_hub_download(name, "config.json")
    except Exception as error:  # unknown or gated repo, dropped connection
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(f"model.init_from={name!r}: config.json not fetched ({first})") from None
    return json.loads(Path(downloaded).read_text()), "config.json downloaded from the Hub"


def planned_config(config: Config, tpu: bool) -> Config:
    """The config as the target runs it: ``model.attention = auto`` resolves per backend
    when traced, and a plan traces on the CPU backend, so a TPU plan names TPU's choice."""
    if tpu and config.model.attention == "auto":
        return replace(config, model=replace(config.model, attention="splash"))
    return config


@dataclass(frozen=True)
class PlannedStep:
    """The lowered train step and what it was built from."""

    layout: StateLayout
    lowered: Any  # jax.stages.Lowered

    @property
    def parameters(self) -> int:
        return _count(self.layout.abstract_base)

    @property
    def trainable(self) -> int:
        return _count(self.layout.abstract_state.params)

    def model_flops(self, rows: int, width: int) -> float:
        """The step's model FLOPs (``training.flops``, what MFU divides by) for ``rows``
        full rows of ``width`` tokens. XLA's cost analysis is no substitute: it counts a
        while loop's body once (all layers under ``scan_layers``) and a Pallas kernel
        (splash attention) not at all."""
        params = self.layout.abstract_state.params
        config = self.layout.model.config
        lora_params = token_lora_params(config, params) if self.layout.lora is not None else 0
        per_token = train_flops_per_token(self.layout.model.config, width, lora_params)
        return per_token * rows * width


def _count(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def lower_train_step(
    config: Config,
    mesh: Mesh,
    batch: dict[str, Any],
    num_labels: int,
    vocab_size: int,
    hf_config: dict[str, Any] | None = None,
) -> PlannedStep:
    """``jitted.build_steps``' train step lowered for ``batch`` (abstract) on ``mesh``."""
    total_steps = max(config.steps, 1)  # the schedule's length changes no buffer
    optimizer = make_optimizer(config.optimizer, total_steps)
    labels, synonyms = label_ids(num_labels)
    layout = state_layout(config, vocab_size, config.data.max_length, mesh, optimizer,
                          label_token_ids=labels, hf_config=hf_config)  # fmt: skip
    frozen = layout.abstract_base if layout.lora is not None else None
    model_state = ModelState(layout, frozen, init_state=_never)
    loss_fn = judge_loss(config.objective, layout.step_label_ids(labels), synonyms)
    steps = build_steps(model_state, optimizer, loss_fn, mesh)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(mesh))
    lowered = steps.train.lower(layout.abstract_state, batch, rng, frozen)
    return PlannedStep(layout, lowered)


def _never(rng: jax.Array) -> Any:
    raise AssertionError("a plan never initializes a state")
