"""The metrics log: one JSON object per event in ``<workdir>/metrics.jsonl``.

A line is written and flushed as soon as the event happens, so a crashed run still has a
readable log up to its last step, and tools can tail it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any


def _clean(value: Any) -> Any:
    """JSON-safe scalars: numpy/JAX scalars to Python, non-finite floats to strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Append-only JSONL writer; use as a context manager. ``enabled=False`` (every process
    but the first of a multi-host run) writes nothing, so the log has each event once."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = os.fspath(path)
        self.enabled = enabled
        self._file: IO[str] | None = None
        self._open = False

    def __enter__(self) -> MetricsWriter:
        if self.enabled:
            self._file = open(self.path, "a", encoding="utf-8")
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._open = False

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
        if not self._open:
            raise RuntimeError("MetricsWriter used outside its `with` block")
        record = {"step": int(step), "split": split}
        record.update({key: _clean(value) for key, value in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(record, sort_keys=False) + "\n")
            self._file.flush()
        return record


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a metrics.jsonl, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
