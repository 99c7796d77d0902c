"""``report.md``: the evaluation's tables in Markdown, and the short names of methods.

Formatting only: everything shown comes from the metrics dictionary that ``metrics.json``
holds, so the report and the JSON can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jdjudge.config.schema import Config
from jdjudge.evaluation.scoring import HIGHER_IS_BETTER, MAIN

NAMES = {
    "kl": "KL(p‖q)",
    "js": "JS divergence",
    "tv": "total variation",
    "accuracy": "accuracy (majority)",
    "nll": "NLL of the majority",
    "brier": "Brier score",
    "ece": "ECE (15 bins)",
    "entropy_pearson": "corr H(p), H(q) (Pearson)",
    "entropy_spearman": "corr H(p), H(q) (Spearman)",
    "expected_score_pearson": "expected score vs human mean (Pearson)",
    "expected_score_spearman": "expected score vs human mean (Spearman)",
    "expected_score_mae": "|expected score − human mean|",
    "wasserstein": "Wasserstein-1 (label values)",
    "pairwise_agreement": "agreement with the majority preference",
    "swap_consistency": "position-swap consistency",
    "swap_tv": "TV between the two orders",
}


def method_name(config: Config | None, trained: bool = True) -> str:
    """What a run trained with, in the paper's vocabulary: single-point, KL, KL+CE, +adv."""
    if config is None or not trained:
        return "raw"
    objective = config.objective
    if objective.alpha == 0:
        name = "single-point"
    else:
        name = "KL" if objective.alpha == 1 else "KL+CE"
        if objective.is_adversarial:
            solver = objective.adversarial.solver
            name += "+adv" if solver == "pgd" else f"+adv({solver})"
    return name


def number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def cell(entry: Mapping[str, Any], digits: int = 4) -> str:
    """``value [low, high]`` (or the value alone when it has no interval)."""
    text = number(entry.get("value"), digits)
    if "low" in entry:
        text += f" [{number(entry['low'], digits)}, {number(entry['high'], digits)}]"
    return text


def _scores_table(scores: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    references = list(scores)
    header = "| metric | " + " | ".join(f"vs {r}" for r in references) + " |"
    lines = [header, "|---|" + "---|" * len(references)]
    names = [n for n in MAIN] + [n for n in scores[references[0]] if n not in MAIN]
    for name in names:
        arrow = "↑" if name in HIGHER_IS_BETTER else "↓"
        row = [cell(scores[r][name]) if name in scores[r] else "—" for r in references]
        lines.append(f"| {NAMES.get(name, name)} {arrow} | " + " | ".join(row) + " |")
    return lines


def _curve_table(rows: Sequence[Mapping[str, Any]], key: str, title: str) -> list[str]:
    if not rows:
        return []
    lines = [f"| {title} | " + " | ".join(number(r[key], 2) if isinstance(r[key], float)
                                          else str(r[key]) for r in rows) + " |"]  # fmt: skip
    lines.append("|---|" + "---|" * len(rows))
    lines.append("| KL(·‖q) | " + " | ".join(number(r["kl"]) for r in rows) + " |")
    lines.append("| 95% interval | " + " | ".join(
        f"{number(r['low'])}–{number(r['high'])}" for r in rows) + " |")  # fmt: skip
    return lines


def format_report(result: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The whole report.md."""
    about = result["about"]
    boot = result["bootstrap"]
    lines = [
        f"# Evaluation: {about['method']} on {about['dataset']} ({about['split']})",
        "",
        f"- model: `{about['model']}`" + (f", {about['checkpoint']}" if about.get("checkpoint") else ""),
        f"- items: {result['items']}; labels: {', '.join(about['labels'])} (task {about['task']})",
        f"- intervals: {boot['level']:.0%} percentile bootstrap over items, {boot['samples']} "
        f"resamples, seed {boot['seed']}",
        "",
        "## Scores",
        "",
        "Against the annotators' distribution p (the test targets) and, where every item has "
        "one, the true or dense distribution behind them. ↓ lower is better, ↑ higher.",
        "",
        *_scores_table(result["scores"]),
    ]  # fmt: skip
    if "api" in result:
        api = result["api"]
        lines += ["", "## API judgments", "",
                  f"- model `{api['model']}` at `{api['base_url']}`, top {api['top_logprobs']} logprobs",
                  f"- mean probability on label tokens {number(api['mean_label_mass'])}, "
                  f"outside the top k {number(api['mean_outside_mass'])}; "
                  f"items with no label token in the top k: {api['no_label_items']} (judged uniform); "
                  f"with some label absent from it: {api['items_with_absent_labels']} (given "
                  "the most mass the answer allows, docs/evaluation.md)",
                  f"- requests this run: {api['requests']}, answered from the cache: {api['cached']}"]  # fmt: skip
    robustness = result["robustness"]
    if robustness["perturbed"] or robustness["subsampled"]:
        lines += ["", "## Robustness", "",
                  "Perturbed targets (the paper's Table 3): p moved by δ in a random simplex "
                  "direction, projected back onto the simplex (docs/evaluation.md).", "",
                  *_curve_table(robustness["perturbed"], "delta", "δ")]  # fmt: skip
        if robustness["subsampled"]:
            sources = sorted({r["source"] for r in robustness["subsampled"]})
            lines += ["", f"Subsampled annotators: targets from n annotations drawn from each "
                      f"item's {' / '.join(sources)}.", "",
                      *_curve_table(robustness["subsampled"], "n", "n")]  # fmt: skip
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
