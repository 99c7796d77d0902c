"""Every shipped config loads, validates and builds into its abstract train state, with the
parameter counts of the real architectures (no weights: only a config.json is written)."""

from __future__ import annotations

import json
import math

import jax
import optax
import pytest

from jdjudge.config.cli import load_config
from jdjudge.config.presets import SHARED_DATA_PATHS
from jdjudge.config.schema import DATASETS
from jdjudge.sharding import make_mesh
from jdjudge.training.model_state import state_layout
from jdjudge.training.optim import make_optimizer
from tests.conftest import PROJECT_ROOT

# config.json of the published checkpoints (architecture keys as on the Hub).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}  # fmt: skip
QWEN_25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28,
    "torch_dtype": "bfloat16",
}  # fmt: skip
# Published sizes: the model cards' 8.03B / 7.61B, exactly as PEFT reports them, and PEFT's
# trainable count for r = 16 on all seven projections.
PUBLISHED = {
    "llama": {"params": 8_030_261_248, "lora16": 41_943_040, "hf": LLAMA_31_8B},
    "qwen": {"params": 7_615_616_512, "lora16": 40_370_176, "hf": QWEN_25_7B},
}


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _layout(argv: list[str]):
    config = load_config(["test", *argv])
    mesh = make_mesh(config.mesh.shape(), dcn_data=config.mesh.dcn_data)
    optimizer = make_optimizer(config.optimizer, config.steps)
    return config, state_layout(config, 1000, config.data.max_length, mesh, optimizer)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("published")
    dirs = {}
    for name, facts in PUBLISHED.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(facts["hf"]))
        dirs[name] = str(root / name)
    return dirs


def _data_args(dataset: str) -> list[str]:
    """Datasets without a default path (generic and annotator-label loaders) need one."""
    return [] if dataset in SHARED_DATA_PATHS else ["--config.data.path=items.jsonl"]


@pytest.mark.parametrize("model", ["llama", "qwen"])
@pytest.mark.parametrize("dataset", [d for d in DATASETS if d != "synthetic"])
def test_paper_config_builds_the_published_architecture(model, dataset, hf_dirs):
    config, layout = _layout([
        f"--config={PROJECT_ROOT / 'configs' / model}.py:{dataset}",
        f"--config.model.init_from={hf_dirs[model]}", *_data_args(dataset),
    ])  # fmt: skip
    assert config.data.name == dataset and config.lora.rank == 16
    assert _count(layout.abstract_base) == PUBLISHED[model]["params"]
    assert _count(layout.abstract_state.params) == PUBLISHED[model]["lora16"]
    assert {leaf.dtype.name for leaf in jax.tree.leaves(layout.abstract_base)} == {"bfloat16"}
    mu = optax.tree_utils.tree_get(layout.abstract_state.opt_state, "mu")  # adapters only
    assert _count(mu) == PUBLISHED[model]["lora16"]


def test_full_fine_tuning_state_holds_params_and_two_moments(hf_dirs):
    _, layout = _layout([
        f"--config={PROJECT_ROOT / 'configs' / 'llama.py'}", "--config.lora.rank=0",
        f"--config.model.init_from={hf_dirs['llama']}",
    ])  # fmt: skip
    state = layout.abstract_state
    assert _count(state.params) == PUBLISHED["llama"]["params"]
    for moment in ("mu", "nu"):
        assert _count(optax.tree_utils.tree_get(state.opt_state, moment)) == _count(state.params)
    kernel = state.params["layers"]["self_attn"]["q_proj"]["kernel"]  # scanned: [L, in, out]
    assert kernel.shape == (32, 4096, 4096)
    assert kernel.sharding.spec[1] == "fsdp"  # the paper config shards over every device


def _tiny_param_count(d: int, i: int, layers: int, heads: int, kv: int, vocab: int) -> int:
    """By hand: embeddings, per layer q/k/v/o + SwiGLU + two norms, final norm, lm_head."""
    hd = d // heads
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * i + 2 * d
    return vocab * d + layers * per_layer + d + d * vocab


@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_config_builds_for_every_dataset(dataset):
    path = [] if dataset == "synthetic" else ["--config.data.path=items.jsonl"]
    config, layout = _layout([f"--config={PROJECT_ROOT / 'configs' / 'tiny.py'}:{dataset}", *path])
    m = config.model
    want = _tiny_param_count(m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads,
                             m.num_kv_heads, 1000)  # fmt: skip
    assert _count(layout.abstract_state.params) == want == 226_624
    assert layout.lora is None


def test_shared_data_defaults_resolve_against_the_checkout_not_the_cwd(tmp_path, monkeypatch):
    from configs import llama

    monkeypatch.chdir(tmp_path)
    for dataset, relative in SHARED_DATA_PATHS.items():
        path = llama.get_config(dataset).data.path
        assert path == str((PROJECT_ROOT / relative).resolve())
