"""Packed rows may be longer than the longest prompt (``data.max_row_length``), so that items
near ``data.max_length`` share rows instead of filling one each."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from jdjudge.config.fields import ConfigError, validate
from jdjudge.config.schema import Config, DataConfig
from jdjudge.data.batching import EncodedDataset
from jdjudge.data.sources import make_source

K = 3
MAX_LENGTH = 64


def long_items(n: int = 200, seed: int = 0) -> EncodedDataset:
    """Items of 24–60 tokens under max_length 64: most too long for two to share a row of 64."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(24, 61, size=n).astype(np.int32)
    tokens = np.zeros((n, MAX_LENGTH), np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.integers(1, 50, size=length)
    targets = rng.dirichlet(np.ones(K), size=n).astype(np.float32)
    return EncodedDataset(
        tokens=tokens, lengths=lengths, targets=targets, true_targets=targets.copy(),
        has_truth=np.zeros(n, bool), ids=[f"item-{i}" for i in range(n)], pad_id=0,
    )  # fmt: skip


def packed_config(**data: object) -> Config:
    base = DataConfig(max_length=MAX_LENGTH, packing=True, tokens_per_batch=1024)
    return validate(replace(Config(), data=replace(base, **data)))


def epoch(config: Config, dataset: EncodedDataset, rows_multiple: int = 1) -> list[dict]:
    source = make_source(config, {"train": dataset}, rows_multiple, 0)
    batches, seen = [], 0
    while seen < len(dataset.ids):  # one epoch: every item once
        batch = source.train_batch(len(batches))
        seen += int((batch["item_index"] >= 0).sum())
        batches.append(batch)
    return batches


def check_rows(batches: list[dict], dataset: EncodedDataset) -> None:
    """Each item exactly once, its tokens intact in its own segment."""
    items = np.concatenate([b["item_index"][b["item_index"] >= 0] for b in batches])
    assert sorted(items.tolist()) == list(range(len(dataset.ids)))
    for b in batches:
        for r, row in enumerate(b["item_index"]):
            for slot, item in enumerate(row[row >= 0]):
                tokens = b["tokens"][r][b["segment_ids"][r] == slot + 1]
                np.testing.assert_array_equal(tokens, dataset.tokens[item, : dataset.lengths[item]])


def real_fraction(batches: list[dict]) -> float:
    """Real over computed tokens of the epoch's full-shape batches."""
    full = [b for b in batches if b["tokens"].shape == batches[0]["tokens"].shape]
    real = sum(int((b["segment_ids"] > 0).sum()) for b in full)
    return real / sum(b["segment_ids"].size for b in full)


def test_rows_longer_than_the_longest_prompt_pack_tighter():
    dataset = long_items()
    wide = epoch(packed_config(), dataset)
    capped = epoch(packed_config(max_row_length=MAX_LENGTH), dataset)
    check_rows(wide, dataset)
    check_rows(capped, dataset)
    assert wide[0]["tokens"].shape == (8, 128)  # the limit, 2 × 64
    assert capped[0]["tokens"].shape == (16, 64)
    assert real_fraction(wide) > 0.9 > real_fraction(capped) + 0.05  # measured 0.94, 0.84


def test_row_limit_follows_the_row_share_and_the_explicit_key():
    dataset = long_items()
    # 16 data-parallel rows of 1,024 tokens: a row's share is 64 tokens, no room to grow
    shared = epoch(packed_config(), dataset, rows_multiple=16)
    assert shared[0]["tokens"].shape == (16, 64)
    explicit = epoch(packed_config(max_row_length=512), dataset)
    assert explicit[0]["tokens"].shape == (4, 256)  # four mean items (42 tokens) fit in 256
    check_rows(explicit, dataset)
    assert real_fraction(explicit) > 0.9


def test_max_row_length_below_max_length_is_refused():
    with pytest.raises(ConfigError, match="max_row_length"):
        packed_config(max_row_length=MAX_LENGTH - 1)


def test_evaluate_does_not_call_a_new_row_limit_other_items(capsys):
    from jdjudge.evaluate import _warn_data_differences

    trained = packed_config(max_row_length=0)
    _warn_data_differences(trained, packed_config(max_row_length=4 * MAX_LENGTH))
    assert capsys.readouterr().err == ""
    _warn_data_differences(trained, packed_config(max_length=2 * MAX_LENGTH))
    assert "data.max_length=128 (the run: 64)" in capsys.readouterr().err
