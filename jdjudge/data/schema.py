"""Rules every judgment record obeys, as small checks that raise located errors.

Each check takes a raw value (straight from JSON, or from Python code), returns it in canonical
form (tuples of str/int/float) and raises ``DataError`` naming the field and the reason. The
same checks run when a record is built in code and when a line of a file is parsed, so a
record that exists is valid, and a file error can name its file and line (see jsonl.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOLERANCE = 1e-6  # how far a given distribution may sum from 1


class DataError(ValueError):
    """Bad input data: ``location: field 'name': reason`` (parts omitted when unknown).

    ``location`` is ``file:line`` for JSONL, ``file:instances[i]`` for JSON documents and
    ``record 'id'`` for records built in code; ``at`` re-locates an error raised by a check.
    """

    def __init__(self, reason: str, *, field: str | None = None, location: str | None = None):
        self.reason = reason
        self.field = field
        self.location = location
        parts = [location] if location else []
        parts.append(f"field '{field}': {reason}" if field else reason)
        super().__init__(": ".join(parts))

    def at(self, location: str) -> DataError:
        """The same error at ``location`` (replacing any earlier location)."""
        return DataError(self.reason, field=self.field, location=location)


@dataclass(frozen=True)
class TaskSpec:
    """The text fields of a task.

    ``may_be_empty`` lists fields whose empty value is real data (an MT-Bench model answered
    with nothing). ``together`` fields come all or none. ``long_field`` is the one text that
    length fitting may shorten (an article, a dialogue context); None means never truncate.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    may_be_empty: tuple[str, ...] = ()
    together: tuple[str, ...] = ()
    long_field: str | None = None


_PREVIOUS = ("previous_question", "previous_answer_a", "previous_answer_b")

TASKS: dict[str, TaskSpec] = {
    "nli": TaskSpec(("premise", "hypothesis"), long_field="premise"),
    "abductive_nli": TaskSpec(("obs1", "obs2", "hyp1", "hyp2")),
    "likert": TaskSpec(("summary", "source", "dimension"), ("criteria",), long_field="source"),
    "pairwise": TaskSpec(
        ("question", "answer_a", "answer_b"),
        _PREVIOUS,
        may_be_empty=("answer_a", "answer_b", "previous_answer_a", "previous_answer_b"),
        together=_PREVIOUS,
    ),
    "safety": TaskSpec(("context", "response"), long_field="context"),
    "raw": TaskSpec(("prompt",)),
    "synthetic": TaskSpec(("text",)),
}


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_id(value: Any) -> str:
    """A record id: a non-empty string (loaders turn numeric source ids into strings)."""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {_type_name(value)}", field="id")
    if not value.strip():
        raise DataError("empty id", field="id")
    return value


def check_task(value: Any) -> str:
    """A task name from ``TASKS``: it decides the text fields and the prompt template."""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {_type_name(value)}", field="task")
    if value not in TASKS:
        raise DataError(f"unknown task {value!r} (known: {', '.join(TASKS)})", field="task")
    return value


def check_fields(task: str, value: Any) -> dict[str, str]:
    """The task's text fields: all required ones present, no strangers, none empty."""
    if not isinstance(value, Mapping):
        raise DataError(f"expected an object of strings, got {_type_name(value)}", field="fields")
    spec = TASKS[task]
    known = spec.required + spec.optional
    for name in value:
        if name not in known:
            raise DataError(
                f"not a text field of task {task!r} (expected: {', '.join(known)})",
                field=f"fields.{name}",
            )
    for name in spec.required:
        if name not in value:
            raise DataError(f"missing (task {task!r} needs it)", field=f"fields.{name}")
    present = [name for name in spec.together if name in value]
    if present and len(present) != len(spec.together):
        missing = [name for name in spec.together if name not in value]
        raise DataError(f"missing (given with {present[0]!r})", field=f"fields.{missing[0]}")
    out = {}
    for name in known:
        if name not in value:
            continue
        text = value[name]
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {_type_name(text)}", field=f"fields.{name}")
        if not text.strip() and name not in spec.may_be_empty:
            raise DataError("empty text", field=f"fields.{name}")
        out[name] = text
    return out


def check_labels(value: Any) -> tuple[str, ...]:
    """The label names, in order: at least two, non-empty, unique."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise DataError(f"expected a list of strings, got {_type_name(value)}", field="labels")
    for label in value:
        if not isinstance(label, str):
            raise DataError(f"expected strings, got {_type_name(label)}", field="labels")
        if not label.strip():
            raise DataError("empty label name", field="labels")
    if len(value) < 2:
        raise DataError(f"needs at least 2 labels, got {len(value)}", field="labels")
    seen: set[str] = set()
    for label in value:
        if label in seen:
            raise DataError(f"duplicate label {label!r}", field="labels")
        seen.add(label)
    return tuple(value)


def _unknown_label(label: Any, labels: tuple[str, ...], field: str) -> DataError:
    return DataError(f"unknown label {label!r} (labels: {', '.join(labels)})", field=field)


def _per_label(value: Any, labels: tuple[str, ...], field: str, what: str) -> list[Any]:
    """A list in label order, from a list (length K) or a {label: value} object (missing = 0)."""
    if isinstance(value, Mapping):
        for label in value:
            if label not in labels:
                raise _unknown_label(label, labels, field)
        return [value.get(label, 0) for label in labels]
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise DataError(
            f"expected a list or object of {what}, got {_type_name(value)}", field=field
        )
    if len(value) != len(labels):
        raise DataError(f"{len(value)} entries for {len(labels)} labels", field=field)
    return list(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_counts(value: Any, labels: tuple[str, ...]) -> tuple[int, ...]:
    """Annotation counts per label: non-negative integers (3.0 is accepted), n >= 1."""
    entries = _per_label(value, labels, "counts", "counts")
    out = []
    for label, count in zip(labels, entries, strict=True):
        if not _is_number(count):
            raise DataError(f"expected integers, got {_type_name(count)}", field="counts")
        if not math.isfinite(count) or count != math.floor(count):
            raise DataError(f"fractional count {count} for label {label!r}", field="counts")
        if count < 0:
            raise DataError(f"negative count {int(count)} for label {label!r}", field="counts")
        out.append(int(count))
    if sum(out) == 0:
        raise DataError("zero annotations (counts sum to 0)", field="counts")
    return tuple(out)


def check_distribution(value: Any, labels: tuple[str, ...], field: str) -> tuple[float, ...]:
    """A probability vector over the labels: finite, non-negative, sums to 1 (± TOLERANCE)."""
    entries = _per_label(value, labels, field, "probabilities")
    out = []
    for label, prob in zip(labels, entries, strict=True):
        if not _is_number(prob) or not math.isfinite(prob):
            raise DataError(f"expected finite numbers, got {prob!r}", field=field)
        if prob < 0:
            raise DataError(f"negative probability {prob} for label {label!r}", field=field)
        out.append(float(prob))
    total = math.fsum(out)
    if abs(total - 1.0) > TOLERANCE:
        raise DataError(f"sums to {total:.6g}, not 1 (tolerance {TOLERANCE:g})", field=field)
    return tuple(out)


def check_annotations(value: Any, labels: tuple[str, ...]) -> tuple[str, ...]:
    """Individual annotations: a non-empty list of label names (one per annotator/vote)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise DataError(
            f"expected a list of label names, got {_type_name(value)}", field="annotations"
        )
    if not value:
        raise DataError("zero annotations (empty list)", field="annotations")
    known = set(labels)
    for label in value:
        if label not in known:
            raise _unknown_label(label, labels, "annotations")
    return tuple(value)


def histogram(annotations: Sequence[str], labels: tuple[str, ...]) -> tuple[int, ...]:
    """Counts per label of a list of annotations (all assumed to be known labels)."""
    index = {label: k for k, label in enumerate(labels)}
    counts = [0] * len(labels)
    for label in annotations:
        counts[index[label]] += 1
    return tuple(counts)


def check_meta(value: Any) -> dict[str, Any]:
    """Free-form provenance (source ids, groups): an object with string keys."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise DataError(
            f"expected an object with string keys, got {_type_name(value)}", field="meta"
        )
    return dict(value)
