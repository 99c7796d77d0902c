"""A plain-text summary of a dataset's splits: sizes, annotation budget, labels, lengths.

Meant for logs and docs: one look says whether a split is what it should be (8:2 sizes,
n annotators per item, label balance, how much disagreement, how long prompts run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jdjudge.data.records import JudgmentRecord

PERCENTILES: tuple[int, ...] = (50, 90, 99)


def entropy_bits(distribution: np.ndarray) -> float:
    """Shannon entropy in bits, with 0 log 0 = 0."""
    p = np.asarray(distribution, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def label_marginals(records: Sequence[JudgmentRecord]) -> dict[str, float]:
    """Share of each label over all annotations (mean distribution for distribution-only items)."""
    totals: dict[str, float] = {}
    for record in records:
        weights = record.counts if record.counts is not None else record.distribution
        for label, w in zip(record.labels, weights, strict=True):
            totals[label] = totals.get(label, 0.0) + float(w)
    grand = sum(totals.values()) or 1.0
    return {label: total / grand for label, total in totals.items()}


def length_percentiles(lengths: Sequence[int]) -> dict[str, int]:
    """p50/p90/p99/max token lengths (nearest-rank, so each is a real length)."""
    if not len(lengths):
        return {}
    values = np.asarray(lengths)
    out = {f"p{q}": int(np.percentile(values, q, method="inverted_cdf")) for q in PERCENTILES}
    out["max"] = int(values.max())
    return out


def _split_line(name: str, records: Sequence[JudgmentRecord]) -> str:
    if not records:
        return f"{name:<11} {0:>7}"
    known = [r.num_annotators for r in records if r.num_annotators is not None]
    budget = f"{min(known)}/{np.mean(known):.2f}/{max(known)}" if known else "n/a (distributions)"
    entropy = np.mean([entropy_bits(r.distribution) for r in records])
    return f"{name:<11} {len(records):>7}  {budget:<22} {entropy:.3f}"


def summarize(
    records_by_split: Mapping[str, Sequence[JudgmentRecord]],
    lengths: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """Items per split, annotations per item (min/mean/max), mean entropy, label marginals,
    majority-label shares, and token-length percentiles when ``lengths`` (per split, aligned
    with the records) are given."""
    lines = [f"{'split':<11} {'items':>7}  {'annotations min/mean/max':<22} entropy (bits)"]
    lines += [_split_line(name, recs) for name, recs in records_by_split.items()]
    lines.append("label marginals (share of annotations) | majority-label shares:")
    for name, recs in records_by_split.items():
        if not recs:
            continue
        shares = ", ".join(f"{k} {v:.3f}" for k, v in label_marginals(recs).items())
        majority: dict[str, int] = {}
        for r in recs:
            top = r.labels[r.majority_index]
            majority[top] = majority.get(top, 0) + 1
        major = ", ".join(f"{k} {v / len(recs):.3f}" for k, v in sorted(majority.items()))
        lines.append(f"  {name:<11} {shares} | {major}")
    if lengths is not None:
        lines.append("prompt tokens p50/p90/p99/max:")
        for name, values in lengths.items():
            pct = length_percentiles(values)
            if pct:
                lines.append(f"  {name:<11} {pct['p50']}/{pct['p90']}/{pct['p99']}/{pct['max']}")
    return "\n".join(lines)
