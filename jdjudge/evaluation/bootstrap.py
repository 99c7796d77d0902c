"""Seeded item bootstrap: percentile intervals for a split's metrics, and a paired bootstrap
for the difference between two judges on the same items.

Items are resampled with replacement ``samples`` times from one seeded generator, so a
report's intervals are reproducible to the digit. The same index matrix serves every metric
(their intervals describe one set of resamples), and the paired bootstrap resamples item
*pairs*, which is what makes a small but consistent difference visible where two separate
intervals overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Bootstrap:
    samples: int = 1000
    seed: int = 0
    level: float = 0.95

    def indices(self, n: int) -> np.ndarray:
        """int[samples, n]: each row one resample of the n items."""
        return np.random.default_rng(self.seed).integers(0, n, size=(self.samples, n))

    def interval(self, estimates: np.ndarray) -> tuple[float, float]:
        """The percentile interval of bootstrap estimates (non-finite ones drop out)."""
        finite = np.asarray(estimates, np.float64)
        finite = finite[np.isfinite(finite)]
        if not len(finite):
            return float("nan"), float("nan")
        tail = 100 * (1 - self.level) / 2
        low, high = np.percentile(finite, [tail, 100 - tail])
        return float(low), float(high)

    def describe(self) -> dict[str, float]:
        return {"samples": self.samples, "seed": self.seed, "level": self.level}


def mean_estimates(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[B] means of per-item ``values`` over each resample."""
    return np.asarray(values, np.float64)[index].mean(axis=-1)


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r along the last axis (nan where a row is constant)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def with_interval(value: float, estimates: np.ndarray, boot: Bootstrap) -> dict[str, float]:
    low, high = boot.interval(estimates)
    return {"value": float(value), "low": low, "high": high}


def paired_difference(a: np.ndarray, b: np.ndarray, boot: Bootstrap) -> dict[str, float]:
    """mean(a − b) over shared items with its paired interval, and the share of resamples
    in which the difference is ≥ 0 (a one-sided bootstrap p-value for "a is lower")."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    estimates = mean_estimates(diff, boot.indices(len(diff)))
    finite = estimates[np.isfinite(estimates)]
    return {
        **with_interval(float(diff.mean()), estimates, boot),
        "share_not_below_zero": float((finite >= 0).mean()) if len(finite) else float("nan"),
        "items": len(diff),
    }
