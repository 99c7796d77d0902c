"""``--compare DIR...``: one table across evaluated runs in the paper's Table 1 layout
(method × dataset, KL / accuracy with intervals), and paired differences.

Each DIR is a run (its ``eval/`` is read) or an evaluation directory. Per dataset, the first
run given is the reference: every other run on that dataset gets the paired-bootstrap
difference of per-item KL on the items both scored, which separates methods whose separate
intervals overlap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jdjudge.entry import UsageError
from jdjudge.evaluation.bootstrap import Bootstrap, paired_difference
from jdjudge.evaluation.predictions import PREDICTIONS_FILE, read_item_kl
from jdjudge.evaluation.report import cell, number
from jdjudge.outputs import atomic_dir, check_writable_dir, json_safe

DEFAULT_OUTPUT = Path("runs/compare")


def eval_dir(path: Path) -> Path:
    for candidate in (path, path / "eval"):
        if (candidate / "metrics.json").is_file():
            return candidate
    raise UsageError(f"--compare {path}: no metrics.json in it or in {path / 'eval'}; "
                     f"run python -m jdjudge.evaluate on it first")  # fmt: skip


def _entry(path: Path) -> dict[str, Any]:
    directory = eval_dir(path)
    try:
        result = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
        about = result["about"]
        scores = result["scores"]
        return {"path": str(path), "dir": directory, "method": about["method"],
                "dataset": about["dataset"], "split": about["split"], "items": result["items"],
                "scores": scores}  # fmt: skip
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"--compare {path}: {directory / 'metrics.json'} is unreadable ({error})") from None  # fmt: skip


def _row_names(entries: list[dict[str, Any]]) -> list[str]:
    """The method, or method (run) where one method appears twice on a dataset."""
    seen: dict[tuple[str, str], int] = {}
    for e in entries:
        seen[(e["method"], e["dataset"])] = seen.get((e["method"], e["dataset"]), 0) + 1
    return [e["method"] if seen[(e["method"], e["dataset"])] == 1 else f"{e['method']} ({e['path']})"
            for e in entries]  # fmt: skip


def _kl_accuracy(scores: Mapping[str, Any], reference: str) -> str:
    s = scores[reference]
    acc = {k: 100 * v for k, v in s["accuracy"].items() if isinstance(v, float)}
    return f"{cell(s['kl'], 3)} / {cell(acc, 1)}"


def _paired(entries: list[dict[str, Any]], boot: Bootstrap) -> list[dict[str, Any]]:
    rows = []
    for dataset in dict.fromkeys(e["dataset"] for e in entries):
        group = [e for e in entries if e["dataset"] == dataset]
        base = group[0]
        for other in group[1:]:
            for key, reference in (("kl", "annotators"), ("kl_truth", "truth")):
                a = read_item_kl(other["dir"] / PREDICTIONS_FILE, key)
                b = read_item_kl(base["dir"] / PREDICTIONS_FILE, key)
                shared = sorted(a.keys() & b.keys())
                if not shared:
                    continue
                diff = paired_difference(np.array([a[i] for i in shared]),
                                         np.array([b[i] for i in shared]), boot)  # fmt: skip
                rows.append({"dataset": dataset, "reference": reference, "run": other["path"],
                             "method": other["method"], "baseline": base["path"],
                             "baseline_method": base["method"], **diff})  # fmt: skip
    return rows


def compare_table(entries: list[dict[str, Any]], boot: Bootstrap) -> dict[str, Any]:
    names = _row_names(entries)
    datasets = list(dict.fromkeys(e["dataset"] for e in entries))
    references = ["annotators"] + (["truth"] if all("truth" in e["scores"] for e in entries) else [])  # fmt: skip
    tables = {}
    for reference in references:
        rows: dict[str, dict[str, str]] = {}
        for name, e in zip(names, entries, strict=True):
            rows.setdefault(name, {})[e["dataset"]] = _kl_accuracy(e["scores"], reference)
        tables[reference] = rows
    return {"datasets": datasets, "tables": tables, "paired": _paired(entries, boot),
            "runs": [{k: v for k, v in e.items() if k != "dir"} | {"dir": str(e["dir"])}
                     for e in entries]}  # fmt: skip


def format_compare(table: Mapping[str, Any]) -> str:
    datasets = table["datasets"]
    lines = []
    for reference, rows in table["tables"].items():
        lines += [f"## KL(p‖q) / accuracy % against the {reference} (95% intervals)", "",
                  "| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]  # fmt: skip
        for name, cells in rows.items():
            lines.append(f"| {name} | " + " | ".join(cells.get(d, "—") for d in datasets) + " |")
        lines.append("")
    if table["paired"]:
        lines += ["## Paired differences of per-item KL (run − reference, same items)", "",
                  "| dataset | vs | run | reference | ΔKL [95%] | share ≥ 0 |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in table["paired"]:
            lines.append(f"| {r['dataset']} | {r['reference']} | {r['method']} | {r['baseline_method']} | "
                         f"{cell(r, 4)} | {number(r['share_not_below_zero'], 3)} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def run(paths: Sequence[Path], output: Path | None, boot: Bootstrap) -> dict[str, Any]:
    """Print the comparison and write compare.md and compare.json to ``output``."""
    out = output or DEFAULT_OUTPUT
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "compare.json").is_file())):  # fmt: skip
        raise UsageError(f"--output={out}: exists and is not an earlier comparison; choose a new directory")  # fmt: skip
    check_writable_dir(out.parent, f"--output={out}")
    entries = [_entry(Path(p)) for p in paths]
    table = compare_table(entries, boot)
    text = format_compare(table)
    with atomic_dir(out) as tmp:
        (tmp / "compare.md").write_text("# Comparison\n\n" + text, encoding="utf-8")
        (tmp / "compare.json").write_text(
            json.dumps(json_safe(table), indent=1, allow_nan=False) + "\n", encoding="utf-8"
        )
    print(text)
    print(f"jdjudge.evaluate: compared {len(entries)} runs -> {out}")
    return table
