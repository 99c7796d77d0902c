"""The judgment record: one item, its label set, and how annotators split over the labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JudgmentRecord:
    """One judged item.

    Counts, not a distribution, are the primary data: the annotation count n is what makes
    the empirical distribution a noisy estimate, and later code (per-item adversarial radius,
    metrics) needs it. ``true_distribution`` exists only for synthetic data, where the truth
    behind the annotators is known.
    """

    id: str
    prompt_text: str
    labels: tuple[str, ...]
    counts: tuple[int, ...]
    true_distribution: tuple[float, ...] | None = None

    @property
    def num_annotators(self) -> int:
        """Total annotations n for this item."""
        return int(sum(self.counts))

    @property
    def distribution(self) -> np.ndarray:
        """Empirical label distribution p_k = c_k / n (float64, sums to 1)."""
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum()
