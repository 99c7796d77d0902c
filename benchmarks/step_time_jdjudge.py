"""The jdjudge side of ``benchmarks/step_time.py``: a case as a production ``Config``, its
batches from the production sources, the weights the PyTorch peer starts from, the timed
production train step, and the compiled memory and FLOPs comparisons.

Everything is built as ``jdjudge.train`` builds it: ``build_judgment_data``, ``batch_source``
(``PaddedSource`` or ``PackedSource``), the mesh from ``mesh.*``, ``build_trainer``
(``make_optimizer``, ``build_model_state``, ``judge_loss``, ``build_steps``), the step RNG
split from the seed and ``global_batch``. Only the loop around the step is the benchmark's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdjudge import host_memory
from jdjudge.config.fields import validate
from jdjudge.config.presets import dataset_defaults, llama_shaped, shared_data_path
from jdjudge.config.schema import Config
from jdjudge.data.pipeline import JudgmentData, build_judgment_data
from jdjudge.data.prefetch import local_batch
from jdjudge.data.sources import BatchSource
from jdjudge.models.decoder import Decoder
from jdjudge.models.hf_export import export_hf
from jdjudge.models.peft_export import export_peft_adapter
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.train import Trainer, batch_source, build_trainer
from jdjudge.training.jitted import build_steps
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

VOCAB = 128_256  # the Llama 3 tokenizer's
# Per dataset: data.max_length (holds every prompt of every split, so nothing is cut) and the
# padded batch in items (about data.tokens_per_batch = 4096 real tokens, as packed batches).
DATASETS = {"chaosnli_snli": (512, 32), "summeval": (1024, 8), "mtbench": (4096, 4)}
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def shared_data() -> Path:
    """../shared/data beside the checkout, or SystemExit naming where it was looked for."""
    root = Path(shared_data_path("chaosnli_snli")).parents[1]
    tokenizer = root / "tokenizers" / "llama3" / "tokenizer.json"
    if not tokenizer.is_file():
        raise SystemExit(
            f"step_time: the shared data folder is missing (looked for {tokenizer}); it holds "
            "ChaosNLI, SummEval, MT-Bench and the Llama 3 tokenizer this benchmark needs"
        )
    return root


@dataclass(frozen=True)
class Case:
    """One measured configuration; JSON round-trips it to the child processes."""

    dataset: str = "chaosnli_snli"
    hidden: int = 256
    layers: int = 4
    lora: bool = False
    packing: bool = False
    steps: int = 20  # timed steps
    warmup: int = 3  # first steps, never timed (step 0 compiles)
    epsilon: float = 0.0  # objective.adversarial.epsilon (0: the peer's objective)
    solver: str = "pgd"
    lora_rank: int = 16
    batch_size: int = 0  # padded items per step; 0: the dataset's default (DATASETS)
    tokens_per_batch: int = 4096  # packed
    seed: int = 0

    @property
    def name(self) -> str:
        kind = f"LoRA r{self.lora_rank}" if self.lora else "full FT"
        adv = f", eps {self.epsilon} {self.solver}" if self.epsilon else ""
        layout = "packed" if self.packing else "padded"
        return f"{self.hidden}x{self.layers} {self.dataset} {kind} {layout}{adv}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        return cls(**json.loads(text))


def case_config(case: Case, total_steps: int = 1) -> Config:
    """The production defaults for the dataset (``presets.dataset_defaults``) with the case's
    data, model size, LoRA and adversary; everything else (optimizer, objective α, attention
    implementation, head, mesh) stays the schema's default."""
    base = dataset_defaults(case.dataset)
    max_length, items = DATASETS[case.dataset]
    tokenizer = shared_data() / "tokenizers" / "llama3" / "tokenizer.json"
    data = replace(base.data, path=shared_data_path(case.dataset), tokenizer=str(tokenizer),
                   max_length=max_length, packing=case.packing,
                   tokens_per_batch=case.tokens_per_batch)  # fmt: skip
    model = replace(llama_shaped(base.model, case.hidden, case.layers), dtype="float32",
                    param_dtype="float32")  # fmt: skip
    lora = replace(base.lora, rank=case.lora_rank, alpha=2.0 * case.lora_rank, dropout=0.0)
    adversarial = replace(base.objective.adversarial, epsilon=case.epsilon, solver=case.solver)
    return validate(
        replace(base, data=data, model=model, lora=lora if case.lora else base.lora,
                objective=replace(base.objective, adversarial=adversarial),
                batch_size=case.batch_size or items, steps=total_steps, seed=case.seed)
    )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """The host batches of steps 0..E-1 and which steps are timed: after the warm-up, and
    never a step whose batch shape is new (it compiles), until ``case.steps`` are timed."""

    host: list[dict[str, np.ndarray]]
    timed: list[bool]

    def real_tokens(self) -> list[int]:
        return [int(np.count_nonzero(b["segment_ids"])) for b in self.host]

    def computed_tokens(self) -> list[int]:
        return [int(b["segment_ids"].size) for b in self.host]


def plan_steps(source: BatchSource, warmup: int, steps: int) -> Plan:
    host: list[dict[str, np.ndarray]] = []
    timed: list[bool] = []
    seen: set[tuple[int, ...]] = set()
    while sum(timed) < steps:
        batch = source.train_batch(len(host))
        shape = (*batch["tokens"].shape, *batch["answer_index"].shape)
        timed.append(len(host) >= warmup and shape in seen)
        seen.add(shape)
        host.append(batch)
    return Plan(host, timed)


def items_of(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Dataset indices of a batch's real items, in the loss's (row-major) order."""
    return batch["item_index"].reshape(-1)[batch["weights"].reshape(-1) > 0]


@dataclass
class Built:
    config: Config
    data: JudgmentData
    mesh: Any
    source: BatchSource
    plan: Plan


def build_data(case: Case) -> Built:
    """Config, data, mesh, source and step plan (no model yet); the config's ``steps`` is the
    plan's length, so the learning-rate schedule spans exactly the steps run."""
    config = case_config(case)
    host_memory.configure(config.host_malloc)  # as train.run: before JAX's CPU client starts
    data = build_judgment_data(config.data, default_tokenizer=config.model.init_from)
    mesh = make_mesh(config.mesh.shape(), dcn_data=config.mesh.dcn_data)
    source = batch_source(config, data, mesh)
    plan = plan_steps(source, max(case.warmup, 1), case.steps)
    return Built(replace(config, steps=len(plan.host)), data, mesh, source, plan)


def trainer_for(built: Built) -> Trainer:
    return build_trainer(built.config, built.data, built.mesh, built.config.steps)


def device_batch(built: Built, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """As the training loop feeds it: this process's rows, without reference targets the
    data lacks, placed in the batch sharding."""
    return global_batch(local_batch(host, built.data.has_truth), built.mesh)


def initial_state(trainer: Trainer, config: Config) -> tuple[Any, jax.Array]:
    """Step 0 and the step RNG, as the training loop makes them. With LoRA, B is drawn
    nonzero (PEFT and jdjudge both start it at 0), so that the loss check sees the adapters."""
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    state = trainer.model_state.init_state(init_rng)
    if config.lora.enabled:
        keys = iter(jax.random.split(jax.random.key(config.seed + 1), 4096))

        def draw(path: tuple, leaf: jax.Array) -> jax.Array:
            if getattr(path[-1], "key", None) != "lora_b":
                return leaf
            value = 0.02 * jax.random.normal(next(keys), leaf.shape, leaf.dtype)
            return jax.device_put(value, leaf.sharding)

        state = state.replace(params=jax.tree_util.tree_map_with_path(draw, state.params))
    return state, step_rng


def export_weights(trainer: Trainer, state: Any, config: Config, out: Path) -> dict[str, str]:
    """The model's weights for the peer, with the project's exporters: an HF checkpoint (the
    whole model, or the frozen LoRA base) and, with LoRA, a PEFT adapter."""
    model_state = trainer.model_state
    layout = model_state.layout
    decoder = replace(layout.merged_model.config, lora_dropout=0.0)  # a full head
    paths = {"hf": str(out / "hf")}
    if config.lora.enabled:
        export_hf(model_state.frozen, decoder, out / "hf")
        export_peft_adapter(state.params, config.lora, None, out / "adapter")
        paths["adapter"] = str(out / "adapter")
    else:
        export_hf(model_state.model_params(state.params), decoder, out / "hf")
    return paths


def save_peer_batches(built: Built, path: Path) -> None:
    """Each step's items (the same as jdjudge's batch holds) as token lists and targets."""
    train = built.data.train
    per_step = [items_of(b) for b in built.plan.host]
    items = np.concatenate(per_step)
    lengths = train.lengths[items]
    for host, step_items in zip(built.plan.host, per_step, strict=True):
        if int(train.lengths[step_items].sum()) != int(np.count_nonzero(host["segment_ids"])):
            raise AssertionError("a batch's real tokens are not its items' tokens")
    np.savez(
        path,
        flat=np.concatenate([train.tokens[i, :n] for i, n in zip(items, lengths, strict=True)]),
        item_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        step_offsets=np.concatenate([[0], np.cumsum([len(s) for s in per_step])]),
        targets=train.targets[items],
        label_ids=built.data.label_token_ids,
        synonym_mask=built.data.synonym_mask,
        pad_id=np.int64(train.pad_id),
    )


class CompileLog:
    """Seconds JAX spends tracing, lowering and compiling, from its monitoring events."""

    def __init__(self) -> None:
        self.total = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            self.total += duration


def time_steps(
    built: Built, trainer: Trainer, check_loss: float | None, tolerance: float = 1e-4
) -> dict[str, Any]:
    """Run every planned step of the production train step: wall time per step (dispatch to
    the loss on the host), loss, and compile seconds inside it. With ``check_loss``, step 0's
    loss (at the starting weights) must match it before any later step runs."""
    batches = [device_batch(built, host) for host in built.plan.host]
    state, step_rng = initial_state(trainer, built.config)
    jax.block_until_ready(state)
    log = CompileLog()
    frozen = trainer.model_state.frozen
    times, losses, compile_s, finite = [], [], [], []
    for step, batch in enumerate(batches):
        rng = jax.random.fold_in(step_rng, step)
        before, started = log.total, time.perf_counter()
        state, metrics = trainer.steps.train(state, batch, rng, frozen)
        jax.block_until_ready(state)  # the whole step: the update, not only the loss
        loss = float(metrics["loss"])
        times.append(time.perf_counter() - started)
        compile_s.append(log.total - before)
        losses.append(loss)
        finite.append(bool(metrics["finite"]))
        if step == 0 and check_loss is not None and not abs(loss - check_loss) <= tolerance:
            raise SystemExit(
                f"step_time: LOSS MISMATCH on the first batch: jdjudge {loss:.7f}, PyTorch "
                f"peer {check_loss:.7f} (|diff| {abs(loss - check_loss):.2e} > {tolerance}); "
                "the two sides do not compute the same thing, so nothing is timed"
            )
    return {"times": times, "losses": losses, "compile_s": compile_s, "finite": finite}


class FullVocabDecoder(Decoder):
    """What a naive port computes: logits over the whole vocabulary at every position
    ([B, L, V], ``Decoder.logits``), then the label columns at the answer positions. Same
    parameters; ``Decoder.judge_logits`` runs unchanged over these two overrides."""

    def answer_hidden(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        answer_index: jax.Array,
    ) -> jax.Array:
        logits = self.logits(tokens, segment_ids, positions)  # [B, L, V]
        return jnp.take_along_axis(logits, answer_index[..., None], axis=1)

    def label_logits(self, logits_at_answer: jax.Array, label_token_ids: jax.Array):
        k, s = label_token_ids.shape
        ids = jnp.clip(label_token_ids.reshape(-1), 0, self.config.vocab_size - 1)
        return jnp.take(logits_at_answer, ids, axis=-1).reshape(*logits_at_answer.shape[:-1], k, s)


def _compiled_memory(trainer: Trainer, batch: dict[str, jax.Array]) -> dict[str, float]:
    model_state = trainer.model_state
    abstract = model_state.layout.abstract_state
    lowered = trainer.steps.train.lower(abstract, batch, jax.random.key(0), model_state.frozen)
    memory = lowered.compile().memory_analysis()
    temp, args = memory.temp_size_in_bytes, memory.argument_size_in_bytes
    return {"temp_mib": temp / 2**20, "argument_mib": args / 2**20,
            "total_mib": (temp + args) / 2**20}  # fmt: skip


def head_memory(case: Case) -> dict[str, Any]:
    """Compiled temp + argument bytes of the train step on the case's first batch: the
    label-token head (production) against a full-vocabulary head (``FullVocabDecoder``, the
    whole head trained). Compiled only; nothing runs."""
    built = build_data(case)
    batch = device_batch(built, built.plan.host[0])
    label = _compiled_memory(trainer_for(built), batch)
    config = built.config  # a naive port trains every head row
    config = replace(config, model=replace(config.model, head_rows="all"))
    naive = trainer_for(replace(built, config=config))
    model_state = naive.model_state
    layout = replace(model_state.layout, model=FullVocabDecoder(model_state.layout.model.config))
    model_state = replace(model_state, layout=layout)
    optimizer = make_optimizer(config.optimizer, config.steps)
    loss_fn = judge_loss(config.objective, built.data.label_token_ids, built.data.synonym_mask)
    steps = build_steps(model_state, optimizer, loss_fn, built.mesh)
    full = _compiled_memory(Trainer(model_state, steps), batch)
    shape = tuple(built.plan.host[0]["tokens"].shape)
    return {"case": case.name, "batch": shape, "label_head": label, "full_vocab_head": full,
            "head_rows": built.config.model.head_rows}  # fmt: skip


def lora_flops(case: Case, tokens: int, rows: int) -> dict[str, Any]:
    """Compiled FLOPs of full fine-tuning vs LoRA at the case's size and 128k vocabulary,
    through ``benchmarks/lora_cost.py``'s measurement (random rows, the same objective)."""
    from benchmarks.lora_cost import measure  # a sibling script, imported only here

    args = argparse.Namespace(vocab=VOCAB, tokens=tokens, batch=rows, steps=1)
    full = case_config(replace(case, lora=False), 10)
    with_lora = case_config(replace(case, lora=True), 10)
    rows_out = [measure("full fine-tuning", full, args), measure("LoRA", with_lora, args)]
    return {"case": case.name, "batch": [rows, tokens], "rows": rows_out,
            "lora_flops_vs_full": rows_out[1]["gflop"] / rows_out[0]["gflop"]}  # fmt: skip
