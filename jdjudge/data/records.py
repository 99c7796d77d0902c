"""The judgment record: one item, its label set, and how annotators split over the labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jdjudge.data.schema import (
    DataError,
    check_annotations,
    check_counts,
    check_distribution,
    check_fields,
    check_id,
    check_labels,
    check_meta,
    check_task,
    histogram,
)


@dataclass(frozen=True, eq=False)
class JudgmentRecord:
    """One judged item, validated on construction (a record that exists is a valid one).

    Counts, not a distribution, are the primary data: the annotation count n is what makes
    the empirical distribution a noisy estimate, and later code (per-item adversarial radius,
    metrics) needs it. A record may instead carry only ``distribution`` (counts None, n
    unknown), or only ``annotations`` (counts are then derived from them). When counts are
    present, ``distribution`` is always recomputed from them, so ``dataclasses.replace`` with
    new counts cannot leave a stale distribution behind.

    ``annotations`` keeps individual labels (for subsampling); ``true_distribution`` is the
    best-known distribution behind the counts: the generative truth of synthetic data, or the
    full-pool distribution of a subsampled record. ``meta`` is provenance (source ids, the
    split ``group``); it never affects training targets.
    """

    id: str
    task: str
    fields: Mapping[str, str]
    labels: tuple[str, ...]
    counts: tuple[int, ...] | None = None
    distribution: np.ndarray | Sequence[float] | None = None  # float64[K] once built (read-only)
    annotations: tuple[str, ...] | None = None
    true_distribution: tuple[float, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except DataError as error:
            raise error.at(f"record {self.id!r}") from None

    def _validate(self) -> None:
        put = object.__setattr__
        check_id(self.id)
        put(self, "fields", check_fields(check_task(self.task), self.fields))
        labels = check_labels(self.labels)
        put(self, "labels", labels)
        counts = None if self.counts is None else check_counts(self.counts, labels)
        if self.annotations is not None:
            annotations = check_annotations(self.annotations, labels)
            derived = histogram(annotations, labels)
            if counts is not None and counts != derived:
                raise DataError(
                    f"label counts {list(derived)} disagree with counts {list(counts)}",
                    field="annotations",
                )
            counts = derived
            put(self, "annotations", annotations)
        if counts is not None:
            dist = np.asarray(counts, dtype=np.float64) / sum(counts)
        elif self.distribution is not None:
            dist = np.asarray(check_distribution(self.distribution, labels, "distribution"))
        else:
            raise DataError("missing (give counts, distribution or annotations)", field="counts")
        dist.flags.writeable = False
        put(self, "counts", counts)
        put(self, "distribution", dist)
        if self.true_distribution is not None:
            truth = check_distribution(self.true_distribution, labels, "true_distribution")
            put(self, "true_distribution", truth)
        put(self, "meta", check_meta(self.meta))

    def _key(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.task,
            tuple(self.fields.items()),
            self.labels,
            self.counts,
            tuple(self.distribution.tolist()),
            self.annotations,
            self.true_distribution,
            self.meta,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JudgmentRecord):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.id, self.task, self.labels, self.counts))

    @property
    def num_annotators(self) -> int | None:
        """Total annotations n for this item; None for a distribution-only record."""
        return None if self.counts is None else int(sum(self.counts))

    @property
    def majority_index(self) -> int:
        """Index of the most frequent label; ties go to the lowest index (DESIGN.md §2)."""
        return int(np.argmax(self.distribution))

    @property
    def prompt_text(self) -> str:
        """The text of a single-field record (synthetic ``text``, raw ``prompt``).

        Multi-field records (NLI pairs, summaries with sources, ...) have no one text; render
        those with ``jdjudge.data.prompts.render_prompt``.
        """
        if len(self.fields) != 1:
            raise ValueError(
                f"record {self.id!r} (task {self.task!r}) has {len(self.fields)} text fields; "
                "render it with jdjudge.data.prompts.render_prompt"
            )
        return next(iter(self.fields.values()))
