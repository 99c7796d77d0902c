"""Evaluation metrics against independent computations: scipy, hand-worked cases, loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import spatial, special, stats

from jdjudge.evaluation import metrics as m


def _random(n: int, k: int, seed: int, zeros: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.7), size=n)
    q = rng.dirichlet(np.full(k, 1.3), size=n)
    if zeros:  # some exact zeros on both sides
        p[rng.random((n, k)) < 0.2] = 0.0
        p[p.sum(1) == 0, 0] = 1.0
        p /= p.sum(1, keepdims=True)
    return p, q


@pytest.mark.parametrize("k", [2, 3, 5])
def test_divergences_match_scipy(k):
    p, q = _random(40, k, seed=k, zeros=True)
    np.testing.assert_allclose(m.kl(p, q), special.rel_entr(p, q).sum(1), rtol=1e-12)
    np.testing.assert_allclose(
        m.kl(p, q), [stats.entropy(a, b) for a, b in zip(p, q, strict=True)], rtol=1e-10
    )
    js = [spatial.distance.jensenshannon(a, b) ** 2 for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(m.js(p, q), js, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(m.entropy(p), [stats.entropy(a) for a in p], rtol=1e-12)
    tv = [sum(abs(x - y) for x, y in zip(a, b, strict=True)) / 2 for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(m.total_variation(p, q), tv, rtol=1e-12)


def test_edge_cases_one_hot_zeros_and_ties():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    q = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    # one-hot p: KL = −log q(label) = log 2; a zero q where p = 0 costs nothing; p > 0 where
    # q = 0: infinite, reported as such.
    assert m.kl(p, q)[0] == pytest.approx(math.log(2))
    assert m.kl(p, q)[1] == pytest.approx(0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8))
    assert math.isinf(m.kl(p, q)[2])
    assert m.js(p, q)[2] < math.log(2) + 1e-12  # JS stays finite
    # ties: the lowest index is the majority (label 0 for row 1, label 1 for row 2)
    np.testing.assert_array_equal(m.majority(p), [0, 0, 1])
    np.testing.assert_array_equal(m.correct(p, q), [1.0, 0.0, 0.0])  # row 0: q tie -> index 0
    assert m.nll_majority(p, q)[1] == pytest.approx(-math.log(0.2))
    # Brier against the majority one-hot, by hand: (0.5-1)^2 + 0.5^2 + 0 = 0.5
    assert m.brier(p, q)[0] == pytest.approx(0.5)
    assert m.brier(p, q)[2] == pytest.approx(0.6**2 + 0.6**2 + 0.0)


def _ece_loop(p, q, bins):
    """ECE the long way: items visited one by one, bins by np.digitize."""
    edges = np.linspace(0, 1, bins + 1)[1:-1]
    totals = {}
    for a, b in zip(p, q, strict=True):
        conf = b.max()
        which = int(np.digitize(conf, edges, right=False))
        hit = float(np.argmax(b) == np.argmax(a))
        n, s_conf, s_hit = totals.get(which, (0, 0.0, 0.0))
        totals[which] = (n + 1, s_conf + conf, s_hit + hit)
    return sum(abs(h / n - c / n) * n for n, c, h in totals.values()) / len(p)


@pytest.mark.parametrize("k,bins", [(2, 10), (3, 15), (4, 5)])
def test_ece_matches_a_loop_and_its_resampled_form(k, bins):
    p, q = _random(300, k, seed=7 + k)
    assert m.ece(p, q, bins=bins) == pytest.approx(_ece_loop(p, q, bins), abs=1e-12)
    index = np.random.default_rng(0).integers(0, 300, size=(4, 300))
    batched = m.ece(p, q, index, bins=bins)
    for row, value in zip(index, batched, strict=True):
        assert value == pytest.approx(_ece_loop(p[row], q[row], bins), abs=1e-12)


def test_ece_hand_case_and_reliability_bins():
    # two items at confidence 0.9 (one right), one at 1.0 (right): bins [0.8,1.0) and [1.0]
    # fall in the same last bin with 5 bins: |2/3 - (0.9+0.9+1.0)/3| = |0.6667-0.9333|
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = np.array([[0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])
    assert m.ece(p, q, bins=5) == pytest.approx(abs(2 / 3 - 2.8 / 3))
    bins = m.reliability_bins(p, q, bins=5)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 3]
    assert math.isnan(bins[0]["accuracy"]) and bins[4]["accuracy"] == pytest.approx(2 / 3)


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 60).astype(float)  # many ties
    y = x + rng.normal(0, 2, 60)
    assert m.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-12)
    assert m.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    np.testing.assert_allclose(m.ranks(x), stats.rankdata(x))
    assert math.isnan(m.pearson(np.ones(5), np.arange(5.0)))


def test_wasserstein_matches_scipy_on_label_values():
    p, q = _random(30, 5, seed=11, zeros=True)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = [stats.wasserstein_distance(values, values, a, b) for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(m.wasserstein_ordinal(p, q, values), expected, atol=1e-12)
    uneven = np.array([0.0, 1.0, 4.0, 9.0, 10.0])
    expected = [stats.wasserstein_distance(uneven, uneven, a, b) for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(m.wasserstein_ordinal(p, q, uneven), expected, atol=1e-12)
    assert m.label_values(["1", "2", "3"]).tolist() == [1.0, 2.0, 3.0]
    assert m.label_values(["A", "B", "tie"]) is None


def test_pairwise_agreement_and_swap_consistency_by_hand():
    p = np.array([[0.7, 0.3, 0.0], [0.2, 0.6, 0.2], [0.4, 0.4, 0.2], [0.5, 0.1, 0.4]])
    q = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.3, 0.2, 0.5]])
    # decided items 0, 1, 3 (item 2 ties A and B): the judge agrees on 0 and 3 (q_A > q_B)
    assert m.pairwise_agreement(p, q) == (pytest.approx(2 / 3), 3)
    original = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    swapped = np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])  # first follows the swap, second not
    out = m.swap_consistency(original, swapped)
    assert out["swap_consistency"] == 0.5
    assert out["swap_tv"] == pytest.approx((0.1 + 0.3) / 2)  # TV 0.1 and 0.3, un-swapped
