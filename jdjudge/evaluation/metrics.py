"""Judge metrics as pure numpy functions of the human distributions p and the judge's q.

Per-item functions return one value per item ([N]); a split's metric is their mean, which
is what makes the item bootstrap (``bootstrap.py``) a matter of resampling rows. The
non-additive metrics (ECE, correlations) take index arrays the same way. Logs are natural
(nats), as in training; 0·log 0 = 0, and p > 0 where q = 0 gives KL = inf (it is reported,
never clipped away). The majority label is the lowest-index argmax of p, the rule training
uses (DESIGN.md §2), so evaluation accuracy is training's accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 15


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x·log y with 0·log y = 0 for any y (also y = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)


def entropy(p: np.ndarray) -> np.ndarray:
    """H(p) per row, in nats."""
    return -_xlogy(p, p).sum(axis=-1)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row: Σ p log p − Σ p log q."""
    return (_xlogy(p, p) - _xlogy(p, q)).sum(axis=-1)


def js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row (nats, at most log 2): finite even where q = 0."""
    m = 0.5 * (p + q)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(axis=-1)


def majority(p: np.ndarray) -> np.ndarray:
    """The majority label per row (ties: the lowest index, as in training)."""
    return np.argmax(p, axis=-1)


def correct(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """1.0 where the judge's top label is the human majority."""
    return (np.argmax(q, axis=-1) == majority(p)).astype(np.float64)


def nll_majority(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """−log q(majority): the single-point objective's loss."""
    picked = np.take_along_axis(q, majority(p)[:, None], axis=-1)[:, 0]
    with np.errstate(divide="ignore"):
        return -np.log(picked)


def brier(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Σ_k (q_k − 1[k = majority])²: the multi-class Brier score against the majority."""
    onehot = np.eye(p.shape[-1])[majority(p)]
    return ((q - onehot) ** 2).sum(axis=-1)


def reliability_bins(p: np.ndarray, q: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Top-label reliability: per equal-width confidence bin (the last one closed), the item
    count, mean confidence max q and accuracy (nan where empty)."""
    confidence, hit = q.max(axis=-1), correct(p, q)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else float("nan"),
                "accuracy": float(hit[inside].mean()) if count else float("nan"),
            }
        )
    return out


def ece(p: np.ndarray, q: np.ndarray, index: np.ndarray | None = None, bins: int = ECE_BINS):
    """Expected calibration error of the top label, Σ_b (n_b/N)·|acc_b − conf_b|.

    ``index`` [B, N] evaluates B resamples at once (rows of item indices) and returns [B];
    without it, the split's value (a float)."""
    confidence, hit = q.max(axis=-1), correct(p, q)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    idx = np.arange(len(p))[None] if index is None else np.asarray(index)
    gap = np.zeros((idx.shape[0], bins))
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    np.add.at(gap, (rows, which[idx].ravel()), (hit - confidence)[idx].ravel())
    values = np.abs(gap).sum(axis=-1) / idx.shape[1]
    return float(values[0]) if index is None else values


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; nan when either side is constant (no correlation is defined)."""
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (what Spearman's ρ needs)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based positions start+1 .. end
    out = np.empty(len(x))
    out[order] = np.repeat(average, ends - starts)
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(ranks(x), ranks(y))


def label_values(labels: Sequence[str]) -> np.ndarray | None:
    """The numeric values of ordinal labels ("1".."5"), or None if any label is not a number."""
    try:
        return np.array([float(label) for label in labels])
    except ValueError:
        return None


def wasserstein_ordinal(p: np.ndarray, q: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Earth mover's distance per row between p and q on the label values:
    ∫ |F_p − F_q| over the sorted support."""
    order = np.argsort(values)
    v, cp, cq = values[order], np.cumsum(p[:, order], -1), np.cumsum(q[:, order], -1)
    return (np.abs(cp - cq)[:, :-1] * np.diff(v)).sum(axis=-1)


PAIRWISE_LABELS = ("A", "B", "tie")


def pairwise_agreement(p: np.ndarray, q: np.ndarray) -> tuple[float, int]:
    """Agreement with the majority preference on items where the humans prefer one answer
    (p_A ≠ p_B): whether the judge prefers the same one (q_A vs q_B). Returns (rate, items)."""
    decided = p[:, 0] != p[:, 1]
    if not decided.any():
        return float("nan"), 0
    human = p[decided, 0] > p[decided, 1]
    judge = q[decided, 0] > q[decided, 1]
    return float((human == judge).mean()), int(decided.sum())


def swap_consistency(q_original: np.ndarray, q_swapped: np.ndarray) -> dict[str, float]:
    """For pairs judged in both orders: the share whose verdict follows the swap (A ↔ B, tie
    stays tie) and the mean total variation between q and the swapped copy's q, un-swapped."""
    unswapped = q_swapped[:, [1, 0, 2]]
    same = np.argmax(q_original, -1) == np.argmax(unswapped, -1)
    return {
        "swap_consistency": float(same.mean()),
        "swap_tv": float(total_variation(q_original, unswapped).mean()),
        "swap_pairs": len(q_original),
    }


PER_ITEM = {  # the split's value of each is the mean over items
    "kl": kl,
    "js": js,
    "tv": total_variation,
    "accuracy": correct,
    "nll": nll_majority,
    "brier": brier,
}


def per_item(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    return {name: fn(p, q) for name, fn in PER_ITEM.items()}
