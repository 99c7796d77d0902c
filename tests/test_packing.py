"""Packed batches: coverage, exactness against unpacked decoding, determinism, shapes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdjudge.config.schema import ObjectiveConfig
from jdjudge.data.batching import EncodedDataset
from jdjudge.data.packing import (
    PACKED_KEYS,
    PackedDataset,
    PackedLoader,
    PackingConfig,
    efficiency,
    materialize,
)
from jdjudge.data.sources import process_rows
from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder
from jdjudge.objective.losses import judge_objective
from jdjudge.training.steps import judge_log_probs

K = 3
SMALL = PackingConfig(tokens_per_batch=256, min_length=16, max_length=128, window_items=40)


def make_dataset(lengths, seed: int = 0, vocab: int = 97) -> PackedDataset:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, vocab, int(n)) for n in lengths]
    targets = rng.dirichlet(np.ones(K), len(seqs))
    truth = rng.dirichlet(np.ones(K), len(seqs))
    ids = [f"item-{i}" for i in range(len(seqs))]
    return PackedDataset.from_sequences(seqs, targets, ids, truth)


def random_lengths(n: int, seed: int = 1, high: int = 100) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, high, n)


def epoch_batches(loader: PackedLoader, epoch: int) -> list[dict]:
    first = sum(len(loader.plan(e)) for e in range(epoch))
    return [loader.batch_for_step(first + k) for k in range(len(loader.plan(epoch)))]


def real_items(batches) -> list[int]:
    return [int(i) for b in batches for i in b["item_index"].ravel() if i >= 0]


def check_batch(batch: dict, ds: PackedDataset, shapes) -> None:
    """Layout invariants of one packed batch, against the dataset it came from."""
    assert set(batch) == set(PACKED_KEYS)
    rows, length = batch["tokens"].shape
    slots = batch["item_index"].shape[1]
    assert any((s.rows, s.length, s.slots) == (rows, length, slots) for s in shapes)
    index = batch["item_index"]
    np.testing.assert_array_equal(batch["weights"], (index >= 0).astype(np.float32))
    for r in range(rows):
        valid = index[r] >= 0
        assert not np.any(valid[1:] & ~valid[:-1]), "real slots must come first"
        col = 0
        for s, item in enumerate(index[r][valid]):
            n = int(ds.lengths[item])
            tokens = ds.flat[ds.offsets[item] : ds.offsets[item + 1]]
            np.testing.assert_array_equal(batch["tokens"][r, col : col + n], tokens)
            np.testing.assert_array_equal(batch["segment_ids"][r, col : col + n], s + 1)
            np.testing.assert_array_equal(batch["positions"][r, col : col + n], np.arange(n))
            assert batch["answer_index"][r, s] == col + n - 1
            np.testing.assert_array_equal(batch["targets"][r, s], ds.targets[item])
            np.testing.assert_array_equal(batch["true_targets"][r, s], ds.true_targets[item])
            col += n
        assert col <= length
        assert not batch["segment_ids"][r, col:].any() and not batch["positions"][r, col:].any()
        assert not batch["answer_index"][r, ~valid].any() and not batch["targets"][r, ~valid].any()


def test_buckets_powers_of_two_and_multiples():
    assert PackingConfig(min_length=128, max_length=1000).buckets() == (128, 256, 512, 1000)
    cfg = PackingConfig(min_length=128, max_length=512, bucket_multiple=128)
    assert cfg.buckets() == (128, 256, 384, 512)


@pytest.mark.parametrize("seed", [0, 7])
def test_every_item_once_per_epoch_and_in_eval(seed):
    ds = make_dataset(random_lengths(300))
    loader = PackedLoader(ds, SMALL, seed=seed)
    for epoch in range(3):
        batches = epoch_batches(loader, epoch)
        assert sorted(real_items(batches)) == list(range(len(ds)))
        for batch in batches:
            check_batch(batch, ds, loader.shapes)
        assert efficiency(batches) > 0.9
    evals = list(loader.eval_batches())
    assert sorted(real_items(evals)) == list(range(len(ds)))
    assert real_items(evals) == real_items(loader.eval_batches())  # fixed order
    assert real_items(epoch_batches(loader, 0)) != real_items(epoch_batches(loader, 1))


def tiny_decoder() -> tuple[Decoder, dict]:
    cfg = DecoderConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2,
    )  # fmt: skip
    model = Decoder(cfg)
    params = model.init(jax.random.key(0), *(jnp.ones((1, 8), jnp.int32),) * 3)["params"]
    return model, params


def one_item_per_row(ds: PackedDataset, items: np.ndarray) -> dict[str, np.ndarray]:
    """The independent reference layout: each item alone in a right-padded row."""
    width = int(ds.lengths.max())
    tokens = np.zeros((len(items), width), np.int32)
    for row, item in enumerate(items):
        tokens[row, : ds.lengths[item]] = ds.flat[ds.offsets[item] : ds.offsets[item + 1]]
    mask = (np.arange(width)[None] < ds.lengths[items][:, None]).astype(np.int32)
    positions = np.where(mask, np.arange(width)[None], 0).astype(np.int32)
    answer = (ds.lengths[items] - 1).astype(np.int32)
    return {"tokens": tokens, "segment_ids": mask, "positions": positions, "answer_index": answer}


LABEL_IDS = np.array([[5], [11], [42]], np.int32)
INPUT_KEYS = ("tokens", "segment_ids", "positions", "answer_index")


def test_packed_decoder_logits_equal_unpacked():
    """The real decoder on packed rows gives each item's label logits as when run alone."""
    ds = make_dataset(random_lengths(24, seed=3, high=30), seed=3)
    packing = PackingConfig(tokens_per_batch=128, min_length=16, max_length=64)
    batches = list(PackedLoader(ds, packing).eval_batches())
    assert any((b["segment_ids"].max(axis=1) > 2).any() for b in batches), "rows must pack"
    model, params = tiny_decoder()

    @jax.jit
    def judge(batch):
        inputs = (*(batch[k] for k in INPUT_KEYS), LABEL_IDS)
        return model.apply({"params": params}, *inputs, method=Decoder.judge_logits)

    single = np.asarray(judge(one_item_per_row(ds, np.arange(len(ds)))))  # [n, K, 1]
    seen = []
    for batch in batches:
        packed = np.asarray(judge({k: batch[k] for k in INPUT_KEYS}))  # [R, N, K, 1]
        real = batch["item_index"] >= 0
        np.testing.assert_allclose(
            packed[real], single[batch["item_index"][real]], atol=1e-5, rtol=0
        )
        seen.extend(batch["item_index"][real].tolist())
    assert sorted(seen) == list(range(len(ds)))


def test_objective_on_packed_batch_equals_unpacked():
    """The train step's objective (adversarial, weighted) takes [R, N] batches as they are."""
    ds = make_dataset(random_lengths(24, seed=4, high=30), seed=4)
    packing = PackingConfig(tokens_per_batch=1024, min_length=16, max_length=64)
    (batch,) = PackedLoader(ds, packing).eval_batches()
    model, params = tiny_decoder()
    synonyms = np.ones(LABEL_IDS.shape, bool)

    @jax.jit
    def loss(inputs, targets, weights):
        log_q = judge_log_probs(model, params, inputs, LABEL_IDS, synonyms)
        return judge_objective(log_q, targets, ObjectiveConfig(), weights)[0]

    k = batch["targets"].shape[-1]  # the step sees items flattened in row order
    packed = loss(
        {key: batch[key] for key in INPUT_KEYS},
        batch["targets"].reshape(-1, k),
        batch["weights"].reshape(-1),
    )
    alone = loss(one_item_per_row(ds, np.arange(len(ds))), ds.targets, np.ones(len(ds)))
    np.testing.assert_allclose(float(packed), float(alone), rtol=1e-5)


def test_batch_for_step_is_pure_function_of_seed_and_step():
    ds = make_dataset(random_lengths(200))
    reference = PackedLoader(ds, SMALL, seed=5)
    total = sum(len(reference.plan(e)) for e in range(3))
    sequential = [reference.batch_for_step(s) for s in range(total)]
    for step in np.random.default_rng(0).permutation(total)[:12]:
        fresh = PackedLoader(ds, SMALL, seed=5)  # fresh, jumping straight to a late step
        fresh.batch_for_step(int(total - 1 - step))
        got = fresh.batch_for_step(int(step))
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(got[key], sequential[step][key])
    other = PackedLoader(ds, SMALL, seed=6).batch_for_step(0)["item_index"]
    assert not np.array_equal(other, sequential[0]["item_index"])


def test_process_rows_partition_every_packed_batch():
    """Each process keeps a contiguous share of the rows; the shares, in process order, are the
    whole global batch (checked by concatenation, not by re-slicing the same way)."""
    ds = make_dataset(random_lengths(150))
    config = dataclasses.replace(SMALL, rows_multiple=4)
    loader = PackedLoader(ds, config, seed=1)
    assert all(s.rows % 4 == 0 for s in loader.shapes)
    for step in (0, 3, len(loader.plan(0)) - 1):
        whole = loader.batch_for_step(step)
        for count in (1, 2, 4):
            parts = [process_rows(whole, p, count) for p in range(count)]
            assert {len(part["tokens"]) for part in parts} == {len(whole["tokens"]) // count}
            for key in PACKED_KEYS:
                np.testing.assert_array_equal(np.concatenate([q[key] for q in parts]), whole[key])
    with pytest.raises(ValueError, match="cannot split"):
        process_rows(loader.batch_for_step(0), 0, 3)
    with pytest.raises(ValueError, match="cannot split"):
        process_rows(loader.batch_for_step(0), 4, 4)


def test_item_over_largest_bucket_is_an_error_naming_it():
    ds = make_dataset([10, 200, 20])
    with pytest.raises(ValueError, match="'item-1' has 200 tokens"):
        PackedLoader(ds, SMALL)


def test_from_padded_and_efficiency():
    tokens = np.array([[2, 5, 6, 0], [2, 7, 0, 0]], np.int32)
    encoded = EncodedDataset(
        tokens=tokens,
        lengths=np.array([3, 2], np.int32),
        targets=np.eye(K, dtype=np.float32)[:2],
        true_targets=np.full((2, K), 0.5, np.float32),
        has_truth=np.array([True, False]),
        ids=["a", "b"],
        pad_id=0,
    )
    ds = PackedDataset.from_padded(encoded)
    batch = materialize(ds, np.array([[0, 1], [-1, -1]], np.int32), length=8)
    np.testing.assert_array_equal(batch["tokens"][0], [2, 5, 6, 2, 7, 0, 0, 0])
    np.testing.assert_array_equal(batch["answer_index"], [[2, 4], [0, 0]])
    np.testing.assert_array_equal(batch["true_targets"][0, 1], 0.0)
    assert ds.ids_of(batch["item_index"]) == ["a", "b"]
    assert efficiency([batch]) == 5 / 16


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=120),
    tokens_per_batch=st.integers(16, 400),
    window=st.integers(1, 60),
    max_items=st.integers(1, 10),
    rows_multiple=st.sampled_from([1, 2, 3]),
    multiple=st.sampled_from([None, 8]),
    seed=st.integers(0, 3),
)
def test_layout_invariants_on_random_lengths(
    lengths, tokens_per_batch, window, max_items, rows_multiple, multiple, seed
):
    config = PackingConfig(
        tokens_per_batch=tokens_per_batch,
        min_length=8,
        max_length=64,
        bucket_multiple=multiple,
        max_items_per_row=max_items,
        window_items=window,
        rows_multiple=rows_multiple,
    )
    ds = make_dataset(lengths, seed=seed)
    loader = PackedLoader(ds, config, seed=seed)
    assert len(loader.shapes) <= len(config.buckets())
    for batches in (epoch_batches(loader, 1), list(loader.eval_batches())):
        assert sorted(real_items(batches)) == list(range(len(ds)))
        for batch in batches:
            check_batch(batch, ds, loader.shapes)
