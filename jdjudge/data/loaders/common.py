"""Helpers shared by the dataset loaders: file lookup, JSON documents, located conversion."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from jdjudge.data.jsonl import Row
from jdjudge.data.schema import DataError

T = TypeVar("T")

LIKERT_LABELS: tuple[str, ...] = ("1", "2", "3", "4", "5")


def dataset_file(path: str | Path, default_name: str) -> str:
    """``path`` itself, or ``path/default_name`` when ``path`` is a local folder."""
    return str(Path(path) / default_name) if Path(path).is_dir() else str(path)


def join(folder: str | Path, name: str) -> str:
    """A file in a folder, for local folders and ``hf://`` folders alike."""
    return f"{str(folder).rstrip('/')}/{name}"


def read_json_instances(path: str | Path) -> tuple[dict[str, Any], list[Row]]:
    """A JUDGE-BENCH style JSON document and its ``instances``, located as ``file:instances[i]``."""
    name = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"invalid JSON ({error.msg} at column {error.colno})", location=f"{name}:{error.lineno}"
        ) from None
    except OSError as error:
        raise DataError(f"cannot read ({error.strerror})", location=name) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise DataError("expected an object with an 'instances' list", location=name)
    if not doc["instances"]:
        raise DataError("empty file (no records)", location=name)
    return doc, [(f"{name}:instances[{i}]", inst) for i, inst in enumerate(doc["instances"])]


def renamed(field: str, check: Callable[..., T], *args: Any) -> T:
    """Run a schema check, reporting its error under the source format's field name."""
    try:
        return check(*args)
    except DataError as error:
        raise DataError(error.reason, field=field) from None


def score_labels(scores: Any, field: str) -> tuple[str, ...]:
    """Integer Likert scores as label names ("1".."5"); anything else is a located error."""
    if not isinstance(scores, list) or not scores:
        raise DataError("expected a non-empty list of integer scores", field=field)
    for score in scores:
        if isinstance(score, bool) or not isinstance(score, int):
            raise DataError(f"expected integer scores, got {score!r}", field=field)
    return tuple(str(score) for score in scores)


def index_rows(
    rows: list[Row], key: Callable[[Any], Hashable], value: Callable[[Any], T], what: str
) -> dict[Hashable, tuple[str, T]]:
    """{key: (location, value)} over rows; a repeated key names both locations."""
    out: dict[Hashable, tuple[str, T]] = {}
    for location, obj in rows:
        try:
            k, v = key(obj), value(obj)
        except DataError as error:
            raise error.at(location) from None
        if k in out:
            raise DataError(f"duplicate {what} {k!r}, first seen at {out[k][0]}", location=location)
        out[k] = (location, v)
    return out
