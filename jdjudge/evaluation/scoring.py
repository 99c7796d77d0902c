"""A split's scores from its predictions: every metric against the annotators (and against
the true distribution where there is one), task-specific metrics, robustness.

The result is plain JSON-ready data: ``{"value", "low", "high"}`` for metrics with a
bootstrap interval, ``{"value"}`` for the rest. It is what ``metrics.json`` holds and what
the report, the plots and ``--compare`` read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jdjudge.evaluation import metrics as m
from jdjudge.evaluation.bootstrap import (
    Bootstrap,
    mean_estimates,
    pearson_rows,
    with_interval,
)
from jdjudge.evaluation.predictions import Predictions
from jdjudge.evaluation.robustness import perturbed_curve, subsampled_curve

# The metrics with intervals, in report order; lower is better except where noted.
MAIN = ("kl", "js", "tv", "accuracy", "nll", "brier", "ece", "entropy_pearson")
HIGHER_IS_BETTER = frozenset({"accuracy", "entropy_pearson", "entropy_spearman",
                              "expected_score_pearson", "expected_score_spearman",
                              "pairwise_agreement", "swap_consistency"})  # fmt: skip


def score(p: np.ndarray, q: np.ndarray, boot: Bootstrap) -> dict[str, dict[str, float]]:
    """The general metrics of q against the reference distributions p."""
    index = boot.indices(len(p))
    out = {
        name: with_interval(values.mean(), mean_estimates(values, index), boot)
        for name, values in m.per_item(p, q).items()
    }
    out["ece"] = with_interval(m.ece(p, q), m.ece(p, q, index), boot)
    hp, hq = m.entropy(p), m.entropy(q)
    out["entropy_pearson"] = with_interval(m.pearson(hp, hq), pearson_rows(hp[index], hq[index]), boot)  # fmt: skip
    out["entropy_spearman"] = {"value": m.spearman(hp, hq)}
    return out


def score_ordinal(
    p: np.ndarray, q: np.ndarray, values: np.ndarray, boot: Bootstrap
) -> dict[str, dict[str, float]]:
    """Likert labels: the expected score Σ v_k·q_k against the human mean, and the earth
    mover's distance between p and q on the label values."""
    index = boot.indices(len(p))
    human, judge = p @ values, q @ values
    w1 = m.wasserstein_ordinal(p, q, values)
    error = np.abs(human - judge)
    return {
        "expected_score_pearson": with_interval(
            m.pearson(human, judge), pearson_rows(human[index], judge[index]), boot
        ),
        "expected_score_spearman": {"value": m.spearman(human, judge)},
        "expected_score_mae": with_interval(error.mean(), mean_estimates(error, index), boot),
        "wasserstein": with_interval(w1.mean(), mean_estimates(w1, index), boot),
    }


def score_pairwise(preds: Predictions, p: np.ndarray) -> dict[str, dict[str, float]]:
    """A/B/tie labels: agreement with the majority preference; position-swap consistency
    over the items whose swapped copy (``<id>/swapped``) was judged too."""
    rate, items = m.pairwise_agreement(p, preds.q)
    out: dict[str, dict[str, float]] = {"pairwise_agreement": {"value": rate, "items": items}}
    row = {item_id: i for i, item_id in enumerate(preds.ids)}
    pairs = [(i, row[f"{item_id}/swapped"]) for i, item_id in enumerate(preds.ids)
             if f"{item_id}/swapped" in row]  # fmt: skip
    if pairs:
        first, second = (np.array(side) for side in zip(*pairs, strict=True))
        swap = m.swap_consistency(preds.q[first], preds.q[second])
        out["swap_consistency"] = {"value": swap["swap_consistency"], "items": len(pairs)}
        out["swap_tv"] = {"value": swap["swap_tv"], "items": len(pairs)}
    return out


def _task_metrics(preds: Predictions, p: np.ndarray, boot: Bootstrap) -> dict[str, Any]:
    out: dict[str, Any] = {}
    values = m.label_values(preds.labels)
    if values is not None and preds.task == "likert":
        out.update(score_ordinal(p, preds.q, values, boot))
    if tuple(preds.labels) == m.PAIRWISE_LABELS:
        out.update(score_pairwise(preds, p))
    return out


def evaluate_predictions(preds: Predictions, boot: Bootstrap) -> dict[str, Any]:
    """Everything ``metrics.json`` reports about one split's predictions."""
    references = {"annotators": preds.p}
    if preds.truth is not None:
        references["truth"] = preds.truth
    scores = {}
    for name, p in references.items():
        scores[name] = {**score(p, preds.q, boot), **_task_metrics(preds, p, boot)}
    return {
        "items": len(preds.ids),
        "scores": scores,
        "robustness": {
            "perturbed": perturbed_curve(preds.ids, preds.p, preds.q, boot),
            "subsampled": subsampled_curve(preds.records, preds.q, boot),
        },
        "reliability": m.reliability_bins(preds.p, preds.q),
        "bootstrap": boot.describe(),
    }
