"""Static-shape numpy batches for the jitted train/eval step.

Every batch has the same shapes (B rows, L tokens) so the step compiles once: short final
batches are filled with copies of a real row at weight 0. Batch order is a pure function of
(seed, step), which is what makes a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from jdjudge.data.prompts import render_prompt
from jdjudge.data.records import JudgmentRecord

BATCH_KEYS: tuple[str, ...] = (
    "tokens",
    "segment_ids",
    "positions",
    "answer_index",
    "targets",
    "true_targets",
    "weights",
    "item_index",
)


@dataclass(frozen=True)
class EncodedDataset:
    """All N items tokenized once, as right-padded numpy arrays."""

    tokens: np.ndarray  # int32[N, L], right-padded with pad_id
    lengths: np.ndarray  # int32[N], real tokens per row (>= 1)
    targets: np.ndarray  # float32[N, K], empirical distributions c / n
    true_targets: np.ndarray  # float32[N, K], known truth, zeros where has_truth is False
    has_truth: np.ndarray  # bool[N]
    ids: list[str]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)


def _check_labels(records: Sequence[JudgmentRecord]) -> int:
    """All records must share one label set (one compiled K); returns K."""
    labels = records[0].labels
    for record in records:
        if record.labels != labels:
            raise ValueError(f"record {record.id!r} has labels {record.labels}, expected {labels}")
    return len(labels)


class PromptTooLong(ValueError):
    """A prompt over the token budget; carries the record id so a caller can name its line."""

    def __init__(self, record_id: str, length: int, max_length: int) -> None:
        super().__init__(
            f"record {record_id!r} prompt is {length} tokens, over max_length={max_length}"
        )
        self.record_id, self.length, self.max_length = record_id, length, max_length


def encode_records(
    records: Sequence[JudgmentRecord],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    add_bos: bool = True,
    render: Callable[[JudgmentRecord], str] = render_prompt,
) -> EncodedDataset:
    """Render, tokenize and pad every record; a prompt over ``max_length`` tokens is an error.

    Truncation is never silent: cutting a prompt would cut the text right before the answer
    (``prompts.fit_to_max_length`` cuts a task's long field instead, when asked to).
    ``render`` turns a record into its full prompt (default: the task's template).
    """
    if not records:
        raise ValueError("no records to encode")
    k = _check_labels(records)
    pad_id = tokenizer.pad_token_id
    if pad_id is None or (add_bos and tokenizer.bos_token_id is None):
        raise ValueError("tokenizer needs a pad token (and a bos token when add_bos=True)")
    n = len(records)
    tokens = np.full((n, max_length), pad_id, dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    targets = np.zeros((n, k), dtype=np.float32)
    true_targets = np.zeros((n, k), dtype=np.float32)
    has_truth = np.zeros(n, dtype=bool)
    encoded = tokenizer([render(r) for r in records], add_special_tokens=False)["input_ids"]
    for i, (record, ids) in enumerate(zip(records, encoded, strict=True)):
        if add_bos:
            ids = [tokenizer.bos_token_id, *ids]
        if not ids:
            raise ValueError(f"record {record.id!r} encodes to an empty prompt")
        if len(ids) > max_length:
            raise PromptTooLong(record.id, len(ids), max_length)
        tokens[i, : len(ids)] = ids
        lengths[i] = len(ids)
        targets[i] = record.distribution
        if record.true_distribution is not None:
            true_targets[i] = record.true_distribution
            has_truth[i] = True
    return EncodedDataset(
        tokens=tokens,
        lengths=lengths,
        targets=targets,
        true_targets=true_targets,
        has_truth=has_truth,
        ids=[r.id for r in records],
        pad_id=int(pad_id),
    )


def bucket_widths(full: int, smallest: int, per_octave: int = 1) -> tuple[int, ...]:
    """Row widths: ``smallest``·2^k·(1 + i/``per_octave``) for i < ``per_octave`` below
    ``full``, then ``full`` (1: powers of two; 2: also ·1.5; 4: ·1.25, ·1.5, ·1.75). A batch
    padded to the first width that holds its longest item then costs at most 1 + 1/per_octave
    times the batch's own maximum, while only about per_octave·log2(full / smallest) programs
    compile."""
    if smallest < 1 or full < 1 or per_octave < 1:
        raise ValueError(f"widths need >= 1, got {smallest=}, {full=}, {per_octave=}")
    widths, octave = [], smallest
    while octave < full:
        steps = {octave * (per_octave + i) // per_octave for i in range(per_octave)}
        widths.extend(sorted(w for w in steps if w < full))
        octave *= 2
    return (*widths, full)


def _cropped_length(
    longest: int, full: int, pad_multiple: int | None, widths: Sequence[int] | None
) -> int:
    """The first of ``widths`` that holds ``longest``; else the smallest multiple of
    ``pad_multiple`` >= longest; capped at the dataset's L."""
    if widths is not None:
        return min([w for w in widths if w >= longest] or [full])
    if pad_multiple is None:
        return full
    return min(full, -(-longest // pad_multiple) * pad_multiple)


def make_batch(
    ds: EncodedDataset,
    indices: np.ndarray,
    batch_size: int,
    pad_multiple: int | None = None,
    widths: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """The step's input for rows ``indices``, filled to ``batch_size`` rows at weight 0.

    L stays the dataset's max_length by default (one compiled shape). With ``widths`` (see
    ``bucket_widths``) L is the first width that holds the batch's longest item: a few
    compiled shapes. With ``pad_multiple`` (e.g. 16) L is cropped to the smallest multiple of
    it that holds the longest item: least padding, one compilation per distinct L.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not 1 <= len(indices) <= batch_size:
        raise ValueError(f"need 1..{batch_size} indices, got {len(indices)}")
    real = len(indices)
    rows = np.concatenate([indices, np.full(batch_size - real, indices[0], dtype=np.int64)])
    lengths = ds.lengths[rows]
    seq_len = _cropped_length(int(lengths.max()), ds.tokens.shape[1], pad_multiple, widths)
    arange = np.arange(seq_len, dtype=np.int32)[None, :]
    is_real = arange < lengths[:, None]
    weights = np.zeros(batch_size, dtype=np.float32)
    weights[:real] = 1.0
    return {
        "tokens": ds.tokens[rows, :seq_len].astype(np.int32),
        "segment_ids": is_real.astype(np.int32),
        "positions": np.where(is_real, arange, 0).astype(np.int32),
        "answer_index": (lengths - 1).astype(np.int32),
        "targets": ds.targets[rows].astype(np.float32),
        "true_targets": ds.true_targets[rows].astype(np.float32),
        "weights": weights,
        "item_index": np.where(weights > 0, rows, -1).astype(np.int32),
    }


def _epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def train_batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of training batch ``step``: a pure function of (seed, step), for exact resume.

    The stream is the concatenation of per-epoch permutations (epoch e shuffled by
    default_rng([seed, e])); batch ``step`` is its slice [step*B, (step+1)*B), so a batch that
    crosses an epoch boundary takes the tail of one permutation and the head of the next.
    """
    if num_items < 1 or batch_size < 1 or step < 0 or seed < 0:
        raise ValueError(f"bad arguments: {num_items=}, {batch_size=}, {seed=}, {step=}")
    start = step * batch_size  # Python int: no overflow for any step
    parts, filled = [], 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, num_items)
        take = min(batch_size - filled, num_items - offset)
        parts.append(_epoch_permutation(num_items, seed, epoch)[offset : offset + take])
        filled += take
    return np.concatenate(parts).astype(np.int64)


def eval_batches(num_items: int, batch_size: int) -> Iterator[np.ndarray]:
    """Sequential index batches over all items; the last may be short (make_batch fills it)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, num_items, batch_size):
        yield np.arange(start, min(start + batch_size, num_items), dtype=np.int64)


def random_full_rows(
    vocab_size: int, rows: int, length: int, num_labels: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """A batch of ``rows`` full rows of random tokens, one item per row answering at its last
    token: for cost analysis, benchmarks and memory plans, where only shapes and work matter."""
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.integers(0, vocab_size, (rows, length)).astype(np.int32),
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
        "answer_index": np.full(rows, length - 1, np.int32),
        "targets": rng.dirichlet(np.ones(num_labels), rows).astype(np.float32),
        "weights": np.ones(rows, np.float32),
        "item_index": np.arange(rows, dtype=np.int32),
    }
