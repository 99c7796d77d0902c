"""The metrics log: one JSON object per event in ``<workdir>/metrics.jsonl``.

A line is written and flushed as soon as the event happens, so a crashed run still has a
readable log up to its last step, and tools can tail it. The same numbers can go to
TensorBoard event files (``tensorboard.py``, no TensorFlow needed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

from jdjudge.checkpoint.tensorboard import EventWriter


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

    def __init__(
        self,
        path: str | os.PathLike[str],
        enabled: bool = True,
        tensorboard: str | os.PathLike[str] | None = None,
        start_step: int = 0,
    ) -> None:
        """``tensorboard``: a directory that gets every event's numbers as TensorBoard
        scalars too (``<split>/<key>``); ``start_step`` is where this invocation starts, so
        that TensorBoard drops the curves' points an earlier attempt logged past it."""
        self.path = os.fspath(path)
        self.enabled = enabled
        self.tensorboard, self.start_step = tensorboard, start_step
        self._file: IO[str] | None = None
        self._events: EventWriter | None = None
        self._open = False

    def __enter__(self) -> MetricsWriter:
        if self.enabled:
            self._file = open(self.path, "a", encoding="utf-8")
            if self.tensorboard is not None:
                self._events = EventWriter(self.tensorboard)
                self._events.start_session(self.start_step)
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
        if self._events is not None:
            self._events.close()
            self._events = None
        self._open = False

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
        if not self._open:
            raise RuntimeError("MetricsWriter used outside its `with` block")
        record = {"step": int(step), "split": split}
        record.update({key: _clean(value) for key, value in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(record, sort_keys=False) + "\n")
            self._file.flush()
        if self._events is not None:
            self._events.scalars(step, metrics, prefix=split)
        return record


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a metrics.jsonl, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
