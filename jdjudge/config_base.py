"""The base config: every key a run reads, in one place (configs as code).

``configs/*.py`` start from ``base_config(dataset)`` and override what differs; every key is
documented in docs/configuration.md (a test keeps the two in step).
"""

from ml_collections import ConfigDict, config_dict

from jdjudge.data.loaders import LOADERS

DATASETS = ("synthetic", *LOADERS)
# Loader options a dataset is run with by default (any of them can be overridden).
DATASET_OPTIONS = {"summeval": {"crowd": False}, "mtbench": {"swap_positions": False}}


def base_config(dataset: str) -> ConfigDict:
    """Every key a run reads, with the tiny CPU defaults; model configs override a few."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")

    c = ConfigDict()
    c.workdir = "runs/tiny"
    c.seed = 0
    c.steps = 500
    c.epochs = 0.0
    c.batch_size = 32
    c.eval_batch_size = 128
    c.eval_every = 100
    c.log_every = 25
    c.checkpoint_every = 100
    c.nan_guard = "skip"
    c.force = False

    c.data = ConfigDict()
    c.data.name = dataset
    c.data.path = ""
    c.data.options = ConfigDict(DATASET_OPTIONS.get(dataset, {}))
    c.data.num_items = 3000
    c.data.num_annotators = 5
    c.data.subsample = 0
    c.data.test_fraction = 0.2
    c.data.validation_fraction = 0.1
    c.data.seed = 0
    c.data.tokenizer = ""
    c.data.chat_template = False
    c.data.max_length = 16 if dataset == "synthetic" else 512
    c.data.truncate = False
    c.data.packing = dataset != "synthetic"
    c.data.tokens_per_batch = 4096

    c.model = ConfigDict()
    c.model.family = "llama"
    c.model.init_from = ""
    c.model.hidden_size = 64
    c.model.intermediate_size = 192
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = config_dict.placeholder(int)
    c.model.rope_theta = 10000.0
    c.model.rms_norm_eps = 1e-5
    c.model.tie_embeddings = False
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.initializer_range = 0.02
    c.model.scan_layers = False
    c.model.remat = "none"

    c.lora = ConfigDict()
    c.lora.rank = 0
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.lora.target_modules = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )

    c.objective = ConfigDict()
    c.objective.alpha = 0.8
    c.objective.adversarial = ConfigDict()
    c.objective.adversarial.epsilon = 0.25
    c.objective.adversarial.steps = 5
    c.objective.adversarial.step_size = 0.05
    c.objective.adversarial.ball = "l2"
    c.objective.adversarial.solver = "pgd"

    c.optimizer = ConfigDict()
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_factor = 0.1
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip_norm = 1.0

    c.mesh = ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.checkpoint = ConfigDict()
    c.checkpoint.enabled = True
    c.checkpoint.keep = 3
    c.checkpoint.keep_best = True

    return c


# Where ../shared/data-style copies of each dataset live, relative to the project root.
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
    c.data.path = SHARED_DATA_PATHS.get(dataset, "")
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
