"""Checks of the synthetic task and its tokenizer against independent recomputation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from transformers import AutoTokenizer

from jdjudge.data.prompts import check_verbalizers, label_layout
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.synthetic import (
    LABELS,
    VERBALIZERS,
    SyntheticTaskConfig,
    build_lexicon,
    generate_records,
    render_prompt,
)
from jdjudge.data.tokenizer import synthetic_tokenizer

SMALL = SyntheticTaskConfig(num_items=300)


@pytest.fixture(scope="module")
def records() -> list[JudgmentRecord]:
    return generate_records(SMALL)


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer()


def test_same_config_gives_identical_records(records):
    again = generate_records(SMALL)
    assert pickle.dumps(again) == pickle.dumps(records)


def test_different_seed_gives_different_records(records):
    other = generate_records(SyntheticTaskConfig(num_items=300, seed=1))
    assert [r.prompt_text for r in other] != [r.prompt_text for r in records]


def test_ids_labels_and_lengths(records):
    assert [r.id for r in records[:3]] == ["syn-000000", "syn-000001", "syn-000002"]
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert r.labels == LABELS == ("positive", "neutral", "negative")
        assert SMALL.min_words <= len(r.prompt_text.split()) <= SMALL.max_words


def test_counts_and_distributions_are_valid(records):
    for r in records:
        assert r.num_annotators == SMALL.num_annotators
        assert all(c >= 0 for c in r.counts)
        assert r.distribution.dtype == np.float64
        np.testing.assert_allclose(r.distribution.sum(), 1.0, atol=1e-12)
        truth = np.asarray(r.true_distribution)
        assert np.all(truth > 0)
        np.testing.assert_allclose(truth.sum(), 1.0, atol=1e-12)


def test_truth_is_softmax_of_mean_word_vectors(records):
    lex = build_lexicon()
    index = {w: i for i, w in enumerate(lex.words)}
    for r in records:
        vecs = np.stack([lex.vectors[index[w]] for w in r.prompt_text.split()])
        logits = SMALL.temperature * vecs.sum(axis=0) / len(vecs)
        expected = np.exp(logits) / np.exp(logits).sum()
        np.testing.assert_allclose(r.true_distribution, expected, rtol=1e-10)


def test_truth_is_informative_but_not_trivial(records):
    truth = np.array([r.true_distribution for r in records])
    mean_max = truth.max(axis=1).mean()
    assert 0.6 < mean_max < 0.85
    assert (truth.max(axis=1) < 0.5).mean() > 0.05  # a real share of ambiguous items
    assert np.bincount(truth.argmax(axis=1), minlength=3).min() > 0.2 * len(truth)


def test_empirical_converges_to_truth_with_many_annotators():
    many = generate_records(SyntheticTaskConfig(num_items=200, num_annotators=2000, seed=3))
    emp = np.array([r.distribution for r in many])
    truth = np.array([r.true_distribution for r in many])
    tv = 0.5 * np.abs(emp - truth).sum(axis=1)
    assert tv.mean() < 0.05


def test_labels_are_single_tokens_and_prompts_have_no_unk(records, tokenizer):
    for verbalizer in VERBALIZERS:
        ids = tokenizer.encode(verbalizer, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id
    assert tokenizer.pad_token_id == 0
    for r in records:
        ids = tokenizer.encode(render_prompt(r.prompt_text), add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids
    assert render_prompt("x").endswith("Verdict:")


def test_tokenizer_is_deterministic(tokenizer):
    assert synthetic_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_tokenizer_save_and_reload_round_trip(tmp_path, records, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.pad_token_id == tokenizer.pad_token_id == 0
    assert reloaded.bos_token_id == tokenizer.bos_token_id
    assert reloaded.eos_token_id == tokenizer.eos_token_id
    assert reloaded.unk_token_id == tokenizer.unk_token_id
    for r in records[:50]:
        prompt = render_prompt(r.prompt_text)
        assert reloaded.encode(prompt, add_special_tokens=False) == tokenizer.encode(
            prompt, add_special_tokens=False
        )


def test_label_token_ids_with_synonyms(tokenizer):
    verbalizers = [[" positive"], [" neutral", "Verdict"], [" negative"]]
    ids, mask = label_layout(check_verbalizers(tokenizer, verbalizers, LABELS))
    assert ids.dtype == np.int32 and ids.shape == (3, 2)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, [[True, False], [True, True], [True, False]])
    expected = [tokenizer.convert_tokens_to_ids(w) for w in ("positive", "neutral", "negative")]
    np.testing.assert_array_equal(ids[:, 0], expected)
    assert ids[1, 1] == tokenizer.convert_tokens_to_ids("Verdict")


@pytest.mark.parametrize(
    "verbalizers, needle",
    [
        ([[" positive"], [" neutral"], [" very negative"]], "' very negative'"),
        ([[" positive"], [" neutral"], [" "]], "negative"),
        ([[" positive"], [" neutral"], [" nonsenseword"]], "has no token"),
        ([[" positive"], [" positive"], [" negative"]], "share the answer token"),
    ],
)
def test_label_token_ids_rejects_bad_verbalizers(tokenizer, verbalizers, needle):
    with pytest.raises(ValueError, match=needle) as info:
        check_verbalizers(tokenizer, verbalizers, LABELS)
    assert "label" in str(info.value)
