"""Deterministic splits and annotation subsampling.

Splits hash a key (sha256), never a position, so an item's split does not change when other
items are added, dropped or reordered, in any process or Python version. Subsampling draws
per item from a generator seeded by (seed, hash of the id), for the same reasons.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def stable_bucket(key: str) -> float:
    """A value in [0, 1) from sha256(key): uniform, and the same everywhere."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_key(record: JudgmentRecord) -> str:
    """The id, or ``meta['group']`` where a loader groups items that must share a split.

    Groups: a SummEval/Newsroom summary's four dimensions, an MT-Bench item and its
    position-swapped copy. Splitting them apart would leak the same text into test.
    """
    group = record.meta.get("group")
    return group if isinstance(group, str) else record.id


def split_records(
    records: Sequence[JudgmentRecord],
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    key: Callable[[JudgmentRecord], str] = split_key,
) -> dict[str, list[JudgmentRecord]]:
    """{"train", "validation", "test"}: test takes ``test_fraction`` of the keys (8:2 by
    default), validation takes ``validation_fraction`` of the rest, carved from train.

    Test membership does not depend on ``validation_fraction``: changing it only moves items
    between train and validation. Record order within a split follows the input.
    """
    if not 0.0 <= test_fraction < 1.0 or not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"fractions must be in [0, 1): test={test_fraction}, validation={validation_fraction}"
        )
    val_end = test_fraction + validation_fraction * (1.0 - test_fraction)
    out: dict[str, list[JudgmentRecord]] = {name: [] for name in SPLITS}
    for record in records:
        bucket = stable_bucket(key(record))
        name = "test" if bucket < test_fraction else "validation" if bucket < val_end else "train"
        out[name].append(record)
    return out


def _rng(seed: int, record_id: str) -> np.random.Generator:
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big")])


def _pool(record: JudgmentRecord) -> tuple[str, ...]:
    """The record's individual annotations, or the multiset its counts stand for."""
    if record.annotations is not None:
        return record.annotations
    if record.counts is None:
        raise DataError(
            "has only a distribution; nothing to subsample", location=f"record {record.id!r}"
        )
    return tuple(
        label for label, c in zip(record.labels, record.counts, strict=True) for _ in range(c)
    )


def subsample_annotations(
    records: Sequence[JudgmentRecord], n: int, seed: int
) -> list[JudgmentRecord]:
    """Each record with ``n`` of its annotations drawn without replacement (all if fewer).

    The draw is a pure function of (seed, id), and the first n of one shuffled order, so
    the subsample for n is contained in the one for n + 1. The dense distribution stays
    available as ``true_distribution`` (unless the record already had one, e.g. synthetic
    truth) and the dense counts as ``meta['dense_counts']``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = []
    for record in records:
        pool = _pool(record)
        order = _rng(seed, record.id).permutation(len(pool))[:n]
        drawn = tuple(pool[i] for i in sorted(order))
        truth = record.true_distribution
        out.append(
            replace(
                record,
                counts=None,
                annotations=drawn,
                true_distribution=truth if truth is not None else tuple(record.distribution),
                meta={**record.meta, "dense_counts": list(record.counts or ())},
            )
        )
    return out
