"""How close do the inner solvers get to the true maximum of max_{p̃ ∈ Δ ∩ B(p, ε)} KL(p̃ ‖ q)?

    python experiments/solvers.py [--quick]

Two kinds of cases, each scored as solver value / brute-force maximum:

* **during training**: (p, q) pairs a real training run produces — the training split's
  annotator distributions (n = 3 and n = 5) and the predictions of the synthetic experiment's
  KL+CE+PGD run on them (``jdjudge.evaluate --split=train`` of its best checkpoint), K = 3;
* **random**: p from n = 3 or 5 multinomial annotations, q from a Dirichlet, K = 3, 4, 5.

The maximum is found by brute force: K = 3 on a grid of the simplex (step 1/600) restricted to
the ball, refined by a finer grid around the best point; K ≥ 4 from dense samples of the
ball's boundary (KL is convex, so the maximum lies there) plus the vertices of Δ inside it,
with a local refinement. Solvers: the paper's PGD (5 steps of 0.05) and ``worst_case``
(5 linearization steps from several starts), both as training runs them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.runner import ROOT, table, write_tables
from jdjudge.evaluation.metrics import kl

EPSILON = 0.25


def _simplex_grid(step: float) -> np.ndarray:
    m = round(1 / step)
    i, j = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")
    keep = i + j <= m
    return np.stack([i[keep], j[keep], m - i[keep] - j[keep]], -1) / m


GRID = _simplex_grid(1 / 600)


def brute_max_k3(p: np.ndarray, q: np.ndarray, eps: float) -> float:
    inside = GRID[np.linalg.norm(GRID - p, axis=1) <= eps]
    values = kl(inside, q)
    best = inside[np.argmax(values)]
    # refine: a fine local grid around the best grid point, still inside Δ ∩ ball
    offsets = np.stack(np.meshgrid(*[np.linspace(-2 / 600, 2 / 600, 41)] * 2, indexing="ij"), -1).reshape(-1, 2)  # fmt: skip
    local = np.concatenate([best[:2] + offsets, 1 - (best[:2] + offsets).sum(1, keepdims=True)], 1)
    ok = (local >= 0).all(1) & (np.linalg.norm(local - p, axis=1) <= eps)
    return float(max(values.max(), kl(local[ok], q).max() if ok.any() else -np.inf))


@functools.cache
def _projection():
    """jdjudge's exact projection onto Δ ∩ B(c, r), jitted: eager dispatch of its bisection
    made the full run take hours; one compiled program per candidate shape instead."""
    import jax

    from jdjudge.objective.projections import project_uncertainty_set

    return jax.jit(lambda v, c, r: project_uncertainty_set(v, c, r, "l2", 40))


def _project(v: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    """Rows of v projected onto Δ ∩ B(p, ε) (float64): only a way to make feasible
    candidates; their KL is computed here, independently."""
    centre = np.broadcast_to(p, v.shape)
    return np.asarray(_projection()(v, centre, np.full(len(v), eps)))


def brute_max_sampled(p: np.ndarray, q: np.ndarray, eps: float, rng, samples: int) -> float:
    """K ≥ 4: the best of dense samples of the boundary (points beyond the ball projected
    onto Δ ∩ B), Δ's vertices inside the ball and p, refined by shrinking perturbations."""
    k = len(p)
    u = rng.standard_normal((samples, k))
    u -= u.mean(1, keepdims=True)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    radii = eps * rng.uniform(1.0, 3.0, size=(samples, 1))
    candidates = _project(p + radii * u, p, eps)
    vertices = np.eye(k)[np.linalg.norm(np.eye(k) - p, axis=1) <= eps]
    candidates = np.concatenate([candidates, vertices, p[None]])
    values = kl(candidates, q)
    best, best_value = candidates[np.argmax(values)], values.max()
    for scale in (0.05, 0.01, 0.002, 0.0005):
        d = rng.standard_normal((samples // 4, k)) * scale
        local = _project(best + d, p, eps)
        local_values = kl(local, q)
        if local_values.max() > best_value:
            best, best_value = local[np.argmax(local_values)], local_values.max()
    return float(best_value)


def solver_values(p: np.ndarray, q: np.ndarray, eps: float) -> dict[str, np.ndarray]:
    from jdjudge.objective.adversarial import adversarial_target

    log_q = np.log(q)
    out = {}
    for solver in ("pgd", "worst_case"):
        target = np.asarray(adversarial_target(p, log_q, epsilon=np.full(len(p), eps), steps=5,
                                               step_size=0.05, solver=solver))  # fmt: skip
        out[solver] = kl(np.clip(target, 0, None), q)
    return out


def training_cases(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) of a trained run on its training split (``jdjudge.evaluate --split=train``)."""
    from jdjudge import evaluate

    out = run / "eval-train"
    if not (out / "predictions.jsonl").is_file():
        config = json.loads((run / "experiment.json").read_text())["args"]
        assert evaluate.main(["jdjudge.evaluate", *config, "--split=train", "--bootstrap=10"]) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return np.array([x["p"] for x in lines]), np.array([x["q"] for x in lines])


def random_cases(k: int, n: int, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.dirichlet(np.ones(k), size=count)
    p = np.stack([rng.multinomial(n, t) / n for t in truth])
    q = rng.dirichlet(np.full(k, 2.0), size=count)
    return p, q


def ratios(p: np.ndarray, q: np.ndarray, rng, samples: int) -> dict[str, np.ndarray]:
    k = p.shape[1]
    best = np.array([brute_max_k3(a, b, EPSILON) if k == 3 else
                     brute_max_sampled(a, b, EPSILON, rng, samples) for a, b in zip(p, q, strict=True)])  # fmt: skip
    found = solver_values(p, q, EPSILON)
    base = kl(p, q)
    best = np.maximum(best, np.maximum(found["pgd"], found["worst_case"]))  # never below a solver
    gain = best - base
    # the share of the possible increase over KL(p ‖ q) that each solver realizes; where p
    # itself is the maximum (no increase possible) every solver has realized all of it
    none = gain <= 1e-9 * np.maximum(best, 1.0)
    shares = {name: np.where(none, 1.0, (values - base) / np.where(none, 1.0, gain))
              for name, values in found.items()}  # fmt: skip
    return shares | {
        "value_pgd": found["pgd"] / best,
        "value_worst_case": found["worst_case"] / best,
    }


def _row(r: dict[str, np.ndarray]) -> list[str]:
    cells = []
    for solver in ("pgd", "worst_case"):
        share, value = r[solver], r[f"value_{solver}"]
        cells += [f"{np.mean(share):.3f}", f"{np.percentile(share, 5):.3f}",
                  f"{np.mean(value >= 0.995):.3f}", f"{np.min(value):.3f}"]  # fmt: skip
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--run", type=Path, help="a synthetic experiment run (default: KL+CE+PGD, n = 3)")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    count, samples = (60, 4000) if args.quick else (300, 20000)
    cases = {}
    runs = ROOT / "experiments" / "runs" / "synthetic"
    found = sorted(runs.glob("pgd-N3000-n3-s0-t*"), key=lambda d: int(d.name.rsplit("-t", 1)[1]))
    run = args.run or (found[-1] if found else None)  # the longest-trained such run
    if run is not None:
        p, q = training_cases(run)
        pick = rng.choice(len(p), size=min(count, len(p)), replace=False)
        cases[f"training: {run.name} (K = 3)"] = (p[pick], q[pick])
    import jax  # float64 from here on (the training cases were judged in float32 above)

    jax.config.update("jax_enable_x64", True)
    for k in (3, 4, 5):
        for n in (3, 5):
            cases[f"random: K = {k}, n = {n}"] = random_cases(k, n, count, rng)
    rows, results = list(cases), {}
    for name, (p, q) in cases.items():
        results[name] = _row(ratios(p, q, rng, samples))
        print(f"{name}: {results[name]}", file=sys.stderr)
    columns = [f"{s}: {c}" for s in ("PGD", "worst_case")
               for c in ("mean share", "5th pct share", "≥ 99.5% of max", "min of max")]  # fmt: skip
    body = table(rows, columns, lambda r, c: results[r][columns.index(c)], corner="cases")
    about = (f"`python experiments/solvers.py{' --quick' if args.quick else ''}`: ε = {EPSILON} "
             f"(ℓ2), {count} cases each; *share*: (KL(p̃‖q) − KL(p‖q)) / (max − KL(p‖q)), the part "
             "of the possible increase a solver realizes; *of max*: KL(p̃‖q) / max. Wall time "
             f"{time.perf_counter() - started:.0f} s.")  # fmt: skip
    name = "solvers-quick.md" if args.quick else "solvers.md"
    write_tables(ROOT / "experiments" / "results" / name, "Inner solvers against the true maximum",
                 [("Solver value against brute force", body)], about)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
