"""A synthetic judgment task whose true label distribution is known exactly.

Items are short "reviews" made of invented words. Each word carries a weight vector over
the K labels; an item's true distribution is softmax(temperature * mean of its word vectors),
and n simulated annotators are drawn from that truth. Because the truth is known, experiments
can separate "the model fits the annotators" from "the model recovers the truth", and
tests can check the data against an independent recomputation.

Everything is deterministic: the lexicon from a fixed seed (so the vocabulary, and therefore
the tokenizer, is the same for every task seed), the items and annotators from ``cfg.seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jdjudge.data.records import JudgmentRecord

LABELS: tuple[str, ...] = ("positive", "neutral", "negative")
VERBALIZERS: tuple[str, ...] = tuple(f" {label}" for label in LABELS)
PROMPT_TEMPLATE = "Review: {text}\nVerdict:"

LEXICON_SEED = 20250512
LEXICON_SIZE = 150
# Word classes of the lexicon: per label "strong" words, words mixed between two labels,
# and near-zero fillers. Strong words make truths informative; mixed words and fillers make
# a real share of items ambiguous.
_STRONG_PER_LABEL = 35
_MIXED_PER_PAIR = 9

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "s")


@dataclass(frozen=True)
class SyntheticTaskConfig:
    """Size, annotation budget and difficulty of the synthetic task.

    ``temperature`` scales the mean word vector into logits: higher means sharper truths.
    ``topic_strength`` bounds how strongly an item's words follow its latent topic label;
    each item draws its own strength uniformly from that range, so some items are clear
    and some are ambiguous.
    """

    num_items: int = 2400
    num_annotators: int = 5
    seed: int = 0
    min_words: int = 4
    max_words: int = 10
    temperature: float = 2.0
    topic_strength: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class Lexicon:
    """Invented words and their K-dim label weight vectors (row i belongs to words[i])."""

    words: tuple[str, ...]
    vectors: np.ndarray  # float64[V, K]
    leaning: np.ndarray  # int64[V]: label a strong word favours, -1 for mixed/filler words


def _invent_words(rng: np.random.Generator, count: int) -> tuple[str, ...]:
    """Unique pronounceable 2-3 syllable words that cannot clash with prompt or label words."""
    reserved = {w.lower() for w in (*LABELS, "review", "verdict")}
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        syllables = int(rng.integers(2, 4))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syllables)
        )
        if word not in seen and word not in reserved:
            seen.add(word)
            words.append(word)
    return tuple(words)


def build_lexicon(seed: int = LEXICON_SEED) -> Lexicon:
    """The fixed lexicon: strong words per label, two-label mixed words, near-zero fillers."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    words = _invent_words(rng, LEXICON_SIZE)
    vectors, leaning = [], []
    for label in range(k):
        for _ in range(_STRONG_PER_LABEL):
            vec = rng.normal(0.0, 0.25, size=k)
            vec[label] += rng.uniform(1.2, 2.4)
            vectors.append(vec)
            leaning.append(label)
    for a in range(k):
        for b in range(a + 1, k):
            for _ in range(_MIXED_PER_PAIR):
                vec = rng.normal(0.0, 0.2, size=k)
                vec[[a, b]] += rng.uniform(0.6, 1.2)
                vectors.append(vec)
                leaning.append(-1)
    while len(vectors) < LEXICON_SIZE:
        vectors.append(rng.normal(0.0, 0.15, size=k))
        leaning.append(-1)
    order = rng.permutation(LEXICON_SIZE)  # interleave classes so word shape says nothing
    return Lexicon(
        words=words,
        vectors=np.asarray(vectors, dtype=np.float64)[order],
        leaning=np.asarray(leaning, dtype=np.int64)[order],
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def true_distribution(word_ids: Sequence[int], lexicon: Lexicon, temperature: float) -> np.ndarray:
    """softmax(temperature * mean of the words' vectors): the generative truth of one item."""
    return softmax(temperature * lexicon.vectors[np.asarray(word_ids)].mean(axis=0))


def _sample_words(rng: np.random.Generator, cfg: SyntheticTaskConfig, lex: Lexicon) -> np.ndarray:
    """Word ids of one item: each word follows the item's topic label with its own strength."""
    topic = int(rng.integers(len(LABELS)))
    strength = rng.uniform(*cfg.topic_strength)
    length = int(rng.integers(cfg.min_words, cfg.max_words + 1))
    on_topic = np.flatnonzero(lex.leaning == topic)
    follow = rng.random(length) < strength
    from_topic = rng.choice(on_topic, size=length)
    from_all = rng.integers(len(lex.words), size=length)
    return np.where(follow, from_topic, from_all)


def generate_records(cfg: SyntheticTaskConfig) -> list[JudgmentRecord]:
    """The synthetic dataset: same cfg, byte-identical records in any process."""
    if not 1 <= cfg.min_words <= cfg.max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {cfg.min_words}, {cfg.max_words}")
    if cfg.num_annotators < 1:
        raise ValueError(f"num_annotators must be >= 1, got {cfg.num_annotators}")
    lex = build_lexicon()
    rng = np.random.default_rng(cfg.seed)
    records = []
    for i in range(cfg.num_items):
        word_ids = _sample_words(rng, cfg, lex)
        truth = true_distribution(word_ids, lex, cfg.temperature)
        counts = rng.multinomial(cfg.num_annotators, truth)
        records.append(
            JudgmentRecord(
                id=f"syn-{i:06d}",
                task="synthetic",
                fields={"text": " ".join(lex.words[j] for j in word_ids)},
                labels=LABELS,
                counts=tuple(int(c) for c in counts),
                true_distribution=tuple(float(p) for p in truth),
            )
        )
    return records


def render_prompt(text: str) -> str:
    """The judge prompt; it ends right before the answer so the next token is the label."""
    return PROMPT_TEMPLATE.format(text=text)


def prompt_words() -> tuple[str, ...]:
    """Template words outside the lexicon, which the tokenizer must know."""
    return ("Review", ":", "Verdict")
