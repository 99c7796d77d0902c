"""Bootstrap intervals, robustness perturbations and task-specific scoring, against scipy,
cvxpy and hand-worked cases."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
from scipy import stats

from jdjudge.data.records import JudgmentRecord
from jdjudge.evaluation import robustness as rob
from jdjudge.evaluation.bootstrap import Bootstrap, paired_difference
from jdjudge.evaluation.predictions import Predictions
from jdjudge.evaluation.scoring import evaluate_predictions, score


def test_percentile_interval_matches_scipy_bootstrap():
    values = np.random.default_rng(0).exponential(size=400)
    boot = Bootstrap(samples=4000, seed=1)
    estimates = values[boot.indices(len(values))].mean(axis=1)
    low, high = boot.interval(estimates)
    ref = stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile",
                          random_state=np.random.default_rng(2)).confidence_interval  # fmt: skip
    width = ref.high - ref.low
    assert abs(low - ref.low) < 0.08 * width and abs(high - ref.high) < 0.08 * width


def test_interval_coverage_is_near_its_level():
    """Over 200 samples of a known mean, the 95% interval covers it ~95% of the time."""
    rng = np.random.default_rng(5)
    covered = 0
    for trial in range(200):
        values = rng.normal(1.0, 1.0, size=150)
        boot = Bootstrap(samples=500, seed=trial)
        low, high = boot.interval(values[boot.indices(150)].mean(axis=1))
        covered += low <= 1.0 <= high
    assert 0.89 <= covered / 200 <= 0.99


def test_paired_difference_sees_what_separate_intervals_miss():
    rng = np.random.default_rng(3)
    base = rng.exponential(size=300)  # items vary a lot; the runs differ a little, consistently
    better = base - 0.02 + rng.normal(0, 0.01, size=300)
    boot = Bootstrap(samples=2000, seed=0)
    sep_a = boot.interval(base[boot.indices(300)].mean(1))
    sep_b = boot.interval(better[boot.indices(300)].mean(1))
    assert sep_b[1] > sep_a[0]  # the separate intervals overlap...
    diff = paired_difference(better, base, boot)
    assert diff["high"] < 0 and diff["share_not_below_zero"] == 0.0  # ...the paired one does not
    assert diff["value"] == pytest.approx(float((better - base).mean()))


def test_simplex_projection_matches_cvxpy():
    v = np.random.default_rng(4).normal(0, 0.7, size=(12, 4))
    ours = rob.project_simplex(v)
    for row, got in zip(v, ours, strict=True):
        x = cp.Variable(4)
        cp.Problem(cp.Minimize(cp.sum_squares(x - row)), [x >= 0, cp.sum(x) == 1]).solve()
        np.testing.assert_allclose(got, x.value, atol=1e-6)


def test_perturbations_stay_on_the_simplex_within_delta():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(3), size=50)
    p[:10] = np.eye(3)[rng.integers(0, 3, 10)]  # one-hot targets: some directions leave Δ
    ids = [f"item-{i}" for i in range(50)]
    u = rob.directions(ids, 3, seed=0)
    np.testing.assert_allclose(u.sum(1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1, atol=1e-12)
    for delta in rob.DELTAS[1:]:
        moved = rob.perturb(p, delta, u)
        assert (moved >= 0).all() and np.allclose(moved.sum(1), 1)
        distance = np.linalg.norm(moved - p, axis=1)
        assert (distance <= delta + 1e-12).all()
        inside = (p + delta * u >= 0).all(1)  # never projected: moved by exactly δ
        np.testing.assert_allclose(distance[inside], delta, rtol=1e-9)
    # an item's direction depends on its id and the seed, not on the other items or order
    np.testing.assert_array_equal(rob.directions(ids[::-1], 3, 0)[::-1], u)
    assert not np.allclose(rob.directions(ids, 3, 1), u)


def _record(item_id: str, counts, truth=None, dense=None) -> JudgmentRecord:
    meta = {"dense_counts": dense} if dense else {}
    return JudgmentRecord(item_id, "synthetic", {"text": "x"}, ("positive", "neutral", "negative"),
                          counts=counts, true_distribution=truth, meta=meta)  # fmt: skip


def test_subsampled_targets_draw_from_the_densest_pool():
    dense = _record("a", (1, 0, 1), dense=[60, 30, 10])  # a subsampled ChaosNLI-like item
    truth = _record("b", (2, 1, 0), truth=(0.5, 0.3, 0.2))
    few = _record("c", (2, 1, 0))  # 3 annotations: enough for n = 1 only
    pools = [rob.annotator_pool(r) for r in (dense, truth, few)]
    assert [kind for kind, _ in pools] == ["counts", "truth", "counts"]
    rng = np.random.default_rng(0)
    for n in (1, 3, 5, 10):
        drawn = rob.draw(pools[0], n, rng) * n
        assert drawn.sum() == n and (drawn <= [60, 30, 10]).all()
    assert rob.draw(pools[2], 3, rng) is None  # not larger than n: nothing to subsample
    q = np.full((3, 3), 1 / 3)
    rows = rob.subsampled_curve([dense, truth, few], q, Bootstrap(200, 0))
    assert [(r["n"], r["items"]) for r in rows] == [(1, 3), (3, 2), (5, 2), (10, 2)]
    # n = 1: every target is one-hot, so KL to the uniform q is log 3 exactly
    assert rows[0]["kl"] == pytest.approx(math.log(3))
    # hypergeometric draws: over many seeds the mean of n = 10 targets is the pool's share
    mean = np.mean([rob.draw(pools[0], 10, np.random.default_rng(s)) for s in range(3000)], 0)
    np.testing.assert_allclose(mean, [0.6, 0.3, 0.1], atol=0.01)


def _likert(item_id: str, counts) -> JudgmentRecord:
    fields = {"source": "s", "summary": "t", "dimension": "coherence"}
    return JudgmentRecord(item_id, "likert", fields, ("1", "2", "3", "4", "5"), counts=counts)


def test_likert_scores_expected_score_and_wasserstein():
    rng = np.random.default_rng(8)
    counts = rng.integers(0, 4, size=(40, 5))
    counts[:, 2] += 1
    records = [_likert(f"l{i}", tuple(int(c) for c in row)) for i, row in enumerate(counts)]
    q = rng.dirichlet(np.ones(5), size=40)
    result = evaluate_predictions(Predictions(records, q), Bootstrap(300, 0))
    scores = result["scores"]["annotators"]
    p = counts / counts.sum(1, keepdims=True)
    values = np.arange(1, 6)
    human, judge = p @ values, q @ values
    assert scores["expected_score_pearson"]["value"] == pytest.approx(stats.pearsonr(human, judge).statistic)  # fmt: skip
    assert scores["expected_score_spearman"]["value"] == pytest.approx(stats.spearmanr(human, judge).statistic)  # fmt: skip
    w1 = np.mean([stats.wasserstein_distance(values, values, a, b) for a, b in zip(p, q, strict=True)])  # fmt: skip
    assert scores["wasserstein"]["value"] == pytest.approx(w1)
    assert "truth" not in result["scores"] and "pairwise_agreement" not in scores


def _pair(item_id: str, counts) -> JudgmentRecord:
    fields = {"question": "q?", "answer_a": "a", "answer_b": "b"}
    return JudgmentRecord(item_id, "pairwise", fields, ("A", "B", "tie"), counts=counts)


def test_pairwise_scores_find_swapped_copies():
    records = [_pair("m1", (3, 1, 0)), _pair("m1/swapped", (1, 3, 0)),
               _pair("m2", (1, 1, 2)), _pair("m2/swapped", (1, 1, 2)), _pair("m3", (0, 2, 1))]  # fmt: skip
    q = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1],  # m1: prefers A in both orders (inconsistent)
                  [0.2, 0.2, 0.6], [0.2, 0.2, 0.6],  # m2: tie both ways (consistent)
                  [0.1, 0.8, 0.1]])  # fmt: skip
    scores = evaluate_predictions(Predictions(records, q), Bootstrap(100, 0))["scores"]["annotators"]  # fmt: skip
    # decided by the humans: m1 (A), m1/swapped (B), m3 (B); the judge agrees on m1 and m3
    assert scores["pairwise_agreement"] == {"value": pytest.approx(2 / 3), "items": 3}
    assert scores["swap_consistency"] == {"value": 0.5, "items": 2}
    assert scores["swap_tv"]["value"] == pytest.approx((0.4 + 0.0) / 2)


def test_scores_against_truth_and_intervals_bracket_the_value():
    rng = np.random.default_rng(9)
    truths = rng.dirichlet(np.ones(3), size=60)
    records = [_record(f"s{i}", tuple(int(c) for c in rng.multinomial(5, t)), truth=tuple(t))
               for i, t in enumerate(truths)]  # fmt: skip
    q = 0.7 * truths + 0.3 / 3
    result = evaluate_predictions(Predictions(records, q), Bootstrap(500, 0))
    truth = result["scores"]["truth"]
    assert truth["kl"]["value"] == pytest.approx(stats.entropy(truths.T, q.T).mean())
    for name in ("kl", "js", "tv", "accuracy", "nll", "brier", "ece", "entropy_pearson"):
        entry = result["scores"]["annotators"][name]
        assert entry["low"] <= entry["value"] <= entry["high"], name
    assert truth["accuracy"]["value"] == 1.0  # q's argmax is the truth's everywhere
    same = score(truths, truths, Bootstrap(50, 0))
    assert same["kl"]["value"] == pytest.approx(0, abs=1e-12) and same["ece"]["value"] >= 0


def test_mixed_label_sets_are_refused():
    with pytest.raises(ValueError, match="evaluate one task and label set at a time"):
        Predictions([_record("a", (1, 0, 0)), _pair("b", (1, 0, 0))], np.full((2, 3), 1 / 3))
