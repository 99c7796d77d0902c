"""Load a judge for inference or export: a jdjudge run (workdir or one checkpoint step) or a
Hugging Face model directory / hub id.

A run is rebuilt from what its chosen checkpoint saved (by default the best by eval KL): the
config that trained it, the tokenizer and the train state; LoRA adapters are merged into their
base, and a label-only head's trained columns are written back into its whole kernel.
Everything a user can get wrong (a missing path, a directory that is neither a run nor a
model, an offline Hub, a step that does not exist) is a UsageError naming ``--model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from transformers import PreTrainedTokenizerBase

from jdjudge.checkpoint.manager import CHECKPOINT_DIR, RunCheckpoints
from jdjudge.config.fields import ConfigError, resolve
from jdjudge.config.schema import Config, LoraConfig
from jdjudge.entry import UsageError
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder
from jdjudge.models.hf_import import load_hf_model, load_tokenizer
from jdjudge.models.hub import HubUnavailable, resolve_model_dir
from jdjudge.sharding import make_mesh
from jdjudge.training import label_head
from jdjudge.training.model_state import build_model_state
from jdjudge.training.optim import make_optimizer

TOKENIZER_DIR = "tokenizer"


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
    step: int | None = None  # the checkpoint step loaded (None for an HF model)
    chosen: str = ""  # why that step, e.g. "the best, eval KL 0.2378"

    @property
    def model(self) -> Decoder:
        return Decoder(self.decoder)

    def describe(self) -> str:
        """What was loaded, for the CLIs to print."""
        if self.step is None:
            return "a Hugging Face model"
        return f"checkpoint step {self.step} ({self.chosen})"


def _run_dir(path: Path) -> tuple[Path, int | None]:
    """(workdir, step) for a workdir or a checkpoint step directory inside one."""
    if (path / "config.json").is_file() and (path / CHECKPOINT_DIR).is_dir():
        return path, None
    if path.name.isdigit() and path.parent.name == CHECKPOINT_DIR and path.is_dir():
        return path.parent.parent, int(path.name)
    raise ValueError(f"{path} is neither a jdjudge workdir nor one of its checkpoint steps")


def is_run(path: str | Path) -> bool:
    try:
        _run_dir(Path(path))
    except ValueError:
        return False
    return True


def model_source(name: str, what: str, fix: str = "pass its local directory") -> Path:
    """``resolve_model_dir`` for a CLI: a missing path or an unavailable hub id becomes one
    UsageError prefixed with ``what`` (the flag or key) and, for the Hub, ending in ``fix``."""
    try:
        return resolve_model_dir(name)
    except HubUnavailable as error:
        raise UsageError(
            f"{what}: {error}; download it where the Hub is reachable and {fix}"
        ) from None
    except FileNotFoundError as error:
        raise UsageError(f"{what}: {error}") from None


def _chosen_step(
    checkpoints: RunCheckpoints, from_path: int | None, which: str | None
) -> tuple[int, str]:
    if from_path is not None:
        if which not in (None, str(from_path)):
            raise UsageError(
                f"--checkpoint={which} contradicts --model naming step {from_path}; give one"
            )
        return from_path, "the step directory given"
    if not checkpoints.steps():
        raise UsageError(
            f"the run in {checkpoints.directory.parent} has no complete checkpoint yet"
        )
    try:
        return checkpoints.choose(which or "best")
    except ValueError as error:
        raise UsageError(f"--checkpoint={which or 'best'}: {error}") from None


def load_run(path: str | Path, checkpoint: str | None = None) -> LoadedJudge:
    """One checkpoint of a run, merged for inference: ``checkpoint`` is ``best`` (default),
    ``latest`` or a step number; a step directory as ``path`` names its step itself."""
    workdir, from_path = _run_dir(Path(path))
    where = f"--model={path}"
    checkpoints = RunCheckpoints(workdir, read_only=True)
    try:
        step, chosen = _chosen_step(checkpoints, from_path, checkpoint)
        metadata = checkpoints.read_metadata(step)
        saved = metadata.get("config")
        if saved is None:  # written by an older jdjudge: the workdir's copy
            saved = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
        try:
            config = resolve(Config, saved)
        except ConfigError as error:
            raise UsageError(f"{where}: the run's config does not load ({error})") from None
        if config.model.init_from:
            base = f"{where}: the run's base model.init_from={config.model.init_from!r}"
            hf = json.loads(
                (model_source(config.model.init_from, base) / "config.json").read_text()
            )
        from transformers import AutoTokenizer  # lazily: it imports torch where installed

        tokenizer = AutoTokenizer.from_pretrained(workdir / TOKENIZER_DIR, trust_remote_code=False)
        mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        seq_len = config.data.max_length
        # The optimizer only shapes the state to restore into (its moments); no step is built.
        optimizer = make_optimizer(config.optimizer, config.steps)
        head = metadata.get(label_head.METADATA_KEY)  # a run that trained only label columns
        head_ids = None if head is None else np.asarray(head, np.int32)
        model_state = build_model_state(
            config, len(tokenizer), seq_len, mesh, optimizer, label_token_ids=head_ids
        )
        restored = checkpoints.restore_newest(model_state.layout.abstract_state, only_step=step)
    finally:
        checkpoints.close()
    if restored is None:
        raise UsageError(f"{where}: checkpoint step {step} is damaged and does not restore")
    _, state, _ = restored
    lora = model_state.layout.lora
    return LoadedJudge(
        decoder=model_state.layout.merged_model.config,
        params=jax.device_get(model_state.model_params(state.params)),
        tokenizer=tokenizer,
        chat_template=config.data.chat_template,
        max_length=seq_len,
        model_type=str(hf.get("model_type", "llama")) if config.model.init_from else "llama",
        config=config,
        lora=lora,
        adapters=jax.device_get(state.params) if lora is not None else None,
        step=step,
        chosen=chosen,
    )


def load_hf(path_or_hub_id: str, dtype: str = "float32", max_length: int = 4096) -> LoadedJudge:
    """An HF checkpoint as it is (no jdjudge training), e.g. to judge with a base model."""
    where = f"--model={path_or_hub_id}"
    model_dir = model_source(path_or_hub_id, where)
    if (model_dir / "invocations.jsonl").is_file() or (model_dir / "metrics.jsonl").is_file():
        raise UsageError(f"{where}: a jdjudge workdir with no checkpoint yet; train it first")
    if not (model_dir / "config.json").is_file():
        raise UsageError(
            f"{where}: neither a jdjudge run (config.json and checkpoints/) nor a Hugging Face "
            "model directory (config.json and *.safetensors)"
        )
    try:
        decoder, params = load_hf_model(model_dir, dtype=dtype, param_dtype=dtype)
    except ValueError as error:  # no safetensors, unsupported family, names or shapes off
        raise UsageError(f"{where}: {error}") from None
    tokenizer = load_tokenizer(model_dir)
    hf = json.loads((model_dir / "config.json").read_text())
    return LoadedJudge(
        decoder=decoder,
        params=params,
        tokenizer=tokenizer,
        chat_template=False,
        max_length=max_length,
        model_type=str(hf.get("model_type", "llama")),
    )


def load_judge(path: str, max_length: int = 4096, checkpoint: str | None = None) -> LoadedJudge:
    """A jdjudge run if ``path`` is one, else an HF model directory or hub id."""
    if is_run(path):
        return load_run(path, checkpoint)
    if checkpoint is not None:
        raise UsageError(f"--checkpoint={checkpoint}: --model={path} is not a jdjudge run")
    return load_hf(path, max_length=max_length)
