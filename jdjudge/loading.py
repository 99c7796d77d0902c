"""Load a judge for inference or export: a jdjudge run (workdir or one checkpoint step) or a
Hugging Face model directory / hub id.

A run is rebuilt from what it saved: ``config.json`` (the resolved config), ``tokenizer/``
and the newest complete Orbax checkpoint; LoRA adapters are merged into their base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from jdjudge.checkpoint.manager import CHECKPOINT_DIR, checkpoint_manager, restore_latest
from jdjudge.config.fields import resolve
from jdjudge.config.schema import Config, LoraConfig
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder
from jdjudge.models.hf_import import load_hf_model, load_tokenizer, resolve_model_dir
from jdjudge.sharding import make_mesh
from jdjudge.training.model_state import build_model_state
from jdjudge.training.optim import make_optimizer


@dataclass(frozen=True)
class LoadedJudge:
    decoder: DecoderConfig
    params: Any  # full parameters (LoRA merged)
    tokenizer: PreTrainedTokenizerBase
    chat_template: bool  # how the run rendered its prompts
    max_length: int
    model_type: str  # HF family for export ("llama", "qwen2", "mistral")
    config: Config | None = None  # the run's config (None for an HF model)
    lora: LoraConfig | None = None
    adapters: Any = None  # the trained LoRA adapters, for a PEFT export

    @property
    def model(self) -> Decoder:
        return Decoder(self.decoder)


def _run_dir(path: Path) -> tuple[Path, int | None]:
    """(workdir, step) for a workdir or a checkpoint step directory inside one."""
    if (path / "config.json").is_file() and (path / CHECKPOINT_DIR).is_dir():
        return path, None
    if path.name.isdigit() and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent, int(path.name)
    raise ValueError(f"{path} is neither a jdjudge workdir nor one of its checkpoint steps")


def is_run(path: str | Path) -> bool:
    try:
        _run_dir(Path(path))
    except ValueError:
        return False
    return True


def load_run(path: str | Path) -> LoadedJudge:
    """The newest complete checkpoint of a run (or the given step), merged for inference."""
    workdir, step = _run_dir(Path(path))
    saved = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    config = resolve(Config, saved)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "tokenizer", trust_remote_code=False)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    seq_len = config.data.max_length
    # The optimizer only shapes the state to restore into (its moments); no step is built.
    optimizer = make_optimizer(config.optimizer, config.steps)
    model_state = build_model_state(config, len(tokenizer), seq_len, mesh, optimizer)
    manager = checkpoint_manager(str(workdir))
    try:
        restored = restore_latest(manager, model_state.layout.abstract_state, only_step=step)
    finally:
        manager.close()
    if restored is None:
        raise FileNotFoundError(f"no complete checkpoint in {workdir / CHECKPOINT_DIR}")
    _, state, _ = restored
    model_type = "llama"
    if config.model.init_from:
        hf = json.loads((resolve_model_dir(config.model.init_from) / "config.json").read_text())
        model_type = str(hf.get("model_type", "llama"))
    return LoadedJudge(
        decoder=model_state.model.config,
        params=jax.device_get(model_state.model_params(state.params)),
        tokenizer=tokenizer,
        chat_template=config.data.chat_template,
        max_length=seq_len,
        model_type=model_type,
        config=config,
        lora=model_state.layout.lora,
        adapters=jax.device_get(state.params) if model_state.layout.lora is not None else None,
    )


def load_hf(path_or_hub_id: str, dtype: str = "float32", max_length: int = 4096) -> LoadedJudge:
    """An HF checkpoint as it is (no jdjudge training), e.g. to judge with a base model."""
    decoder, params = load_hf_model(path_or_hub_id, dtype=dtype, param_dtype=dtype)
    tokenizer = load_tokenizer(path_or_hub_id)
    hf = json.loads((resolve_model_dir(path_or_hub_id) / "config.json").read_text())
    return LoadedJudge(
        decoder=decoder,
        params=params,
        tokenizer=tokenizer,
        chat_template=False,
        max_length=max_length,
        model_type=str(hf.get("model_type", "llama")),
    )


def load_judge(path: str, max_length: int = 4096) -> LoadedJudge:
    """A jdjudge run if ``path`` is one, else an HF model directory or hub id."""
    return load_run(path) if is_run(path) else load_hf(path, max_length=max_length)
