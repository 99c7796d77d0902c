"""The paper's Llama-3.1-8B-Instruct judge: LoRA, α = 0.8, ε = 0.25, lr 5e-5, 2 epochs.

``python -m jdjudge.train --config=configs/llama.py:summeval`` picks the dataset (default
``chaosnli_snli``; paths default to ../shared/data). Point ``--config.model.init_from`` at a
local copy of the checkpoint where the Hub is out of reach. See docs/configuration.md.
"""

from ml_collections import ConfigDict

from jdjudge.config.presets import paper_config


def get_config(arg: str | None = None) -> ConfigDict:
    return paper_config(
        arg or "chaosnli_snli", hub_id="meta-llama/Llama-3.1-8B-Instruct", name="llama"
    )
