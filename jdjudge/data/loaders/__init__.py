"""Dataset loaders by name: ``load_records(name, path, **options)``.

Every loader reads local files (or ``hf://`` paths through HF ``datasets``), validates every
row, and either returns all records or raises ``DataError`` naming the file and line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path

from jdjudge.data.jsonl import load_jsonl
from jdjudge.data.loaders.dices import load_dices
from jdjudge.data.loaders.mtbench import load_mtbench
from jdjudge.data.loaders.newsroom import load_newsroom
from jdjudge.data.loaders.nli import load_chaosnli, load_nli_annotated
from jdjudge.data.loaders.summeval import load_summeval
from jdjudge.data.records import JudgmentRecord

Loader = Callable[..., list[JudgmentRecord]]

LOADERS: dict[str, Loader] = {
    "chaosnli_snli": partial(load_chaosnli, subset="snli"),
    "chaosnli_mnli": partial(load_chaosnli, subset="mnli"),
    "chaosnli_alphanli": partial(load_chaosnli, subset="alphanli"),
    "snli": partial(load_nli_annotated, dataset="snli"),
    "mnli": partial(load_nli_annotated, dataset="mnli"),
    "summeval": load_summeval,
    "mtbench": load_mtbench,
    "dices_350": partial(load_dices, variant="350"),
    "dices_990": partial(load_dices, variant="990"),
    "newsroom": load_newsroom,
    "jsonl": load_jsonl,
}


def options(name: str) -> list[str]:
    """The keyword options loader ``name`` accepts (besides ``path``)."""
    loader = LOADERS[name]
    fixed = loader.keywords if isinstance(loader, partial) else {}
    params = inspect.signature(loader).parameters
    return [p for p in params if p != "path" and p not in fixed]


def load_records(name: str, path: str | Path, **opts: object) -> list[JudgmentRecord]:
    """All records of dataset ``name`` at ``path`` (a file, or the dataset's folder)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    unknown = [key for key in opts if key not in options(name)]
    if unknown:
        raise ValueError(
            f"dataset {name!r} has no option(s) {unknown}; options: {options(name) or 'none'}"
        )
    return LOADERS[name](path, **opts)


__all__ = ["LOADERS", "load_records", "options"]
