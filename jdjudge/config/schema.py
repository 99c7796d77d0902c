"""Every configuration key, declared once: type, default, one-line doc, allowed values.

The rest of the code reads these frozen dataclasses (``config.objective.alpha``); the
ConfigDict that ``configs/*.py`` edit, the command-line overrides, validation and
docs/configuration.md are all derived from the declarations here (``jdjudge.config.fields``).
Defaults are those of the embedded CPU run (``configs/tiny.py``); presets.py changes a few
per dataset and for the paper's models. The mesh, distributed and checkpoint sections live in
``runtime.py`` and are imported here. A section's docstring is its introduction in the
reference page. Adding a key: one ``key(...)`` line here, then its use.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from jdjudge.compilation_cache import DEFAULT_DIR as DEFAULT_CACHE_DIR
from jdjudge.config.fields import key, section
from jdjudge.config.runtime import CheckpointConfig, DistributedConfig, MeshConfig, Problems
from jdjudge.data.loaders import LOADERS
from jdjudge.host_memory import HOST_MALLOC

DATASETS = ("synthetic", *LOADERS)
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Attention implementations (`jdjudge.models.attention`); "auto" picks per backend.
ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "blockwise", "cudnn", "splash")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BALLS = ("l2", "l1", "linf")
SOLVERS = ("pgd", "worst_case")
SCHEDULES = ("cosine", "linear", "constant")
NAN_GUARDS = ("skip", "stop")
HEAD_ROWS = ("labels", "all")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The config argument names the dataset: `configs/tiny.py` (or `configs/tiny.py:synthetic`)
    is the embedded task; `configs/tiny.py:chaosnli_snli --config.data.path=…` any loader (see
    docs/data.md). Items are split by a stable hash of their id (or group) into train,
    validation (periodic evaluation, best checkpoint) and test (evaluated once, at the end)."""

    TITLE: ClassVar[str] = "Data"

    name: str = key(
        "synthetic",
        "Dataset: `synthetic` (embedded) or a loader name; set by the config argument.",
        choices=DATASETS,
    )
    path: str = key(
        "",
        "File or folder of a real dataset (e.g. `../shared/data/chaosnli/chaosNLI_snli.jsonl`); required unless `synthetic`.",
    )
    options: dict[str, Any] = key(
        {},
        "Loader options, per dataset: `data.options.crowd` (SummEval crowd ratings, default false), `data.options.swap_positions` (position-swapped MT-Bench copies, default false).",
    )
    num_items: int = key(3000, "Synthetic items generated.", ge=1)
    num_annotators: int = key(
        5,
        "Simulated annotators per synthetic item: the training target is their empirical label distribution, a noisy estimate of the item's true distribution.",
        ge=1,
    )
    subsample: int = key(
        0,
        "Draw this many of each item's annotations (deterministic by `data.seed`), so a 100-rater ChaosNLI item stands in for a 5-rater one; the dense distribution is kept as the reference for `kl_truth`. `0` keeps all.",
        ge=0,
    )
    test_fraction: float = key(
        0.2, "Share of items (by hash) in the test split: the paper's 8:2.", gt=0, lt=1
    )
    validation_fraction: float = key(
        0.1, "Share of the remaining items carved from train for validation.", gt=0, lt=1
    )
    seed: int = key(
        0, "Seed of the synthetic items and of annotation subsampling (independent of `seed`)."
    )
    tokenizer: str = key(
        "",
        "Empty: the model's tokenizer (`model.init_from`), else the synthetic tokenizer, or for real data a word-level tokenizer built offline from the training prompts. Otherwise a tokenizer directory (`AutoTokenizer`) or a `tokenizer.json`.",
    )
    chat_template: bool = key(
        False,
        "Wrap each prompt as a user message with the tokenizer's chat template (instruct models).",
    )
    max_length: int = key(
        16,
        "Longest prompt in tokens (512 for real datasets); a longer prompt is an error naming the item, unless `data.truncate`.",
        ge=1,
    )
    truncate: bool = key(
        False,
        "Cut an over-long prompt's long text field (article, premise, …) instead of failing; the count of cut items is printed.",
    )
    packing: bool = key(
        False,
        "Pack several items per row (segment ids, per-item answer positions) instead of one padded item per row; on by default for real datasets. With packing a step holds about `data.tokens_per_batch` tokens and `batch_size` is unused.",
    )
    tokens_per_batch: int = key(4096, "Computed tokens per packed training step.", ge=1)
    max_row_length: int = key(
        0,
        "Packed rows: the longest row (the largest packing bucket), at least `data.max_length`. 0: `data.max_length`, raised up to 2× it where one data-parallel row's share of `data.tokens_per_batch` allows, so that items near `data.max_length` share rows (SummEval's items of 680–930 tokens filled rows of 1,024 to 76%, rows of 2,048 to 98%). The row itself is the smallest bucket that holds the longest item and 4 mean-length items, within this limit.",
        ge=0,
    )
    min_bucket_length: int = key(
        64,
        "Shortest row length (capped at `data.max_length`): the smallest packed bucket, and the smallest width of a padded batch (see `data.widths_per_octave`).",
        ge=1,
    )
    widths_per_octave: int = key(
        8,
        "Padded batches: widths per octave above `data.min_bucket_length`, m·2^k·(1 + i/n) for i < n (then `data.max_length`); a batch takes the first that holds its longest item, so it costs at most 1 + 1/n times that item. 1: powers of two, 2: also ·1.5, 4: ·1.25, ·1.5, ·1.75, 8: steps of 1/8. More widths pad less but compile more programs (8 from 64: ChaosNLI's batches of 32 items take 5 widths, 4% over their longest items, against 2 widths and 10% with 4 from 128).",
        ge=1,
        le=16,
    )

    def cross_checks(self) -> Problems:
        if self.name != "synthetic" and not self.path:
            yield "path", f"required for dataset {self.name!r} (a file or folder)"
        if 0 < self.max_row_length < self.max_length:
            yield "max_row_length", f"must be 0 or at least data.max_length={self.max_length}"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU). The vocabulary
    size comes from the tokenizer."""

    TITLE: ClassVar[str] = "Model"

    init_from: str = key(
        "",
        "A Hugging Face model directory or hub id (Llama 2/3/3.1/3.2, Qwen2/2.5, Mistral) to start from. Its `config.json` then defines the architecture (the size keys below are ignored) and its tokenizer is used unless `data.tokenizer` is set; tensors are read one by one straight into their shardings. Empty: random init of the decoder described below.",
    )
    hidden_size: int = key(64, "Residual width D.", ge=1)
    intermediate_size: int = key(192, "SwiGLU hidden width.", ge=1)
    num_layers: int = key(2, "Decoder blocks.", ge=1)
    num_heads: int = key(4, "Query heads.", ge=1)
    num_kv_heads: int = key(
        2, "Key/value heads (grouped-query attention); must divide `num_heads`.", ge=1
    )
    head_dim: int | None = key(
        None, "Per-head width; `None` means `hidden_size // num_heads`.", ge=1
    )
    rope_theta: float = key(10000.0, "RoPE base frequency.", gt=0)
    rms_norm_eps: float = key(1e-5, "RMSNorm epsilon.", gt=0)
    tie_embeddings: bool = key(
        False, "Use the input embedding as the output projection (no `lm_head`)."
    )
    head_rows: str = key(
        "labels",
        "Rows of the untied output projection (`lm_head.weight`) that train in full fine-tuning: `labels` only the label tokens' (the only rows a judgment reads: the others keep their starting values and get no gradients or optimizer state; export writes the whole head), `all` every row (the others then change only by weight decay). No effect with LoRA (the head is frozen) or tied embeddings. See docs/models.md.",
        choices=HEAD_ROWS,
    )
    dtype: str = key(
        "float32", "Compute dtype of matmuls; norms and softmax stay float32.", choices=DTYPES
    )
    param_dtype: str = key("float32", "Storage dtype of parameters.", choices=DTYPES)
    initializer_range: float = key(
        0.02, "Standard deviation of the normal initializer of kernels and embeddings.", gt=0
    )
    scan_layers: bool = key(
        False, "Run the layers with `nn.scan` over stacked weights (fast compiles for deep models)."
    )
    remat: str = key(
        "none", "Activation checkpointing in the backward pass.", choices=REMAT_POLICIES
    )
    attention: str = key(
        "auto",
        "Attention implementation: `reference` (the whole [L, L] scores, einsum), `blockwise` (flash-style blocks in plain JAX: skips blocks no segment spans, memory linear in the row length), `cudnn` (cuDNN flash attention through `jax.nn.dot_product_attention`; GPU, bf16/fp16), `splash` (the Pallas splash kernel with segment ids; TPU). `auto`: splash on TPU, cuDNN on GPU in bf16/fp16, blockwise otherwise.",
        choices=ATTENTION_IMPLEMENTATIONS,
    )
    attention_block_size: int = key(
        0,
        "Query/key block of the `blockwise` and `splash` implementations. `blockwise` cuts a row into as many equal blocks as this size needs (each a multiple of 8 tokens, or the whole row when it fits one); `splash` pads the row to a multiple of it. `0`: from the data, the largest power of two no longer than the median train item, within 64–256, when rows are packed and attention is `blockwise`; else by row: 128, or 256 in rows over 1,024 tokens (splash: 128) (docs/performance.md#attention).",
        ge=0,
    )

    def cross_checks(self) -> Problems:
        if self.num_heads >= 1 and self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
            yield "num_kv_heads", f"must divide model.num_heads={self.num_heads}"
        if 0 < self.attention_block_size < 8:
            yield "attention_block_size", "must be 0 (chosen from the data) or at least 8"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the chosen projections, y = x·W + (α/r)·(x·A)·B in training and
    merged into W' = W + (α/r)·A·B for export; the base weights are frozen and get neither
    gradients nor optimizer state (see docs/lora.md). With `lora.rank = 0` all parameters
    train."""

    TITLE: ClassVar[str] = "LoRA"

    rank: int = key(0, "Adapter rank r; `0` is full fine-tuning. The paper used LoRA (16).", ge=0)
    alpha: float = key(16.0, "Scale numerator α (the update is scaled by α/r).", gt=0)
    dropout: float = key(
        0.0,
        "Dropout on each adapted projection's input, per element (per token and feature, as PEFT's `lora_dropout`), in training only.",
        ge=0,
        lt=1,
    )
    target_modules: tuple[str, ...] = key(
        LORA_MODULES, "Projections that get adapters.", choices=LORA_MODULES
    )

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        """α / r, as in PEFT without rsLoRA (0 without adapters)."""
        return float(self.alpha) / self.rank if self.rank else 0.0


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial targets: the worst p̃ in the simplex ∩ ball(p, ε), found by the inner solver
    with the model's prediction held fixed."""

    TITLE: ClassVar[str] = "Adversarial targets"

    epsilon: float = key(
        0.25, "Radius ε of the uncertainty ball around p; `0` turns adversarial targets off.", ge=0
    )
    steps: int = key(5, "Ascent steps of the inner solver (>= 1 when epsilon > 0).", ge=0)
    step_size: float = key(
        0.05,
        "Step size η of the paper's projected gradient ascent (`pgd`); > 0 when epsilon > 0.",
        ge=0,
    )
    ball: str = key(
        "l2",
        "Norm of the ball: `l2` (the paper), `l1` (2 × total variation) or `linf`.",
        choices=BALLS,
    )
    solver: str = key(
        "pgd",
        "`pgd`: the paper's projected gradient ascent. `worst_case`: multi-start linearization ascent that reaches the true maximum where PGD stalls (see docs/usage.md).",
        choices=SOLVERS,
    )

    def cross_checks(self) -> Problems:
        if self.epsilon > 0 and self.step_size <= 0:
            yield "step_size", "must be > 0 when epsilon > 0"
        if self.epsilon > 0 and self.steps < 1:
            yield "steps", "must be >= 1 when epsilon > 0"


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """L = α·KL(p̃ ‖ q) + (1 − α)·CE(majority(p), q), where p̃ = p without the adversary and
    the worst target in the simplex ∩ ball(p, ε) with it. Modes: `alpha=0` single-point SFT;
    `alpha=1, epsilon=0` KL only; `0<alpha<1, epsilon=0` KL+CE; `epsilon>0` adds adversarial
    targets (the paper's default: α = 0.8, ε = 0.25, 5 steps of 0.05)."""

    TITLE: ClassVar[str] = "Objective"

    alpha: float = key(0.8, "Weight α of the KL term.", ge=0, le=1)
    adversarial: AdversarialConfig = section(AdversarialConfig)

    @property
    def is_adversarial(self) -> bool:
        """Whether the KL term trains against an adversarial target."""
        return self.adversarial.epsilon > 0 and self.alpha > 0

    @property
    def mode(self) -> str:
        """Which objective this is, for logs and reports."""
        if self.alpha == 0:
            return "single_point"
        if self.is_adversarial:
            return "kl_adversarial" if self.alpha == 1 else "kl_ce_adversarial"
        return "kl" if self.alpha == 1 else "kl_ce"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW after global-norm clipping; linear warmup, then decay."""

    TITLE: ClassVar[str] = "Optimizer"

    learning_rate: float = key(3e-3, "Peak learning rate.", gt=0)
    warmup_steps: int = key(50, "Linear warmup from 0 to the peak.", ge=0)
    schedule: str = key("cosine", "Decay after warmup.", choices=SCHEDULES)
    end_lr_factor: float = key(0.1, "Final learning rate as a fraction of the peak.", ge=0, le=1)
    weight_decay: float = key(
        0.01, "Decoupled weight decay, applied to matrices and embeddings only.", ge=0
    )
    b1: float = key(0.9, "Adam β₁.", ge=0, lt=1)
    b2: float = key(0.999, "Adam β₂.", ge=0, lt=1)
    eps: float = key(1e-8, "Adam ε.", gt=0)
    grad_clip_norm: float = key(
        1.0, "Clip gradients to this global norm; `0` disables clipping.", ge=0
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Steps, batches, cadence and where the outputs go."""

    TITLE: ClassVar[str] = "Run"

    workdir: str = key(
        "runs/tiny",
        "Output directory: `metrics.jsonl`, `config.json`, `tokenizer/`, `checkpoints/`. Must not be a file.",
    )
    seed: int = key(
        0,
        "Seeds parameter initialization, the step RNG and the training data order. The batch at step s is a pure function of (`seed`, s).",
    )
    steps: int = key(500, "Number of optimizer steps (unless `epochs` is set).", ge=1)
    epochs: float = key(
        0.0,
        "If > 0, train for this many passes over the training split instead of `steps` (the paper: 2); the step count is worked out from the batches.",
        ge=0,
    )
    batch_size: int = key(
        32,
        "Global training batch (items) without packing. Must be divisible by the data-parallel mesh size and the process count.",
        ge=1,
    )
    eval_batch_size: int = key(
        128,
        "Global evaluation batch without packing; the last batch is padded with zero-weight rows.",
        ge=1,
    )
    eval_every: int = key(
        100,
        "Evaluate the validation split every this many steps (also at step 0 and at the end).",
        ge=1,
    )
    log_every: int = key(
        25,
        "Write a `train` event to `metrics.jsonl` every this many steps (also at the end).",
        ge=1,
    )
    checkpoint_every: int = key(
        100,
        "Save an Orbax checkpoint every this many steps (also at the end and on SIGTERM/SIGINT).",
        ge=1,
    )
    tensorboard: bool = key(
        True,
        "Also write every metrics.jsonl event as TensorBoard scalars in `<workdir>/tensorboard/` (`tensorboard --logdir=<workdir>`; no TensorFlow needed).",
    )
    compilation_cache: str = key(
        DEFAULT_CACHE_DIR,
        "Directory of JAX's persistent compilation cache (`~` expanded; at most 4 GiB, least recently used entries dropped): a rerun, resume, evaluation or grid cell with the same shapes loads the compiled programs instead of compiling them again. Empty: off.",
    )
    host_malloc: str = key(
        "auto",
        "What glibc does with freed host memory: `keep` holds it for reuse (no mmap for large blocks, no trimming, one arena), so the CPU backend's per-step temporaries stop page-faulting (~145k faults, a third of a small CPU step); `default` leaves glibc as it is; `auto` is `keep` where JAX runs on the CPU. Set before JAX starts, once per process; nothing changes where the C library is not glibc.",
        choices=HOST_MALLOC,
    )
    nan_guard: str = key(
        "skip",
        "On a non-finite loss or gradient: `skip` leaves the state untouched and counts the step (`skipped_steps` in train events); `stop` ends the run with an error naming the step and the item ids. Either way no non-finite state is ever saved.",
        choices=NAN_GUARDS,
    )
    force: bool = key(
        False,
        "Resume a workdir even though its saved run differs in run-defining keys (model, data, objective, optimizer, seed, batch size) or data; the change is recorded in `invocations.jsonl`. Refused when no step is left to train under it.",
    )

    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    lora: LoraConfig = section(LoraConfig)
    objective: ObjectiveConfig = section(ObjectiveConfig)
    optimizer: OptimizerConfig = section(OptimizerConfig)
    mesh: MeshConfig = section(MeshConfig)
    distributed: DistributedConfig = section(DistributedConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)

    def cross_checks(self) -> Problems:
        if not self.workdir:
            yield "workdir", "must be a directory path"
        elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", self.workdir):
            yield (
                "workdir",
                (
                    "is a URL; the workdir is written through the filesystem (atomic renames, "
                    "appends), so mount the bucket (e.g. gcsfuse, see docs/launch.md) and pass the "
                    "mounted path"
                ),
            )
