"""The shipped starting points: the schema's defaults for a dataset, and the paper's setup.

``configs/*.py`` call these and override what differs. Only values that differ from the
schema's defaults are written here; every key itself is declared in ``schema.py``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ml_collections import ConfigDict

from jdjudge.config.fields import to_config_dict
from jdjudge.config.schema import DATASETS, Config, DataConfig, ModelConfig

# Loader options a dataset is run with by default (any of them can be overridden).
DATASET_OPTIONS = {"summeval": {"crowd": False}, "mtbench": {"swap_positions": False}}

# Where ../shared/data-style copies of each dataset live, relative to the project root (the
# checkout: the folder holding jdjudge/ and configs/). The presets resolve them against it, so
# `configs/llama.py:summeval` finds its data from whatever directory it is run in.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA_PATHS = {
    "chaosnli_snli": "../shared/data/chaosnli/chaosNLI_snli.jsonl",
    "chaosnli_mnli": "../shared/data/chaosnli/chaosNLI_mnli_m.jsonl",
    "chaosnli_alphanli": "../shared/data/chaosnli/chaosNLI_alphanli.jsonl",
    "summeval": "../shared/data/summeval",
    "mtbench": "../shared/data/mtbench_human",
    "dices_350": "../shared/data/dices/dices_350_crowdsourced.json",
    "dices_990": "../shared/data/dices/dices_990.json",
    "newsroom": "../shared/data/newsroom/newsroom.json",
}


def shared_data_path(dataset: str) -> str:
    """The dataset's ../shared/data copy as an absolute path, or "" when it has none."""
    relative = SHARED_DATA_PATHS.get(dataset)
    return os.path.normpath(PROJECT_ROOT / relative) if relative else ""


def dataset_defaults(dataset: str) -> Config:
    """The schema's defaults with the dataset set: real datasets get packed rows of up to 512
    tokens and their loader's default options; the synthetic task keeps the schema's."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    data = DataConfig(name=dataset, options=dict(DATASET_OPTIONS.get(dataset, {})))
    if dataset != "synthetic":
        data = dataclasses.replace(data, max_length=512, packing=True)
    return Config(data=data)


def base_config(dataset: str) -> ConfigDict:
    """Every key with the tiny CPU defaults, as the ConfigDict a config file edits."""
    return to_config_dict(dataset_defaults(dataset))


def paper_config(dataset: str, hub_id: str, name: str) -> ConfigDict:
    """The paper's setup (Chen et al. 2025): LoRA on an instruct model, α = 0.8, ε = 0.25,
    5 ascent steps of 0.05, AdamW lr 5e-5, 2 epochs, 8:2 splits. ``model.init_from`` takes a
    hub id or a local directory."""
    c = base_config(dataset)
    c.workdir = f"runs/{name}-{dataset}"
    c.epochs = 2.0
    c.eval_every = 200
    c.log_every = 10
    c.checkpoint_every = 500
    c.data.path = shared_data_path(dataset)
    c.data.chat_template = True
    c.data.max_length = 4096  # MT-Bench prompts reach 3.6k Llama tokens
    c.data.truncate = True  # cut over-long articles (SummEval/Newsroom) instead of failing
    c.data.packing = True
    c.data.tokens_per_batch = 16384
    c.model.init_from = hub_id
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.05
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 20
    c.optimizer.schedule = "linear"
    c.optimizer.end_lr_factor = 0.0
    c.optimizer.weight_decay = 0.0
    c.mesh.data = 1
    c.mesh.fsdp = -1  # parameters and optimizer state sharded over every device
    return c


def llama_shaped(base: ModelConfig, hidden: int, layers: int) -> ModelConfig:
    """``base`` resized to a Llama-like shape of width ``hidden``: heads of 64, two query heads
    per KV head, a 3× SwiGLU. One shape rule for the benchmarks' model sizes."""
    return dataclasses.replace(
        base, hidden_size=hidden, intermediate_size=3 * hidden, num_layers=layers,
        num_heads=max(1, hidden // 64), num_kv_heads=max(1, hidden // 128),
    )  # fmt: skip
