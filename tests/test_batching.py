"""Checks of encoding, static-shape batches and the (seed, step) batch order."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from jdjudge.data.batching import (
    BATCH_KEYS,
    bucket_widths,
    encode_records,
    eval_batches,
    make_batch,
    train_batch_indices,
)
from jdjudge.data.synthetic import SyntheticTaskConfig, generate_records, render_prompt
from jdjudge.data.tokenizer import synthetic_tokenizer

CFG = SyntheticTaskConfig(num_items=64)
MAX_LEN = 24


@pytest.fixture(scope="module")
def records():
    return generate_records(CFG)


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer()


@pytest.fixture(scope="module")
def ds(records, tokenizer):
    return encode_records(records, tokenizer, max_length=MAX_LEN)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s order, read off the stream as the batch of size n at step epoch."""
    return train_batch_indices(n, n, seed, epoch)


def test_each_epoch_is_a_fresh_permutation():
    n, seed = 10, 7
    orders = [epoch_order(n, seed, e) for e in range(4)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert len({tuple(o) for o in orders}) == 4  # reshuffled every epoch
    assert not any(np.array_equal(o, np.arange(n)) for o in orders)
    assert not np.array_equal(epoch_order(n, seed + 1, 0), orders[0])  # depends on the seed


def test_batches_are_consecutive_slices_of_one_stream():
    """Whatever the batch size, step s holds stream positions [s·B, (s+1)·B), the stream being
    epoch 0's order, then epoch 1's, ... (brute force: batches of size 1)."""
    n, seed = 10, 5
    stream = np.array([train_batch_indices(n, 1, seed, t)[0] for t in range(50)])
    np.testing.assert_array_equal(
        stream, np.concatenate([epoch_order(n, seed, e) for e in range(5)])
    )
    for b in (3, 4, 7, 10, 25):
        for step in range(50 // b):
            np.testing.assert_array_equal(
                train_batch_indices(n, b, seed, step), stream[step * b : (step + 1) * b]
            )
    # Hand-worked: n = 10, B = 3, step 3 covers positions 9, 10, 11, the last of epoch 0
    # and the first two of epoch 1.
    e0, e1 = epoch_order(n, seed, 0), epoch_order(n, seed, 1)
    np.testing.assert_array_equal(train_batch_indices(n, 3, seed, 3), [e0[9], e1[0], e1[1]])
    # A batch larger than the dataset spans several epochs: n = 4, B = 10, step 1 covers
    # positions 10..19, i.e. epoch 2 from its third item, then epochs 3 and 4 whole.
    big = train_batch_indices(4, 10, seed, 1)
    expected = [*epoch_order(4, seed, 2)[2:], *epoch_order(4, seed, 3), *epoch_order(4, seed, 4)]
    np.testing.assert_array_equal(big, expected)


def test_shuffle_is_unbiased():
    """Over 2000 seeds, each item lands in each position of epoch 0 with probability 1/n."""
    n, seeds = 5, 2000
    counts = np.zeros((n, n), int)
    for seed in range(seeds):
        counts[epoch_order(n, seed, 0), np.arange(n)] += 1
    low, high = stats.binom.interval(1 - 1e-6, seeds, 1 / n)
    assert low <= counts.min() and counts.max() <= high, counts


def test_train_order_is_pure_function_of_seed_and_step():
    first = train_batch_indices(1000, 32, 3, 12345)
    for s in range(5):  # unrelated calls in between must not matter
        train_batch_indices(1000, 32, 99, s)
    np.random.seed(0)
    np.testing.assert_array_equal(train_batch_indices(1000, 32, 3, 12345), first)
    assert first.shape == (32,)
    assert not np.array_equal(train_batch_indices(1000, 32, 4, 12345), first)


def test_encoded_dataset(ds, records, tokenizer):
    n, k = len(records), len(records[0].labels)
    assert ds.tokens.shape == (n, MAX_LEN) and ds.tokens.dtype == np.int32
    assert ds.lengths.dtype == np.int32
    assert ds.targets.dtype == ds.true_targets.dtype == np.float32
    assert ds.targets.shape == ds.true_targets.shape == (n, k)
    assert ds.ids == [r.id for r in records]
    np.testing.assert_allclose(ds.targets.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ds.targets, [r.distribution for r in records], atol=1e-7)
    np.testing.assert_allclose(ds.true_targets, [r.true_distribution for r in records], atol=1e-7)
    assert ds.has_truth.all()
    # Hand-worked: a prompt is "Review: <words>\nVerdict:", i.e. <bos>, "Review", ":", one
    # token per word, "Verdict", ":", then padding.
    words = records[0].prompt_text.split()
    tokens = tokenizer.convert_ids_to_tokens(ds.tokens[0, : len(words) + 5].tolist())
    assert tokens == ["<bos>", "Review", ":", *words, "Verdict", ":"]
    assert (ds.tokens[0, len(words) + 5 :] == tokenizer.pad_token_id).all()
    # Every prompt: the same 4 template tokens and <bos> around one token per word.
    for i, r in enumerate(records):
        assert ds.lengths[i] == len(r.prompt_text.split()) + 5
        assert ds.tokens[i, 0] == tokenizer.bos_token_id
        assert (
            tokenizer.decode(ds.tokens[i, 3 : ds.lengths[i] - 2]).split() == r.prompt_text.split()
        )
        assert (ds.tokens[i, ds.lengths[i] :] == tokenizer.pad_token_id).all()
        assert (ds.tokens[i, : ds.lengths[i]] != tokenizer.pad_token_id).all()


def test_missing_truth_gives_zeros_and_flag(records, tokenizer):
    mixed = [replace(records[0], true_distribution=None), records[1]]
    ds = encode_records(mixed, tokenizer, max_length=MAX_LEN)
    np.testing.assert_array_equal(ds.has_truth, [False, True])
    assert (ds.true_targets[0] == 0).all() and not np.isnan(ds.true_targets).any()


def test_too_long_prompt_raises_with_id(records, tokenizer):
    with pytest.raises(ValueError, match=r"syn-000000.*tokens"):
        encode_records(records, tokenizer, max_length=6)


def test_make_batch_shapes_and_masks(ds, tokenizer, records):
    indices = np.array([5, 0, 17])
    batch = make_batch(ds, indices, batch_size=8)
    assert set(batch) == set(BATCH_KEYS)
    expected = {
        "tokens": (np.int32, (8, MAX_LEN)),
        "segment_ids": (np.int32, (8, MAX_LEN)),
        "positions": (np.int32, (8, MAX_LEN)),
        "answer_index": (np.int32, (8,)),
        "targets": (np.float32, (8, 3)),
        "true_targets": (np.float32, (8, 3)),
        "weights": (np.float32, (8,)),
    }
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype and batch[key].shape == shape, key
    np.testing.assert_array_equal(batch["weights"], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["item_index"], [5, 0, 17, -1, -1, -1, -1, -1])
    for row in range(8):
        item = indices[row] if row < 3 else indices[0]  # filler rows copy a real row
        length = len(records[item].prompt_text.split()) + 5  # <bos> Review : words Verdict :
        np.testing.assert_array_equal(batch["tokens"][row], ds.tokens[item])
        np.testing.assert_allclose(batch["targets"][row], records[item].distribution, atol=1e-7)
        seg = batch["segment_ids"][row]
        assert seg[:length].all() and not seg[length:].any()
        pos = batch["positions"][row]
        np.testing.assert_array_equal(pos[:length], np.arange(length))
        assert not pos[length:].any()
        assert batch["answer_index"][row] == length - 1


def test_answer_index_is_last_prompt_token(ds, tokenizer, records):
    batch = make_batch(ds, np.arange(8), batch_size=8)
    for row in range(8):
        prompt = render_prompt(records[row].prompt_text)
        last_prompt_token = tokenizer.tokenize(prompt)[-1]
        answer = int(batch["tokens"][row, batch["answer_index"][row]])
        assert tokenizer.convert_ids_to_tokens(answer) == last_prompt_token == ":"
        prefix = batch["tokens"][row, 1 : batch["answer_index"][row] + 1]
        assert tokenizer.decode(prefix).split() == tokenizer.tokenize(prompt)


def test_pad_multiple_crops_length(ds):
    batch = make_batch(ds, np.arange(4), batch_size=4, pad_multiple=16)
    assert batch["tokens"].shape == (4, 16)  # prompts here are at most 15 tokens
    assert int(batch["answer_index"].max()) < 16
    full = make_batch(ds, np.arange(4), batch_size=4)
    np.testing.assert_array_equal(full["tokens"][:, :16], batch["tokens"])


def test_eval_batches_cover_all_in_order(ds):
    batches = list(eval_batches(len(ds), 24))
    assert [len(b) for b in batches] == [24, 24, 16]
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(len(ds)))
    last = make_batch(ds, batches[-1], batch_size=24)
    assert last["weights"].sum() == 16 and last["tokens"].shape == (24, MAX_LEN)


def test_bucket_widths_double_from_the_smallest_up_to_the_full_length():
    assert bucket_widths(512, 128) == (128, 256, 512)
    assert bucket_widths(500, 128) == (128, 256, 500)
    assert bucket_widths(24, 128) == (24,)
    assert bucket_widths(24, 24) == (24,)


def test_half_step_widths_cost_at_most_one_and_a_half_times_the_longest_item():
    assert bucket_widths(512, 128, per_octave=2) == (128, 192, 256, 384, 512)
    widths = bucket_widths(4096, 128, per_octave=2)
    assert widths == (128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
    for longest in range(128, 4097):  # the first width that holds it, against its length
        chosen = min(w for w in widths if w >= longest)
        assert chosen <= 1.5 * longest


def test_quarter_octave_widths_cost_at_most_one_and_a_quarter_times_the_longest_item():
    widths = bucket_widths(1024, 128, per_octave=4)
    assert widths == (128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024)
    assert bucket_widths(700, 128, per_octave=4) == (128, 160, 192, 224, 256, 320, 384, 448,
                                                     512, 640, 700)  # fmt: skip
    for longest in range(128, 1025):
        chosen = min(w for w in widths if w >= longest)
        assert chosen <= 1.25 * longest
    assert bucket_widths(8, 1, per_octave=4) == (1, 2, 3, 4, 5, 6, 7, 8)  # no repeated width


def test_padded_batches_take_the_first_width_that_holds_their_longest_item(ds):
    widths = (4, 8, 16, MAX_LEN)
    for start in range(0, len(ds), 5):
        indices = np.arange(start, min(start + 5, len(ds)))
        batch = make_batch(ds, indices, 5, widths=widths)
        full = make_batch(ds, indices, 5)
        longest = int(ds.lengths[indices].max())
        width = batch["tokens"].shape[1]
        assert width == min(w for w in widths if w >= longest)  # brute force
        for key in ("tokens", "segment_ids", "positions"):  # the same rows, cropped
            np.testing.assert_array_equal(batch[key], full[key][:, :width])
        assert not full["segment_ids"][:, width:].any()  # only padding was cut


def test_a_batch_cropped_to_its_bucket_gives_the_full_width_losses():
    """Right padding after the answer cannot change a causal model's answer logits: the
    production eval step on the cropped rows equals the same rows at full width."""
    import jax

    from tests.production import production, random_batch

    _, model_state, steps = production({"data": 1, "fsdp": 1, "tensor": 1})
    state = model_state.init_state(jax.random.key(0))
    full = random_batch(seed=3, length=16)  # its longest item is 12 tokens
    longest = int(full["segment_ids"].sum(1).max())
    cropped = {k: (v[:, :longest] if v.ndim == 2 and v.shape[1] == 16 else v)
               for k, v in full.items()}  # fmt: skip
    a = jax.device_get(steps.evaluate(state.params, full, model_state.frozen))
    b = jax.device_get(steps.evaluate(state.params, cropped, model_state.frozen))
    assert cropped["tokens"].shape[1] < 16
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
