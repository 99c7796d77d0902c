"""Running an experiment's grid through the public CLIs, with every result cached.

A run is a name, a config file and ``--config.KEY=VALUE`` overrides. It trains with
``jdjudge.train`` (which resumes from the newest checkpoint, so an interrupted grid picks up
where it stopped) and is scored with ``jdjudge.evaluate`` into ``<workdir>/eval/``. A run
whose evaluation exists under the same arguments (recorded in ``<workdir>/experiment.json``)
is not run again: stop an experiment at any point and rerun the command to finish it.
The CLIs run in this process (``main(argv)``, exactly what ``python -m`` calls), which
spares a JAX start-up per run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORD = "experiment.json"


@dataclass(frozen=True)
class Run:
    name: str
    config: str
    overrides: tuple[str, ...]
    evaluate: tuple[str, ...] = ()  # extra jdjudge.evaluate flags (e.g. --model for "raw")
    train: bool = True  # False: evaluate only (an untrained model)
    tags: Mapping[str, Any] = field(default_factory=dict)  # the grid coordinates, for tables


def _args(run: Run, workdir: Path) -> list[str]:
    return [f"--config={run.config}", f"--config.workdir={workdir}", *run.overrides]


def _cached(run: Run, workdir: Path) -> dict[str, Any] | None:
    record, metrics = workdir / RECORD, workdir / "eval" / "metrics.json"
    if not (record.is_file() and metrics.is_file()):
        return None
    if json.loads(record.read_text())["args"] != [*_args(run, workdir), *run.evaluate]:
        return None
    return json.loads(metrics.read_text())


def _finished(workdir: Path) -> bool:
    """Whether the run trained to its end: only then does train score the test split."""
    from jdjudge.checkpoint.metrics_log import read_metrics

    log = workdir / "metrics.jsonl"
    return log.is_file() and any(e["split"] == "test" for e in read_metrics(log))


def execute(run: Run, root: Path, bootstrap: int = 1000) -> dict[str, Any]:
    """Train (or resume) and evaluate one run, or read its cached evaluation."""
    from jdjudge import evaluate, train

    workdir = root / run.name
    cached = _cached(run, workdir)
    if cached is not None:
        return cached
    started = time.perf_counter()
    args = _args(run, workdir)
    if run.train:
        if train.main(["jdjudge.train", *args]) != 0:
            raise RuntimeError(f"{run.name}: training failed")
        if not _finished(workdir):  # SIGTERM/SIGINT: train saved and exited 0, to resume
            raise KeyboardInterrupt(f"{run.name}: training was stopped; rerun to resume it")
    trained = time.perf_counter()
    evaluation = ["jdjudge.evaluate", *args, *run.evaluate, f"--bootstrap={bootstrap}"]
    if evaluate.main(evaluation) != 0:
        raise RuntimeError(f"{run.name}: evaluation failed")
    seconds = {"train_s": round(trained - started, 1), "total_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"args": [*args, *run.evaluate], "tags": dict(run.tags), **seconds}
    (workdir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return json.loads((workdir / "eval" / "metrics.json").read_text())


def execute_all(runs: Sequence[Run], root: Path, bootstrap: int = 1000) -> list[dict[str, Any]]:
    """Every run in order, with progress on stderr; returns their metrics."""
    results = []
    started = time.perf_counter()
    for i, run in enumerate(runs, start=1):
        cached = _cached(run, root / run.name) is not None
        print(f"[{i}/{len(runs)}] {run.name}{' (cached)' if cached else ''} "
              f"— {time.perf_counter() - started:.0f}s so far", file=sys.stderr, flush=True)  # fmt: skip
        results.append(execute(run, root, bootstrap))
    return results


def value(metrics: Mapping[str, Any], reference: str, name: str) -> float:
    entry = metrics["scores"].get(reference, {}).get(name)
    return float("nan") if entry is None or entry.get("value") is None else float(entry["value"])


def mean_std(values: Iterable[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(
    rows: Sequence[str],
    columns: Sequence[str],
    cell: Callable[[str, str], str],
    corner: str = "",
) -> str:
    """A Markdown table whose cell (row, column) is ``cell(row, column)``."""
    lines = [f"| {corner} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {r} | " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_tables(path: Path, title: str, sections: Sequence[tuple[str, str]], about: str) -> None:
    """The experiment's Markdown: a title, what ran and how, then each (heading, table)."""
    text = [f"# {title}", "", about, ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    print(f"wrote {path}", file=sys.stderr)
