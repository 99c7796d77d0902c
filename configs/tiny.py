"""The embedded default: a tiny Llama-style judge on the synthetic review task, CPU-friendly.

Run it with ``python -m jdjudge.train --config=configs/tiny.py``; override any key with
``--config.key=value`` (e.g. ``--config.objective.alpha=0``). Every key is documented in
docs/configuration.md.
"""

from ml_collections import ConfigDict, config_dict

from jdjudge.data.loaders import LOADERS

DATASETS = ("synthetic", *LOADERS)
# Loader options a dataset is run with by default (any of them can be overridden).
DATASET_OPTIONS = {"summeval": {"crowd": False}, "mtbench": {"swap_positions": False}}


def get_config(arg: str | None = None) -> ConfigDict:
    """``arg`` names the dataset: ``synthetic`` (default, embedded) or a loader name, whose
    file or folder goes in ``data.path``."""
    dataset = arg or "synthetic"
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")

    c = ConfigDict()
    c.workdir = "runs/tiny"
    c.seed = 0
    c.steps = 500
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

    if dataset != "synthetic":  # a few minutes on CPU; the tiny model overfits 1k items fast
        c.workdir = f"runs/tiny-{dataset}"
        c.steps = 150
        c.eval_every = 25
        c.checkpoint_every = 50
        c.data.tokens_per_batch = 2048
        c.optimizer.warmup_steps = 20
    return c
