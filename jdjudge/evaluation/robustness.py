"""Robustness of a judge's fit to its test targets: the paper's Table 3 and beyond.

**Perturbed targets** (Table 3): each item's p is moved by δ along a random direction u of
the simplex's plane (Gaussian, its mean removed, scaled to unit ℓ2 length) and projected back
onto the simplex: p_δ = Π_Δ(p + δ·u). Π_Δ is non-expansive and p lies in Δ, so
‖p_δ − p‖₂ ≤ δ, with equality unless p + δu left the simplex. u depends only on (seed, item
id), the same for every δ, so the curve over δ follows one path per item and does not depend
on the items' order. The score is KL(p_δ ‖ q).

**Subsampled annotators** (beyond the paper): what the judge's KL looks like when the test
targets come from n annotators, for n ∈ {1, 3, 5, 10}: n annotations drawn without
replacement from an item's dense pool (ChaosNLI's 100, or the counts behind a subsampled
record), or n draws from its true distribution (synthetic data). Items whose pool has n or
fewer annotations are left out of that n (the count is reported).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from jdjudge.data.records import JudgmentRecord
from jdjudge.evaluation.bootstrap import Bootstrap, mean_estimates, with_interval
from jdjudge.evaluation.metrics import kl

DELTAS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25)
ANNOTATOR_COUNTS = (1, 3, 5, 10)


def _rng(seed: int, item_id: str, *extra: int) -> np.random.Generator:
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big"), *extra])


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the probability simplex (sort and threshold)."""
    k = v.shape[-1]
    u = -np.sort(-v, axis=-1)
    cumulative = np.cumsum(u, axis=-1) - 1.0
    positive = u - cumulative / np.arange(1, k + 1) > 0
    rho = k - np.argmax(positive[:, ::-1], axis=-1)  # the last index where it holds, 1-based
    theta = np.take_along_axis(cumulative, (rho - 1)[:, None], axis=-1) / rho[:, None]
    return np.maximum(v - theta, 0.0)


def directions(ids: Sequence[str], k: int, seed: int) -> np.ndarray:
    """[N, K] unit vectors in the plane Σ u = 0, one per item id."""
    u = np.stack([_rng(seed, item_id).standard_normal(k) for item_id in ids])
    u -= u.mean(axis=-1, keepdims=True)
    return u / np.linalg.norm(u, axis=-1, keepdims=True)


def perturb(p: np.ndarray, delta: float, u: np.ndarray) -> np.ndarray:
    return p if delta == 0 else project_simplex(p + delta * u)


def perturbed_curve(
    ids: Sequence[str],
    p: np.ndarray,
    q: np.ndarray,
    boot: Bootstrap,
    deltas: Sequence[float] = DELTAS,
) -> list[dict[str, float]]:
    """KL(p_δ ‖ q) with its interval, per δ."""
    u = directions(ids, p.shape[-1], boot.seed)
    index = boot.indices(len(p))
    rows = []
    for delta in deltas:
        values = kl(perturb(p, delta, u), q)
        rows.append({"delta": float(delta), **_kl_row(values, index, boot)})
    return rows


def _kl_row(values: np.ndarray, index: np.ndarray, boot: Bootstrap) -> dict[str, float]:
    scored = with_interval(values.mean(), mean_estimates(values, index), boot)
    return {"kl": scored["value"], "low": scored["low"], "high": scored["high"]}


def annotator_pool(record: JudgmentRecord) -> tuple[str, np.ndarray] | None:
    """("counts", dense counts) or ("truth", distribution), whichever is denser; None if the
    record has only its own annotations to draw from."""
    dense = record.meta.get("dense_counts")
    if dense:
        return "counts", np.asarray(dense, np.int64)
    if record.true_distribution is not None:
        return "truth", np.asarray(record.true_distribution, np.float64)
    if record.counts is not None:
        return "counts", np.asarray(record.counts, np.int64)
    return None


def draw(pool: tuple[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray | None:
    """A distribution of n annotations from the pool (None: the pool is not larger than n)."""
    kind, values = pool
    if kind == "truth":
        counts = rng.multinomial(n, values)
    elif values.sum() > n:
        counts = rng.multivariate_hypergeometric(values, n)
    else:
        return None
    return counts / n


def subsampled_curve(
    records: Sequence[JudgmentRecord],
    q: np.ndarray,
    boot: Bootstrap,
    counts: Sequence[int] = ANNOTATOR_COUNTS,
) -> list[dict[str, float]]:
    """KL(p_n ‖ q) with its interval, per n that at least one item's pool supports."""
    pools = [annotator_pool(record) for record in records]
    rows = []
    for n in counts:
        kept, targets = [], []
        for i, (record, pool) in enumerate(zip(records, pools, strict=True)):
            drawn = None if pool is None else draw(pool, n, _rng(boot.seed, record.id, n))
            if drawn is not None:
                kept.append(i)
                targets.append(drawn)
        if not kept:
            continue
        values = kl(np.stack(targets), q[kept])
        source = sorted({pools[i][0] for i in kept})
        rows.append({"n": n, **_kl_row(values, boot.indices(len(kept)), boot),
                     "items": len(kept), "source": "+".join(source)})  # fmt: skip
    return rows
