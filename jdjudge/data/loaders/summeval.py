"""SummEval: 1600 CNN/DM summaries rated 1-5 on four dimensions by 3 experts and 5 turkers.

Each (summary, dimension) is one item, so a summary gives four records that share
``meta['group']`` (they stay in one split). Ratings come from ``annotations.jsonl`` (the exact
per-annotator scores); summary text from ``summaries.jsonl``; the article from
``documents.jsonl``, joined on ``doc_id``. Experts by default: in 51% of items all five
turker scores are identical (see the data README), so ``crowd=True`` is opt-in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jdjudge.data.jsonl import convert_rows, read_rows, require
from jdjudge.data.loaders.common import LIKERT_LABELS, index_rows, join, score_labels
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

DIMENSIONS: tuple[str, ...] = ("coherence", "consistency", "fluency", "relevance")


def _records(
    obj: Any,
    documents: dict,
    summaries: dict,
    raters: str,
    dimensions: Sequence[str],
) -> list[JudgmentRecord]:
    doc_id = require(obj, "instance_id", str)
    model_id = require(obj, "summarizer_id", str)
    metrics = require(require(obj, "metrics", dict), raters, dict, "metrics.")
    if (doc_id, model_id) not in summaries:
        raise DataError(f"no summary for ({doc_id!r}, {model_id!r}) in summaries.jsonl")
    if doc_id not in documents:
        raise DataError(f"no article for {doc_id!r} in documents.jsonl")
    records = []
    for dimension in dimensions:
        field = f"metrics.{raters}.{dimension}"
        if dimension not in metrics:
            raise DataError("missing required field", field=field)
        annotations = score_labels(metrics[dimension], field)
        fields = {
            "summary": summaries[doc_id, model_id][1],
            "source": documents[doc_id][1],
            "dimension": dimension,
        }
        meta = {
            "dataset": "summeval",
            "doc_id": doc_id,
            "model_id": model_id,
            "raters": raters,
            "group": f"summeval/{doc_id}/{model_id}",
            "article": doc_id,
        }
        try:
            record = JudgmentRecord(
                f"summeval/{doc_id}/{model_id}/{dimension}",
                "likert",
                fields,
                LIKERT_LABELS,
                annotations=annotations,
                meta=meta,
            )
        except DataError as error:
            names = {
                "fields.summary": "summaries.jsonl summary",
                "fields.source": "documents.jsonl source",
            }
            raise DataError(error.reason, field=names.get(error.field or "", field)) from None
        records.append(record)
    return records


def load_summeval(
    path: str | Path, crowd: bool = False, dimensions: Sequence[str] = DIMENSIONS
) -> list[JudgmentRecord]:
    """SummEval from its folder (``annotations.jsonl``, ``summaries.jsonl``, ``documents.jsonl``).

    ``crowd=True`` uses the 5 turker ratings instead of the 3 expert ratings.
    """
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown or not dimensions:
        raise ValueError(f"dimensions must be a non-empty subset of {DIMENSIONS}, got {dimensions}")
    documents = index_rows(
        read_rows(join(path, "documents.jsonl")),
        key=lambda o: require(o, "doc_id", str),
        value=lambda o: require(o, "source", str),
        what="doc_id",
    )
    summaries = index_rows(
        read_rows(join(path, "summaries.jsonl")),
        key=lambda o: (require(o, "doc_id", str), require(o, "model_id", str)),
        value=lambda o: require(o, "summary", str),
        what="(doc_id, model_id)",
    )
    raters = "turker" if crowd else "expert"
    rows = read_rows(join(path, "annotations.jsonl"))
    return convert_rows(rows, lambda o: _records(o, documents, summaries, raters, dimensions))
