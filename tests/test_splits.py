"""Deterministic hash splits, annotation subsampling, and the stats summary."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from jdjudge.data.loaders import load_records
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError
from jdjudge.data.splits import split_records, stable_bucket, subsample_annotations
from jdjudge.data.stats import entropy_bits, length_percentiles, summarize

NLI = ("entailment", "neutral", "contradiction")
FIELDS = {"premise": "p", "hypothesis": "h"}


def make(i: int, counts=(10, 76, 14), **meta) -> JudgmentRecord:
    return JudgmentRecord(f"item-{i}", "nli", FIELDS, NLI, counts, meta=meta)


@pytest.fixture(scope="module")
def many() -> list[JudgmentRecord]:
    return [make(i) for i in range(5000)]


def ids(records) -> list[str]:
    return [r.id for r in records]


def test_bucket_is_the_first_8_bytes_of_sha256():
    # `printf %s item-7 | sha256sum` (coreutils) starts de549e25f961a951.
    assert stable_bucket("item-7") == 0xDE549E25F961A951 / 2**64
    assert stable_bucket("item-6") == 0x03BEDCE883C01C6E / 2**64


def test_buckets_are_uniform(many):
    buckets = np.array([stable_bucket(r.id) for r in many])
    assert buckets.min() >= 0 and buckets.max() < 1
    assert stats.kstest(buckets, "uniform").pvalue > 1e-3


def test_split_of_a_hand_worked_set():
    """Buckets from sha256sum (first 16 hex digits / 2^64): item-6 0.0146, item-8 0.0965,
    item-14 0.2419, item-1 0.3498; the rest of item-0..9 lie above 0.41. Default fractions:
    test below 0.2, validation below 0.2 + 0.1 · 0.8 = 0.28."""
    records = [make(i) for i in [*range(10), 14]]
    splits = split_records(records)
    assert ids(splits["test"]) == ["item-6", "item-8"]
    assert ids(splits["validation"]) == ["item-14"]
    assert ids(splits["train"]) == [f"item-{i}" for i in (0, 1, 2, 3, 4, 5, 7, 9)]
    wider = split_records(records, validation_fraction=0.25)  # validation below 0.4
    assert ids(wider["test"]) == ["item-6", "item-8"]
    assert ids(wider["validation"]) == ["item-1", "item-14"]


def test_split_is_deterministic_order_free_and_about_8_to_2(many):
    splits = split_records(many)
    assert {k: ids(v) for k, v in split_records(many).items()} == {
        k: ids(v) for k, v in splits.items()
    }
    where = {r.id: name for name, rs in splits.items() for r in rs}
    assert len(where) == len(many) == sum(len(v) for v in splits.values())  # disjoint, covering
    shuffled = many[:]
    random.Random(0).shuffle(shuffled)
    again = split_records(shuffled)
    for name, records in again.items():  # same membership; order follows the input
        assert ids(records) == [r.id for r in shuffled if where[r.id] == name]
    # An item's split does not depend on which other items are present.
    subset = split_records(many[::7])
    assert all(where[r.id] == name for name, rs in subset.items() for r in rs)
    # Sizes within binomial bounds (one-in-a-million two-sided) of the expected shares.
    n = len(many)
    for name, share in (("test", 0.2), ("validation", 0.1 * 0.8), ("train", 0.9 * 0.8)):
        low, high = stats.binom.interval(1 - 1e-6, n, share)
        assert low <= len(splits[name]) <= high, (name, len(splits[name]))


def test_test_split_does_not_depend_on_the_validation_fraction(many):
    a = split_records(many, validation_fraction=0.0)
    b = split_records(many, validation_fraction=0.25)
    assert ids(a["test"]) == ids(b["test"]) and not a["validation"]
    assert set(ids(b["train"])) | set(ids(b["validation"])) == set(ids(a["train"]))


def test_groups_never_straddle_splits(many):
    grouped = [make(i, group=f"g{i // 4}") for i in range(2000)]
    splits = split_records(grouped)
    for name, records in splits.items():
        others = {r.meta["group"] for k, rs in splits.items() if k != name for r in rs}
        assert not others & {r.meta["group"] for r in records}
    with pytest.raises(ValueError, match="fractions must be in"):
        split_records(many, test_fraction=1.0)


def test_real_groups_keep_summaries_and_swapped_copies_together(shared_data):
    mt = load_records("mtbench", shared_data / "mtbench_human", swap_positions=True)
    where = {r.id: name for name, rs in split_records(mt).items() for r in rs}
    assert all(where[r.id] == where[r.id + "/swapped"] for r in mt if not r.meta.get("swapped"))


def test_subsampling_is_deterministic_and_respects_n():
    records = [make(i) for i in range(50)] + [
        JudgmentRecord("ann", "nli", FIELDS, NLI, annotations=("neutral", "entailment", "neutral"))
    ]
    first = subsample_annotations(records, n=5, seed=3)
    assert first == subsample_annotations(records, n=5, seed=3)
    assert first != subsample_annotations(records, n=5, seed=4)
    assert [r.num_annotators for r in first] == [5] * 50 + [3]  # all 3 kept when fewer than n
    for dense, sub in zip(records, first, strict=True):
        assert sub.id == dense.id and len(sub.annotations) == sub.num_annotators
        np.testing.assert_allclose(sub.true_distribution, dense.distribution)
        assert sub.meta["dense_counts"] == list(dense.counts)
        assert all(s <= d for s, d in zip(sub.counts, dense.counts, strict=True))
    # Per item: a record's draw does not depend on the other records.
    assert subsample_annotations(records[7:8], n=5, seed=3) == first[7:8]


def test_subsamples_are_nested_across_budgets():
    record = make(0)
    small, large = (subsample_annotations([record], n, seed=1)[0] for n in (3, 10))
    assert all(s <= b for s, b in zip(small.counts, large.counts, strict=True))


def test_mean_subsampled_distribution_approaches_the_dense_one():
    dense = make(0)
    for n, tolerance in ((1, 0.04), (5, 0.02), (30, 0.01)):
        draws = [subsample_annotations([dense], n, seed)[0].distribution for seed in range(800)]
        np.testing.assert_allclose(np.mean(draws, axis=0), dense.distribution, atol=tolerance)
    records = [make(i, counts=(i % 7, 50, 100 - i % 50)) for i in range(300)]
    errors = []
    for n in (2, 10, 50):
        subs = subsample_annotations(records, n, seed=0)
        errors.append(
            np.mean(
                [
                    np.abs(s.distribution - d.distribution).sum()
                    for s, d in zip(subs, records, strict=True)
                ]
            )
        )
    assert errors[0] > errors[1] > errors[2]


def test_subsampling_errors():
    only = JudgmentRecord("d", "nli", FIELDS, NLI, distribution=(0.2, 0.5, 0.3))
    with pytest.raises(DataError, match="record 'd': has only a distribution"):
        subsample_annotations([only], 3, seed=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        subsample_annotations([make(0)], 0, seed=0)


def test_synthetic_truth_survives_subsampling():
    truth = (0.2, 0.3, 0.5)
    record = JudgmentRecord(
        "s", "synthetic", {"text": "x"}, ("a", "b", "c"), (1, 2, 2), true_distribution=truth
    )
    assert subsample_annotations([record], 2, seed=0)[0].true_distribution == truth


def test_summarize_reports_sizes_budgets_marginals_entropy_and_lengths():
    train = [make(0, counts=(1, 1, 0)), make(1, counts=(0, 0, 4))]
    test = [JudgmentRecord("d", "nli", FIELDS, NLI, distribution=(0.5, 0.5, 0.0))]
    text = summarize({"train": train, "test": test}, lengths={"train": [10, 30], "test": [7]})
    lines = text.splitlines()
    assert lines[1].split() == ["train", "2", "2/3.00/4", "0.500"]
    assert lines[2].split()[:3] == ["test", "1", "n/a"]
    assert (
        "  train       entailment 0.167, neutral 0.167, contradiction 0.667 | contradiction 0.500, entailment 0.500"
        in text
    )
    assert "  train       10/30/30/30" in text and "  test        7/7/7/7" in text
    assert entropy_bits(np.array([0.5, 0.5, 0.0])) == 1.0
    assert length_percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
