"""One split's items with the judge's distributions: what every metric is computed from,
and ``predictions.jsonl``, the per-item file anyone can analyse on their own."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jdjudge.data.records import JudgmentRecord
from jdjudge.evaluation.metrics import kl
from jdjudge.outputs import json_safe

PREDICTIONS_FILE = "predictions.jsonl"


@dataclass(frozen=True)
class Predictions:
    """q for each record; p (the annotators) and the truth (when every item has one) come
    from the records. ``extra`` holds per-item arrays written beside them (API masses)."""

    records: Sequence[JudgmentRecord]
    q: np.ndarray  # float64[N, K]
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        first = self.records[0]
        for record in self.records:
            if (record.task, record.labels) != (first.task, first.labels):
                raise ValueError(
                    f"record {record.id!r}: task {record.task!r} with labels "
                    f"{list(record.labels)} differs from {first.id!r} ({first.task!r}, "
                    f"{list(first.labels)}); evaluate one task and label set at a time"
                )
        if self.q.shape != (len(self.records), len(first.labels)):
            raise ValueError(f"q has shape {self.q.shape}, expected {(len(self.records), len(first.labels))}")  # fmt: skip

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.records]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.records[0].labels

    @property
    def task(self) -> str:
        return self.records[0].task

    @property
    def p(self) -> np.ndarray:
        return np.stack([record.distribution for record in self.records])

    @property
    def truth(self) -> np.ndarray | None:
        """The dense or true distribution of every item, or None unless all have one."""
        truths = [record.true_distribution for record in self.records]
        if any(t is None for t in truths):
            return None
        return np.asarray(truths, np.float64)


def prediction_lines(preds: Predictions) -> list[dict[str, Any]]:
    """One JSON object per item: id, p, q, its KL (and the truth and KL to it, if known)."""
    p, truth = preds.p, preds.truth
    item_kl = kl(p, preds.q)
    truth_kl = None if truth is None else kl(truth, preds.q)
    lines = []
    for i, record in enumerate(preds.records):
        line: dict[str, Any] = {
            "id": record.id,
            "p": [float(x) for x in p[i]],
            "q": [float(x) for x in preds.q[i]],
            "kl": float(item_kl[i]),
        }
        if record.num_annotators is not None:
            line["annotators"] = record.num_annotators
        if truth_kl is not None:
            line["truth"] = [float(x) for x in truth[i]]
            line["kl_truth"] = float(truth_kl[i])
        for key, values in preds.extra.items():
            value = values[i]
            line[key] = value.item() if hasattr(value, "item") else value
        lines.append(line)
    return lines


def write_predictions(path: Path, preds: Predictions) -> None:
    lines = prediction_lines(preds)
    text = "".join(json.dumps(json_safe(line), allow_nan=False) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")


def read_item_kl(path: Path, key: str = "kl") -> dict[str, float]:
    """id -> per-item KL from a predictions.jsonl (what a paired comparison needs)."""
    out = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                obj = json.loads(line)
                if obj.get(key) is not None:  # "inf" strings read back as inf
                    out[obj["id"]] = float(obj[key])
    return out
