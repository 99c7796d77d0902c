"""From ``config.data`` to encoded train/eval splits, a tokenizer and the label tokens.

Everything is built and validated here, in memory, before the trainer writes anything: a
dataset that fails to load stops the run with nothing half-written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ml_collections import ConfigDict
from transformers import PreTrainedTokenizerBase

from jdjudge.data.batching import EncodedDataset, encode_records
from jdjudge.data.synthetic import (
    LABELS,
    VERBALIZERS,
    SyntheticTaskConfig,
    generate_records,
    split_records,
)
from jdjudge.data.tokenizer import label_token_ids, synthetic_tokenizer


@dataclass(frozen=True)
class JudgmentData:
    """A task ready for the train step: splits, tokenizer and label-token layout."""

    labels: tuple[str, ...]
    tokenizer: PreTrainedTokenizerBase
    label_token_ids: np.ndarray  # int32[K, S]
    synonym_mask: np.ndarray  # bool[K, S]
    train: EncodedDataset
    eval: EncodedDataset

    @property
    def has_truth(self) -> bool:
        """Whether every item carries a known true distribution (synthetic data does)."""
        return bool(self.train.has_truth.all() and self.eval.has_truth.all())


def build_judgment_data(data: ConfigDict) -> JudgmentData:
    """Build the dataset named by ``data.name``."""
    if data.name != "synthetic":
        raise ValueError(f"data.name={data.name!r}: unknown dataset; supported: ('synthetic',)")
    task = SyntheticTaskConfig(
        num_items=int(data.num_items), num_annotators=int(data.num_annotators), seed=int(data.seed)
    )
    records = generate_records(task)
    train_records, eval_records = split_records(records, eval_fraction=float(data.eval_fraction))
    if not train_records or not eval_records:
        raise ValueError(
            f"data.num_items={data.num_items} with eval_fraction={data.eval_fraction} leaves an "
            "empty split"
        )
    tokenizer = synthetic_tokenizer()
    ids, mask = label_token_ids(tokenizer, [[v] for v in VERBALIZERS], labels=LABELS)
    max_length = int(data.max_length)
    return JudgmentData(
        labels=LABELS,
        tokenizer=tokenizer,
        label_token_ids=ids,
        synonym_mask=mask,
        train=encode_records(train_records, tokenizer, max_length),
        eval=encode_records(eval_records, tokenizer, max_length),
    )
