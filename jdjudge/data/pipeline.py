"""From ``config.data`` (a ``DataConfig``) to tokenized train/validation/test splits, a tokenizer and label tokens.

Everything is loaded, validated and tokenized here, in memory, before the trainer writes
anything: a bad record anywhere stops the run with nothing half-written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from jdjudge.config.schema import DataConfig
from jdjudge.data.batching import EncodedDataset, encode_records
from jdjudge.data.loaders import load_records
from jdjudge.data.prompts import (
    check_answer_boundary,
    check_verbalizers,
    fit_to_max_length,
    label_layout,
    render_prompt,
    verbalizers,
)
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.splits import split_records, subsample_annotations
from jdjudge.data.stats import summarize
from jdjudge.data.synthetic import SyntheticTaskConfig, generate_records
from jdjudge.data.tokenizer import build_tokenizer, synthetic_tokenizer
from jdjudge.models.hub import resolve_model_dir

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class JudgmentData:
    """A task ready for the train step: tokenized splits, tokenizer and label-token layout."""

    name: str
    labels: tuple[str, ...]
    tokenizer: PreTrainedTokenizerBase
    label_token_ids: np.ndarray  # int32[K, S]
    synonym_mask: np.ndarray  # bool[K, S]
    splits: dict[str, EncodedDataset]
    summary: str  # printed before training: items, annotations, marginals, lengths

    @property
    def train(self) -> EncodedDataset:
        return self.splits["train"]

    @property
    def has_truth(self) -> bool:
        """Whether every item carries a reference distribution beyond its annotators (the
        synthetic truth, or the dense distribution behind subsampled annotations)."""
        return all(bool(ds.has_truth.all()) for ds in self.splits.values())


def _records(data: DataConfig) -> list[JudgmentRecord]:
    if data.name == "synthetic":
        task = SyntheticTaskConfig(
            num_items=int(data.num_items),
            num_annotators=int(data.num_annotators),
            seed=int(data.seed),
        )
        return generate_records(task)
    if not data.path:
        raise ValueError(f"data.path is required for dataset {data.name!r}")
    if not os.path.exists(data.path):
        raise ValueError(f"data.path={data.path!r}: no such file or directory")
    return load_records(data.name, data.path, **dict(data.options))


def _tokenizer(
    data: DataConfig, train: Sequence[JudgmentRecord], default: str
) -> PreTrainedTokenizerBase:
    """A saved tokenizer (``data.tokenizer``, else the model's own: a directory, hub id or a
    tokenizer.json); the synthetic tokenizer; or a word-level one built from the training
    prompts (the tiny model on real data)."""
    if data.tokenizer or default:
        path = str(data.tokenizer or default)
        try:
            if path.endswith(".json"):
                if not os.path.isfile(path):
                    raise FileNotFoundError("no such file")
                tokenizer = PreTrainedTokenizerFast(tokenizer_file=path)
            else:  # a directory or a hub id: a missing path or an offline Hub fails fast
                # imported here: AutoTokenizer imports torch where it is installed (~2.5 s
                # of every CLI start), and the embedded task's tokenizer does not need it
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(
                    resolve_model_dir(path), trust_remote_code=False
                )
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise ValueError(f"cannot load the tokenizer {path!r}: {first}") from None
        if tokenizer.pad_token_id is None:  # Llama-style tokenizers ship without one
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
        return tokenizer
    if data.name == "synthetic":
        return synthetic_tokenizer()
    words = [w.strip() for row in verbalizers(train[0].task, train[0].labels) for w in row]
    prompts = [render_prompt(record) for record in train]
    return build_tokenizer(corpus=prompts, extra_tokens=words)


def _label_tokens(
    tokenizer: PreTrainedTokenizerBase, record: JudgmentRecord, chat_template: bool
) -> tuple[np.ndarray, np.ndarray]:
    """int32[K, S] token ids of each label's verbalizers and the bool mask of real slots."""
    surfaces = verbalizers(record.task, record.labels, chat_template)
    rows = check_verbalizers(tokenizer, surfaces, record.labels)
    check_answer_boundary(tokenizer, render_prompt(record, tokenizer, chat_template), surfaces)
    return label_layout(rows)


def load_splits(data: DataConfig) -> dict[str, list[JudgmentRecord]]:
    """The records of the dataset named by ``data.name``, split and subsampled: the same
    items in the same splits for training and for ``jdjudge.evaluate``."""
    records = _records(data)
    splits = split_records(
        records,
        test_fraction=float(data.test_fraction),
        validation_fraction=float(data.validation_fraction),
    )
    if data.subsample:
        splits = {k: subsample_annotations(v, int(data.subsample), int(data.seed)) for k, v in splits.items()}  # fmt: skip
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise ValueError(f"{len(records)} items leave the {', '.join(empty)} split(s) empty")
    return splits


def build_judgment_data(data: DataConfig, default_tokenizer: str = "") -> JudgmentData:
    """Load, split, subsample, tokenize and check the dataset named by ``data.name``;
    ``default_tokenizer`` (the model's checkpoint) is used unless ``data.tokenizer`` is set."""
    splits = load_splits(data)
    chat = bool(data.chat_template)
    tokenizer = _tokenizer(data, splits["train"], default_tokenizer)
    label_ids, mask = _label_tokens(tokenizer, splits["train"][0], chat)
    add_bos = not chat and tokenizer.bos_token_id is not None
    max_length = int(data.max_length)
    encoded, lengths = {}, {}

    def render(record: JudgmentRecord) -> str:
        return render_prompt(record, tokenizer, chat)

    for name in SPLITS:
        fitted = fit_to_max_length(
            splits[name], tokenizer, max_length, truncate=bool(data.truncate),
            chat_template=chat, reserved=1 if add_bos else 0,
        )  # fmt: skip
        encoded[name] = encode_records(fitted, tokenizer, max_length, add_bos, render)
        lengths[name] = encoded[name].lengths.tolist()
    return JudgmentData(
        name=str(data.name),
        labels=tuple(splits["train"][0].labels),
        tokenizer=tokenizer,
        label_token_ids=label_ids,
        synonym_mask=mask,
        splits=encoded,
        summary=summarize(splits, lengths),
    )
