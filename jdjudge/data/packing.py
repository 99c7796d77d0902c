"""Packed batches: several items per row, from a small set of static shapes.

Right-padded batches spend most of their compute on padding when prompt lengths vary. Here
items are concatenated into rows (segment ids 1..n, positions restarting per item; the decoder
attends only within a segment), so nearly every computed token is real, and a few length
buckets bound the number of compilations. Order is a pure function of (seed, epoch, step), so
a resumed run sees the same batches. numpy only: every process builds the same global batch
and keeps its share of the rows (``sources.process_rows``). Algorithm and shape set:
docs/batching.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from jdjudge.data.batching import BATCH_KEYS, bucket_widths

# The same keys as padded batches: one train step consumes both layouts.
PACKED_KEYS: tuple[str, ...] = BATCH_KEYS


@dataclass(frozen=True)
class PackingConfig:
    """Knobs of the packer; the defaults suit Llama-tokenized judge prompts."""

    tokens_per_batch: int = 16384  # R·L per batch, approximately, for every bucket
    min_length: int = 128  # smallest bucket
    max_length: int = 4096  # largest bucket; a longer item is an error
    bucket_multiple: int | None = None  # None: powers of two; else multiples of this
    row_length: int | None = None  # L of full batches; None: auto (see main_row_length)
    auto_items_per_row: float = 4.0  # auto L holds this many mean-length items
    max_items_per_row: int = 64  # cap on N (slots per row)
    window_items: int = 1024  # items sorted and packed together (larger: tighter, less random)
    rows_multiple: int = 1  # R is a multiple of this (process count x data-parallel devices)
    pad_id: int = 0

    def __post_init__(self) -> None:
        positive = ("tokens_per_batch", "min_length", "max_items_per_row", "window_items")
        bad = [name for name in (*positive, "rows_multiple") if getattr(self, name) < 1]
        if bad or self.min_length > self.max_length or (self.bucket_multiple or 1) < 1:
            raise ValueError(f"bad PackingConfig {bad or ''}: {self}")
        if self.auto_items_per_row <= 0:
            raise ValueError(f"auto_items_per_row must be > 0, got {self.auto_items_per_row}")

    def buckets(self) -> tuple[int, ...]:
        """Allowed row lengths, ascending; max_length is always one of them."""
        lo, hi, step = self.min_length, self.max_length, self.bucket_multiple
        if step is None:
            return bucket_widths(hi, lo)
        return (*range(lo, hi, step), hi)


@dataclass(frozen=True)
class BatchShape:
    """One compiled shape: rows R, row length L, item slots per row N."""

    rows: int
    length: int
    slots: int


@dataclass(frozen=True)
class PackedDataset:
    """Variable-length items stored flat (tokens of item i: flat[offsets[i]:offsets[i+1]])."""

    flat: np.ndarray  # int32[total tokens]
    offsets: np.ndarray  # int64[n + 1]
    targets: np.ndarray  # float32[n, K]
    true_targets: np.ndarray  # float32[n, K]; zeros where unknown
    ids: tuple[str, ...]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.ids)

    def ids_of(self, item_index: np.ndarray) -> list[str]:
        """Ids of a batch's real items (for naming the items of a batch that went bad)."""
        return [self.ids[i] for i in np.asarray(item_index).ravel() if i >= 0]

    @classmethod
    def from_sequences(
        cls,
        sequences: Sequence[Sequence[int]],
        targets: np.ndarray,
        ids: Sequence[str],
        true_targets: np.ndarray | None = None,
    ) -> PackedDataset:
        """Validate and store items; each item's answer position is its last token."""
        n = len(sequences)
        targets = np.asarray(targets, dtype=np.float32)
        if n == 0 or len(ids) != n or targets.ndim != 2 or len(targets) != n:
            raise ValueError(f"need n >= 1 items with ids and targets [n, K]; got {n=}")
        if len(set(ids)) != n:
            raise ValueError("item ids must be unique: they name the items of a bad batch")
        truth = np.zeros_like(targets) if true_targets is None else true_targets
        truth = np.asarray(truth, dtype=np.float32)
        if truth.shape != targets.shape:
            raise ValueError(f"true_targets {truth.shape} != targets {targets.shape}")
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError(f"item {ids[int(np.argmin(lengths))]!r} has no tokens")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate([np.asarray(s, dtype=np.int32).reshape(-1) for s in sequences])
        return cls(flat, offsets, targets, truth, tuple(ids))

    @classmethod
    def from_padded(cls, encoded: object) -> PackedDataset:
        """From a right-padded ``batching.EncodedDataset`` (duck-typed: no import needed)."""
        rows = [row[:n] for row, n in zip(encoded.tokens, encoded.lengths, strict=True)]
        truth = np.where(encoded.has_truth[:, None], encoded.true_targets, 0.0)
        return cls.from_sequences(rows, encoded.targets, encoded.ids, truth)


def main_row_length(config: PackingConfig, lengths: np.ndarray, ids: Sequence[str]) -> int:
    """L of full batches: ``row_length``, or the smallest bucket holding the longest item and
    ``auto_items_per_row`` mean-length items (longer rows pack tighter but cost attention
    work per token ∝ L). An item over the largest bucket is an error."""
    buckets = config.buckets()
    longest = int(np.argmax(lengths))
    if lengths[longest] > buckets[-1]:
        raise ValueError(
            f"item {ids[longest]!r} has {int(lengths[longest])} tokens, over the largest "
            f"bucket {buckets[-1]} (raise max_length)"
        )
    if config.row_length is not None:
        if config.row_length not in buckets or config.row_length < lengths[longest]:
            raise ValueError(f"row_length {config.row_length} must be a bucket >= longest item")
        return config.row_length
    want = max(int(lengths[longest]), config.auto_items_per_row * float(lengths.mean()))
    return next((b for b in buckets if b >= want), buckets[-1])


def shape_set(config: PackingConfig, lengths: np.ndarray, ids: Sequence[str]) -> list[BatchShape]:
    """Every shape a batch can have, ascending in L; the last is the full-batch shape.

    R·L ≈ tokens_per_batch (R a multiple of rows_multiple); N never binds below
    max_items_per_row: a row of L tokens holds at most L // shortest items.
    """
    top = main_row_length(config, lengths, ids)
    shortest, m = int(lengths.min()), config.rows_multiple
    shapes = []
    for length in (b for b in config.buckets() if b <= top):
        rows = max(m, config.tokens_per_batch // length // m * m)
        slots = max(1, min(config.max_items_per_row, length // shortest))
        shapes.append(BatchShape(rows, length, slots))
    return shapes


def best_fit_decreasing(
    items: np.ndarray, lengths: np.ndarray, capacity: int, max_items: int
) -> list[list[int]]:
    """Rows of item indices: longest first, each into the fullest row it still fits."""
    order = items[np.argsort(-lengths[items], kind="stable")]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining tokens, row) of rows still open, sorted
    for item in order.tolist():
        size = int(lengths[item])
        if size > capacity:
            raise ValueError(f"item {item} has {size} tokens, over the row length {capacity}")
        k = bisect.bisect_left(free, (size, -1))
        if k < len(free):
            remaining, row = free.pop(k)
        else:
            remaining, row = capacity, len(rows)
            rows.append([])
        rows[row].append(item)
        remaining -= size
        if remaining > 0 and len(rows[row]) < max_items:
            bisect.insort(free, (remaining, row))
    return rows


def _to_index(rows: Sequence[Sequence[int]], shape: BatchShape) -> np.ndarray:
    """int32[R, N] item indices, −1 in empty slots and rows."""
    index = np.full((shape.rows, shape.slots), -1, dtype=np.int32)
    for r, row in enumerate(rows):
        index[r, : len(row)] = row
    return index


def _tail(items: np.ndarray, lengths: np.ndarray, shapes: list[BatchShape]) -> list:
    """An epoch's leftover items: in the smallest shape that holds them in one batch, else
    in as many full-shape batches as they need."""
    for shape in (s for s in shapes if s.length >= lengths[items].max()):
        rows = best_fit_decreasing(items, lengths, shape.length, shape.slots)
        if len(rows) <= shape.rows:
            return [(shape, _to_index(rows, shape))]
    main = shapes[-1]
    rows = best_fit_decreasing(items, lengths, main.length, main.slots)
    return [
        (main, _to_index(rows[i : i + main.rows], main)) for i in range(0, len(rows), main.rows)
    ]


def plan_epoch(
    order: np.ndarray,
    lengths: np.ndarray,
    shapes: list[BatchShape],
    window_items: int,
    rng: np.random.Generator | None,
) -> list[tuple[BatchShape, np.ndarray]]:
    """(shape, item_index) per batch, covering ``order`` exactly once.

    Windows of ``order`` are packed into full-length rows; whole batches of the fullest rows
    are emitted (rows shuffled by ``rng`` when given), and the least-full rows' items carry
    into the next window, so only the epoch's last batch is partly empty.
    """
    main, plan = shapes[-1], []
    carry = np.empty(0, dtype=np.int64)
    for start in range(0, len(order), window_items):
        items = np.concatenate([carry, order[start : start + window_items]])
        rows = best_fit_decreasing(items, lengths, main.length, main.slots)
        fill = np.array([lengths[row].sum() for row in rows])
        by_fill = np.argsort(-fill, kind="stable")
        keep = np.sort(by_fill[: len(rows) // main.rows * main.rows])
        carry = np.array([i for r in by_fill[len(keep) :] for i in rows[r]], dtype=np.int64)
        if rng is not None:
            keep = rng.permutation(keep)
        for b in range(0, len(keep), main.rows):
            plan.append((main, _to_index([rows[r] for r in keep[b : b + main.rows]], main)))
    return plan + (_tail(carry, lengths, shapes) if len(carry) else [])


def materialize(ds: PackedDataset, index: np.ndarray, length: int, pad_id: int = 0) -> dict:
    """Arrays for the rows of ``index`` (int32[R, N], −1 = empty): see PACKED_KEYS."""
    rows, slots = index.shape
    tokens = np.full((rows, length), pad_id, dtype=np.int32)
    segment_ids = np.zeros((rows, length), dtype=np.int32)
    positions = np.zeros((rows, length), dtype=np.int32)
    answer_index = np.zeros((rows, slots), dtype=np.int32)
    for r, s in zip(*np.nonzero(index >= 0), strict=True):  # row-major: slots in order
        item = index[r, s]
        lo, hi = ds.offsets[item], ds.offsets[item + 1]
        col = 0 if s == 0 else answer_index[r, s - 1] + 1
        tokens[r, col : col + hi - lo] = ds.flat[lo:hi]
        segment_ids[r, col : col + hi - lo] = s + 1
        positions[r, col : col + hi - lo] = np.arange(hi - lo)
        answer_index[r, s] = col + hi - lo - 1
    valid = index >= 0
    safe = np.where(valid, index, 0)
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "positions": positions,
        "answer_index": answer_index,
        "targets": np.where(valid[..., None], ds.targets[safe], 0.0).astype(np.float32),
        "true_targets": np.where(valid[..., None], ds.true_targets[safe], 0.0).astype(np.float32),
        "weights": valid.astype(np.float32),
        "item_index": index.astype(np.int32),
    }


def efficiency(batches: Iterable[dict[str, np.ndarray]]) -> float:
    """Real tokens / computed tokens (Σ R·L) over the batches."""
    real = computed = 0
    for batch in batches:
        real += int(np.count_nonzero(batch["segment_ids"]))
        computed += batch["segment_ids"].size
    return real / max(computed, 1)


class PackedLoader:
    """Training batches by step (exact resume) and one fixed-order pass for evaluation.

    Step s of epoch e: epochs are planned in order from their lengths only (cheap numpy and
    list arithmetic, cached), so locating a step never depends on what was requested before.
    """

    def __init__(self, ds: PackedDataset, config: PackingConfig, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.ds, self.config, self.seed = ds, config, seed
        self.lengths = ds.lengths
        self.shapes = shape_set(config, self.lengths, ds.ids)
        self._epoch_sizes: list[int] = []
        self._cached: tuple[int, list] | None = None

    def plan(self, epoch: int) -> list[tuple[BatchShape, np.ndarray]]:
        """The batches of training epoch ``epoch`` (items permuted by rng([seed, epoch]))."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ds))
        rows_rng = np.random.default_rng([self.seed, epoch, 1])
        plan = plan_epoch(order, self.lengths, self.shapes, self.config.window_items, rows_rng)
        self._cached = (epoch, plan)
        return plan

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch within epoch) of global step ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch = 0
        while True:
            if epoch == len(self._epoch_sizes):
                self._epoch_sizes.append(len(self.plan(epoch)))
            if step < self._epoch_sizes[epoch]:
                return epoch, step
            step -= self._epoch_sizes[epoch]
            epoch += 1

    def batch_for_step(self, step: int) -> dict:
        """The global training batch of ``step``."""
        epoch, k = self.locate(step)
        return self._build(*self.plan(epoch)[k])

    def eval_batches(self) -> Iterator[dict]:
        """Every item exactly once, in dataset order (windows packed, rows not shuffled)."""
        order = np.arange(len(self.ds))
        for planned in plan_epoch(order, self.lengths, self.shapes, self.config.window_items, None):
            yield self._build(*planned)

    def _build(self, shape: BatchShape, index: np.ndarray) -> dict:
        return materialize(self.ds, index, shape.length, self.config.pad_id)
