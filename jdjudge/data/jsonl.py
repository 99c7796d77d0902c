"""Line-numbered JSONL reading and the generic JSONL form of a record.

Every loader goes through here so that a bad line anywhere in a file stops the load with
``file:line: field 'x': reason`` before any record is returned: nothing is half-loaded.
Hub paths (``hf://datasets/<owner>/<repo>/<file>.jsonl``) are read with HF ``datasets``
and located by row number, the same way as local lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

RECORD_KEYS = (
    "id",
    "task",
    "fields",
    "labels",
    "counts",
    "distribution",
    "annotations",
    "true_distribution",
    "meta",
)
REQUIRED_KEYS = ("id", "task", "fields", "labels")

Row = tuple[str, Any]  # (location "file:line", parsed JSON value)


def _parse_line(text: str, location: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        reason = f"invalid JSON ({error.msg} at column {error.colno})"
        raise DataError(reason, location=location) from None


def read_local_jsonl(path: str | Path) -> list[Row]:
    """(location, value) per non-blank line; invalid JSON and an empty file are errors."""
    name = str(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    rows.append(
                        (f"{name}:{number}", _parse_line(text.rstrip("\r\n"), f"{name}:{number}"))
                    )
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error.reason})", location=name) from None
    except OSError as error:
        raise DataError(f"cannot read ({error.strerror})", location=name) from None
    if not rows:
        raise DataError("empty file (no records)", location=name)
    return rows


def _load_hub_json(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file on the Hub, via HF datasets (needs network or a cache)."""
    from datasets import load_dataset

    return list(load_dataset("json", data_files=path, split="train"))


def read_rows(path: str | Path) -> list[Row]:
    """Rows of a local JSONL file, or of an ``hf://`` JSON-lines file (row n = line n)."""
    if str(path).startswith("hf://"):
        rows = [(f"{path}:{i}", row) for i, row in enumerate(_load_hub_json(str(path)), 1)]
        if not rows:
            raise DataError("empty file (no records)", location=str(path))
        return rows
    return read_local_jsonl(path)


def require(obj: Any, key: str, kind: type | tuple[type, ...], prefix: str = "") -> Any:
    """``obj[key]``, which must exist and be of ``kind``: the building block of converters."""
    name = f"{prefix}{key}"
    if not isinstance(obj, Mapping):
        raise DataError(
            f"expected a JSON object, got {type(obj).__name__}", field=prefix[:-1] or None
        )
    if key not in obj:
        raise DataError("missing required field", field=name)
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        expected = " or ".join(k.__name__ for k in _kinds(kind))
        raise DataError(f"expected {expected}, got {type(value).__name__}", field=name)
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def convert_rows(
    rows: Iterable[Row], convert: Callable[[Any], Iterable[JudgmentRecord]]
) -> list[JudgmentRecord]:
    """Apply ``convert`` to every row, locating its errors; ids must be unique across rows.

    ``convert`` may return several records per row (e.g. one per SummEval dimension).
    """
    records: list[JudgmentRecord] = []
    first_seen: dict[str, str] = {}
    for location, value in rows:
        try:
            converted = list(convert(value))
        except DataError as error:
            raise error.at(location) from None
        for record in converted:
            if record.id in first_seen:
                raise DataError(
                    f"duplicate id {record.id!r}, first seen at {first_seen[record.id]}",
                    field="id",
                    location=location,
                )
            first_seen[record.id] = location
        records.extend(converted)
    return records


def record_from_dict(obj: Any) -> JudgmentRecord:
    """A record from its generic JSON form (see docs/data.md); raises unlocated DataError."""
    if not isinstance(obj, Mapping):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    for key in obj:
        if key not in RECORD_KEYS:
            raise DataError(f"unknown field (known: {', '.join(RECORD_KEYS)})", field=key)
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise DataError("missing required field", field=key)
    if "counts" in obj and "distribution" in obj:
        raise DataError("give either 'counts' or 'distribution', not both", field="distribution")
    if not any(key in obj for key in ("counts", "distribution", "annotations")):
        raise DataError("missing (give counts, distribution or annotations)", field="counts")
    for key in ("counts", "distribution", "annotations", "true_distribution"):
        if key in obj and obj[key] is None:
            raise DataError("null value (leave the field out instead)", field=key)
    return JudgmentRecord(**{key: obj[key] for key in RECORD_KEYS if key in obj})


def record_to_dict(record: JudgmentRecord) -> dict[str, Any]:
    """The generic JSON form: counts when known, else the distribution; no derived values."""
    out: dict[str, Any] = {
        "id": record.id,
        "task": record.task,
        "fields": dict(record.fields),
        "labels": list(record.labels),
    }
    if record.counts is not None:
        out["counts"] = list(record.counts)
    else:
        out["distribution"] = record.distribution.tolist()
    if record.annotations is not None:
        out["annotations"] = list(record.annotations)
    if record.true_distribution is not None:
        out["true_distribution"] = list(record.true_distribution)
    if record.meta:
        out["meta"] = dict(record.meta)
    return out


def write_jsonl(records: Iterable[JudgmentRecord], path: str | Path) -> None:
    """One generic JSON record per line; ``load_jsonl`` reads it back to equal records."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record_to_dict(record), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> list[JudgmentRecord]:
    """Records in the generic JSONL form; every line is checked before any is returned."""
    return convert_rows(read_rows(path), lambda obj: [record_from_dict(obj)])
