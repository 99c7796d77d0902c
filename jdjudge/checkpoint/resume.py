"""Deciding whether a workdir can be resumed: config comparison, data fingerprint, log repair.

Rerunning the same command continues the same run, because the batch at step s and the step
RNG are pure functions of (seed, s). A workdir whose saved run differs in what changes the
run (model, data, objective, optimizer, seed, batch size) is refused unless ``force`` is set.
Keys that do not change the trajectory (steps, eval/log/checkpoint cadence, workdir, mesh)
may differ: a longer ``steps`` extends a run, a different mesh reshards it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

RUN_DEFINING = ("seed", "batch_size", "model", "lora", "data", "objective", "optimizer")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def run_defining_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key (saved -> current)' for every run-defining key whose value changed."""
    old = {k: v for k, v in flatten(saved).items() if k.split(".")[0] in RUN_DEFINING}
    new = {k: v for k, v in flatten(current).items() if k.split(".")[0] in RUN_DEFINING}
    missing = object()
    return [
        f"{key} ({old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r})"
        for key in sorted(old.keys() | new.keys())
        if _normalize(old.get(key, missing)) != _normalize(new.get(key, missing))
    ]


def _normalize(value: Any) -> Any:
    """JSON round-trip so tuples and lists (and ints vs floats like 1 vs 1.0) compare equal."""
    try:
        return json.loads(json.dumps(value))
    except TypeError:
        return repr(value)


def fingerprint_arrays(arrays: Mapping[str, np.ndarray], ids: list[str]) -> str:
    """sha256 over the encoded data a run trains on: any change to items, targets or
    tokenization changes it."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()


def truncate_metrics(
    path: str, last_step: int, rewritten_splits: tuple[str, ...] = ("test",)
) -> int:
    """Drop events after ``last_step`` (written by a run that died before its next checkpoint)
    and the end-of-run events the resumed run writes again (``rewritten_splits``), so the log
    reads as one uninterrupted run. Atomic rewrite; returns events dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    kept = []
    for line in lines:
        try:
            event = json.loads(line)
            if event["step"] <= last_step and event.get("split") not in rewritten_splits:
                kept.append(line.rstrip("\n") + "\n")
        except (json.JSONDecodeError, KeyError):
            continue  # a line torn by SIGKILL mid-write
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
    os.replace(tmp, path)
    return len(lines) - len(kept)
