"""An offline word-level tokenizer, for the synthetic task and the tiny model on real data.

The Hub is unreachable, so the embedded task ships its own tokenizer built with the
``tokenizers`` library and wrapped as a ``PreTrainedTokenizerFast``: the rest of jdjudge then
treats it exactly like a downloaded Hugging Face tokenizer (save_pretrained/AutoTokenizer).
The vocabulary is built explicitly (specials, then extra tokens, then corpus tokens ordered by
frequency and spelling) rather than by a trainer, so the ids are the same on every build.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jdjudge.data.synthetic import (
    LABELS,
    build_lexicon,
    prompt_words,
)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)  # ids 0..3, pad first so pad id is 0


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on whitespace and punctuation, so " positive" and "positive" are one token."""
    return pre_tokenizers.Whitespace()


def _pieces(text: str) -> list[str]:
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def build_vocab(corpus: Iterable[str], extra_tokens: Sequence[str] = ()) -> dict[str, int]:
    """Deterministic vocab: specials, extra tokens in order, then corpus pieces by (-count, str)."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *extra_tokens):
        for piece in _pieces(token) if token not in SPECIAL_TOKENS else [token]:
            vocab.setdefault(piece, len(vocab))
    counts = Counter(piece for text in corpus for piece in _pieces(text))
    for piece, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        vocab.setdefault(piece, len(vocab))
    return vocab


def build_tokenizer(
    corpus: Iterable[str], extra_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``corpus`` (plus ``extra_tokens``, e.g. label words).

    No post-processor: encoding never adds special tokens by itself; callers that want
    ``<bos>`` prepend it explicitly, so the label lookup and the prompt encoding agree.
    """
    vocab = build_vocab(corpus, extra_tokens)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
    )


def synthetic_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer for the synthetic task: template words, labels, then the whole lexicon.

    Built from the fixed lexicon, not from sampled items, so it is the same for every task
    seed and size and never meets an unknown word.
    """
    words = build_lexicon().words
    return build_tokenizer(corpus=[], extra_tokens=(*prompt_words(), *LABELS, *sorted(words)))
