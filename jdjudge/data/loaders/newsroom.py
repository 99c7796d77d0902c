"""Newsroom human evaluation (JUDGE-BENCH JSON): 420 summaries x 4 dimensions x 3 raters.

Each (summary, dimension) is one Likert item. The summary and article are packed into one
``instance`` string and are split on its headings. The criteria text is the rating question
the raters saw, read from the file (Newsroom's "relevance" asks whether the details agree
with the article, i.e. what SummEval calls consistency).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from jdjudge.data.jsonl import convert_rows, require
from jdjudge.data.loaders.common import (
    LIKERT_LABELS,
    dataset_file,
    read_json_instances,
    score_labels,
)
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

DIMENSIONS: tuple[str, ...] = ("informativeness", "relevance", "fluency", "coherence")
SUMMARY_HEADING = "### Generated Summary"
ARTICLE_HEADING = "### Source Article"
_SCALE = "On a scale of 1 (low) to 5 (high), "


def _split_instance(text: str) -> tuple[str, str]:
    """(summary, article) from the packed instance string."""
    head, sep, article = text.partition(ARTICLE_HEADING)
    if not head.startswith(SUMMARY_HEADING) or not sep or ARTICLE_HEADING in article:
        raise DataError(
            f"expected '{SUMMARY_HEADING}', the summary, '{ARTICLE_HEADING}', the article",
            field="instance",
        )
    return head[len(SUMMARY_HEADING) :].strip(), article.strip()


def criteria_from_declarations(doc: dict[str, Any]) -> dict[str, str]:
    """{dimension: the rating question} from the file's metric declarations."""
    out = {}
    for declaration in doc.get("annotations") or []:
        metric, prompt = declaration.get("metric"), declaration.get("prompt")
        if isinstance(metric, str) and isinstance(prompt, str):
            question = prompt.split("\n\n{{")[0].removeprefix(_SCALE).strip()
            out[metric.lower()] = question[:1].upper() + question[1:]
    missing = [d for d in DIMENSIONS if d not in out]
    if missing:
        raise DataError(f"no rating question declared for {missing}", field="annotations")
    return out


def _records(obj: Any, criteria: dict[str, str]) -> list[JudgmentRecord]:
    item_id = require(obj, "id", int)
    summary, article = _split_instance(require(obj, "instance", str))
    annotations = require(obj, "annotations", dict)
    article_key = hashlib.sha256(article.encode("utf-8")).hexdigest()[:16]
    records = []
    for dimension in DIMENSIONS:
        name = dimension.capitalize()
        field = f"annotations.{name}.individual_human_scores"
        rating = require(annotations, name, dict, "annotations.")
        scores = require(rating, "individual_human_scores", list, f"annotations.{name}.")
        fields = {
            "summary": summary,
            "source": article,
            "dimension": dimension,
            "criteria": criteria[dimension],
        }
        meta = {
            "dataset": "newsroom",
            "item_id": item_id,
            "group": f"newsroom/{item_id}",
            "article": article_key,
        }
        try:
            record = JudgmentRecord(
                f"newsroom/{item_id}/{dimension}",
                "likert",
                fields,
                LIKERT_LABELS,
                annotations=score_labels(scores, field),
                meta=meta,
            )
        except DataError as error:
            source = "instance" if (error.field or "").startswith("fields.") else field
            raise DataError(error.reason, field=source) from None
        records.append(record)
    return records


def load_newsroom(path: str | Path) -> list[JudgmentRecord]:
    """Newsroom from ``newsroom.json`` or its folder: 1680 items with 3 ratings each."""
    file = dataset_file(path, "newsroom.json")
    doc, rows = read_json_instances(file)
    try:
        criteria = criteria_from_declarations(doc)
    except DataError as error:
        raise error.at(file) from None
    return convert_rows(rows, lambda obj: _records(obj, criteria))
