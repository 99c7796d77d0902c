"""The embedded default: a tiny Llama-style judge on the synthetic review task, CPU-friendly.

Run it with ``python -m jdjudge.train --config=configs/tiny.py``; override any key with
``--config.key=value`` (e.g. ``--config.objective.alpha=0``). ``configs/tiny.py:NAME`` trains
the same tiny model on a real dataset (its file or folder in ``data.path``). Every key is
documented in docs/configuration.md.
"""

from ml_collections import ConfigDict

from jdjudge.config.presets import base_config


def get_config(arg: str | None = None) -> ConfigDict:
    """``arg`` names the dataset: ``synthetic`` (default, embedded) or a loader name."""
    dataset = arg or "synthetic"
    c = base_config(dataset)
    if dataset != "synthetic":  # a few minutes on CPU; the tiny model overfits 1k items fast
        c.workdir = f"runs/tiny-{dataset}"
        c.steps = 150
        c.eval_every = 25
        c.checkpoint_every = 50
        c.data.tokens_per_batch = 2048
        c.optimizer.warmup_steps = 20
    return c
