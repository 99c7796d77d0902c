"""The synthetic task, where the truth is known: does distributional training beat
single-point training, and does the adversarial part help, as annotations get scarce?

    python experiments/synthetic.py            # the whole grid (~40 min on 2 CPU cores)
    python experiments/synthetic.py --quick    # one seed, fewer steps and cells (< 15 min)

Every run is ``configs/tiny.py`` through ``jdjudge.train`` and ``jdjudge.evaluate`` (test
split, best checkpoint by validation KL), cached under ``experiments/runs/synthetic/``;
the tables go to ``experiments/results/synthetic[-quick].md``.

1. **Annotators**: n ∈ {1, 3, 5, 10} annotations per item (3,000 items) × methods
   single-point (α=0), KL (α=1), KL+CE (α=0.8), KL+CE+PGD (ε=0.25, the paper's solver),
   KL+CE+worst_case (ε=0.25) × 3 seeds.
2. **Fixed annotation budget** (the paper's study): 3,000 annotations as 3,000 items × 1,
   1,000 × 3 or 600 × 5; every run scored on one common test set (the 3,000-item, n = 5
   task's test split, against its truth).
3. **ε sweep** at n = 3: KL+CE+PGD with ε ∈ {0, 0.05, …, 0.25}.
4. **ε shrinking with the annotation count**: KL+CE+PGD with ε = c/√n against the fixed
   ε = 0.25 of grid 1, for c = √(1 − 1/K) ≈ 0.816 (the RMS ℓ2 error of an n-annotation
   empirical distribution when p is uniform: E‖p̂ − p‖² = (1 − ‖p‖²)/n) and c = 0.25·√3 ≈
   0.433 (equal to the fixed ε at n = 3).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.runner import ROOT, Run, execute_all, mean_std, table, value, write_tables

CONFIG = str(ROOT / "configs" / "tiny.py")
METHODS = {
    "single-point": ("--config.objective.alpha=0", "--config.objective.adversarial.epsilon=0"),
    "KL": ("--config.objective.alpha=1", "--config.objective.adversarial.epsilon=0"),
    "KL+CE": ("--config.objective.alpha=0.8", "--config.objective.adversarial.epsilon=0"),
    "KL+CE+PGD": ("--config.objective.alpha=0.8", "--config.objective.adversarial.epsilon=0.25"),
    "KL+CE+worst_case": ("--config.objective.alpha=0.8",
                         "--config.objective.adversarial.epsilon=0.25",
                         "--config.objective.adversarial.solver=worst_case"),
}  # fmt: skip
SLUG = {"single-point": "single", "KL": "kl", "KL+CE": "klce", "KL+CE+PGD": "pgd",
        "KL+CE+worst_case": "worst"}  # fmt: skip
BUDGET = ((3000, 1), (1000, 3), (600, 5))
BUDGET_METHODS = ("single-point", "KL+CE", "KL+CE+PGD")
EPSILONS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25)
# c of ε = c/√n: the uniform-p RMS sampling error for K = 3 labels, and the fixed ε at n = 3
SCALED_C = (math.sqrt(1 - 1 / 3), 0.25 * math.sqrt(3))
COMMON_TEST = ("--config.data.num_items=3000", "--config.data.num_annotators=5")


def _run(method: str, items: int, n: int, seed: int, steps: int, eps: float | None = None,
         common_test: bool = False) -> Run:  # fmt: skip
    flags = list(METHODS[method])
    name = f"{SLUG[method]}-N{items}-n{n}-s{seed}"
    if eps is not None:
        flags = [f for f in flags if "epsilon" not in f] + [f"--config.objective.adversarial.epsilon={eps}"]  # fmt: skip
        name = f"{SLUG[method]}-eps{eps:.4g}-N{items}-n{n}-s{seed}"
    overrides = (*flags, f"--config.data.num_items={items}", f"--config.data.num_annotators={n}",
                 f"--config.seed={seed}", f"--config.steps={steps}")  # fmt: skip
    tags = {"method": method, "items": items, "n": n, "seed": seed, "eps": eps}
    return Run(f"{name}-t{steps}" + ("-common" if common_test else ""), CONFIG, overrides,
               evaluate=COMMON_TEST if common_test else (), tags=tags)  # fmt: skip


def grids(quick: bool) -> dict[str, list[Run]]:
    seeds = (0,) if quick else (0, 1, 2)
    steps = 250 if quick else 500
    counts = (1, 3, 10) if quick else (1, 3, 5, 10)
    epsilons = (0.0, 0.1, 0.25) if quick else EPSILONS
    return {
        "annotators": [_run(m, 3000, n, s, steps) for n in counts for m in METHODS for s in seeds],
        "budget": [
            _run(m, items, n, s, steps, common_test=True)
            for items, n in BUDGET
            for m in BUDGET_METHODS
            for s in seeds
        ],
        "epsilon": [_run("KL+CE+PGD", 3000, 3, s, steps, eps=e) for e in epsilons for s in seeds],
        "scaled": [
            _run("KL+CE+PGD", 3000, n, s, steps, eps=c / math.sqrt(n))
            for c in (SCALED_C[:1] if quick else SCALED_C)
            for n in counts
            for s in seeds
        ],
    }


def _cells(runs: list[Run], results: list[dict], key) -> dict:
    out: dict = {}
    for run, result in zip(runs, results, strict=True):
        out.setdefault(key(run.tags), []).append(result)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT / "experiments" / "runs" / "synthetic")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    grid = grids(args.quick)
    done = {name: execute_all(runs, args.root) for name, runs in grid.items()}
    sections = []

    runs, results = grid["annotators"], done["annotators"]
    cells = _cells(runs, results, lambda t: (t["method"], t["n"]))
    counts = sorted({t["n"] for t in (r.tags for r in runs)})
    for title, reference, metric in (
        ("KL to the truth (test)", "truth", "kl"),
        ("KL to the annotators (test)", "annotators", "kl"),
        ("Accuracy against the annotators' majority (test)", "annotators", "accuracy"),
        ("Expected calibration error (test, against the annotators)", "annotators", "ece"),
    ):
        body = table(list(METHODS), [f"n = {n}" for n in counts],
                     lambda m, c, ref=reference, met=metric: mean_std(
                         value(x, ref, met) for x in cells[(m, int(c.split()[-1]))]),
                     corner="method")  # fmt: skip
        sections.append((f"Annotators per item: {title}", body))

    runs, results = grid["budget"], done["budget"]
    cells = _cells(runs, results, lambda t: (t["method"], (t["items"], t["n"])))
    columns = [f"{items} × {n}" for items, n in BUDGET]
    body = table(list(BUDGET_METHODS), columns,
                 lambda m, c: mean_std(value(x, "truth", "kl") for x in cells[
                     (m, tuple(int(v) for v in c.split(" × ")))]), corner="method")  # fmt: skip
    sections.append(("Fixed budget of 3,000 annotations: KL to the truth on one common test set", body))  # fmt: skip

    runs, results = grid["epsilon"], done["epsilon"]
    cells = _cells(runs, results, lambda t: t["eps"])
    epsilons = sorted(cells)
    body = table(["KL to the truth", "KL to the annotators", "accuracy"],
                 [f"ε = {e:g}" for e in epsilons],
                 lambda row, c: mean_std(
                     value(x, *{"KL to the truth": ("truth", "kl"),
                                "KL to the annotators": ("annotators", "kl"),
                                "accuracy": ("annotators", "accuracy")}[row])
                     for x in cells[float(c.split("= ")[1])]), corner="n = 3, KL+CE+PGD")  # fmt: skip
    sections.append(("ε sweep (n = 3)", body))

    fixed = _cells(grid["annotators"], done["annotators"], lambda t: (t["method"], t["n"]))
    scaled = _cells(grid["scaled"], done["scaled"],
                    lambda t: (round(t["eps"] * math.sqrt(t["n"]), 3), t["n"]))  # fmt: skip
    rows = {"ε = 0.25 (fixed)": lambda n: fixed[("KL+CE+PGD", n)]}
    for c in sorted({c for c, _ in scaled}):
        rows[f"ε = {c:.3f}/√n"] = lambda n, c=c: scaled[(c, n)]
    body = table(list(rows), [f"n = {n}" for n in counts],
                 lambda row, col: mean_std(value(x, "truth", "kl")
                                           for x in rows[row](int(col.split()[-1]))),
                 corner="KL+CE+PGD, KL to the truth")  # fmt: skip
    sections.append(("ε shrinking with the annotation count (c/√n) against a fixed ε", body))

    seeds = len({r.tags["seed"] for r in grid["annotators"]})
    about = (f"`python experiments/synthetic.py{' --quick' if args.quick else ''}`: "
             f"configs/tiny.py, {grid['annotators'][0].overrides[-1].split('=')[1]} steps, "
             f"{seeds} seed(s), mean ± std over seeds; test split, best checkpoint by "
             f"validation KL. Wall time of this invocation: {time.perf_counter() - started:.0f} s "
             "(cached runs cost nothing).")  # fmt: skip
    name = "synthetic-quick.md" if args.quick else "synthetic.md"
    write_tables(ROOT / "experiments" / "results" / name, "Synthetic task", sections, about)
    return 0


if __name__ == "__main__":
    sys.exit(main())
