"""A real pretrained judge: SmolLM2-135M-Instruct on ChaosNLI, trained on 5 annotations per
item and scored against the 100-annotator distribution (the paper's Table 1 question at
small scale).

    python -m jdjudge.convert --output=models/SmolLM2-135M-Instruct   # once
    python experiments/smollm2.py --quick    # SNLI, 1 seed, 4 LoRA steps (9.3 min, a smoke test)
    python experiments/smollm2.py            # SNLI, 1 seed, one epoch per method (not yet timed)
    python experiments/smollm2.py --datasets chaosnli_snli chaosnli_mnli --seeds 0 1 2

Methods: raw (the untrained instruct model, prompted: the paper's "Raw" rows), single-point
(α = 0), KL+CE (α = 0.8, ε = 0) and KL+CE+adversarial (ε = 0.25, PGD), all LoRA r16/α32 on
``configs/smollm2.py``; plus the constant predictor (every item judged with the training
split's label marginals), the baseline a judge must beat. Runs are cached and resumable
under ``experiments/runs/smollm2/``; tables go to ``experiments/results/smollm2[-quick].md``.
The weights were 4-bit quantized then dequantized: a real, slightly degraded model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.runner import ROOT, Run, execute_all, mean_std, table, value, write_tables

CONFIG = str(ROOT / "configs" / "smollm2.py")
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
METHODS = {
    "single-point": ("--config.objective.alpha=0", "--config.objective.adversarial.epsilon=0"),
    "KL+CE": ("--config.objective.adversarial.epsilon=0",),
    "KL+CE+adv": (),
}
QUICK_SPLITS = ("--config.data.test_fraction=0.1", "--config.data.validation_fraction=0.05")
SLUG = {"raw": "raw", "single-point": "single", "KL+CE": "klce", "KL+CE+adv": "adv"}


def grid(datasets: list[str], seeds: list[int], quick: bool) -> list[Run]:
    # --quick: 4 steps of 2,048 tokens, and smaller validation and test splits (10% test, 5%
    # of the rest validation): a smoke test of the whole path, not comparable to the full run
    length = (("--config.epochs=0", "--config.steps=4", "--config.eval_every=4", "--config.checkpoint_every=4",
               "--config.data.tokens_per_batch=2048", *QUICK_SPLITS) if quick else ())  # fmt: skip
    runs = []
    for dataset in datasets:
        config = f"{CONFIG}:{dataset}"
        raw = QUICK_SPLITS if quick else ()  # the same items as the others
        runs.append(Run(f"{dataset}-raw" + ("-quick" if quick else ""), config, raw,
                        evaluate=(f"--model={MODEL}",),
                        train=False, tags={"dataset": dataset, "method": "raw", "seed": 0}))  # fmt: skip
        for method, flags in METHODS.items():
            for seed in seeds:
                name = f"{dataset}-{SLUG[method]}-s{seed}" + ("-quick" if quick else "")
                runs.append(Run(name, config, (*flags, f"--config.seed={seed}", *length),
                                tags={"dataset": dataset, "method": method, "seed": seed}))  # fmt: skip
    return runs


def constant_predictor(dataset: str, overrides: tuple[str, ...]) -> dict[str, float]:
    """KL of the training split's label marginals, predicted for every test item."""
    from jdjudge.config.cli import load_config
    from jdjudge.data.pipeline import load_splits
    from jdjudge.evaluation.metrics import correct, kl

    splits = load_splits(load_config(["x", f"--config={CONFIG}:{dataset}", *overrides]).data)
    marginal = np.mean([r.distribution for r in splits["train"]], axis=0)
    test = splits["test"]
    q = np.tile(marginal, (len(test), 1))
    p = np.stack([r.distribution for r in test])
    truth = np.stack([r.true_distribution for r in test])
    return {"kl": float(kl(p, q).mean()), "kl_truth": float(kl(truth, q).mean()),
            "accuracy": float(correct(p, q).mean())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", nargs="+", default=["chaosnli_snli"])
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--root", type=Path, default=ROOT / "experiments" / "runs" / "smollm2")
    args = parser.parse_args(argv)
    if not (MODEL / "config.json").is_file():
        print(f"no model at {MODEL}: run python -m jdjudge.convert --output={MODEL}", file=sys.stderr)  # fmt: skip
        return 2
    seeds = args.seeds or [0]  # one LoRA epoch of SmolLM2 is ~35 min on 2 CPU cores
    started = time.perf_counter()
    runs = grid(args.datasets, seeds, args.quick)
    results = execute_all(runs, args.root, bootstrap=1000)
    cells: dict = {}
    for run, result in zip(runs, results, strict=True):
        cells.setdefault((run.tags["method"], run.tags["dataset"]), []).append(result)
    constants = {
        d: constant_predictor(d, QUICK_SPLITS if args.quick else ()) for d in args.datasets
    }
    methods = ["raw", *METHODS]
    sections = []
    for title, reference, metric, const_key in (
        ("KL to the 100-annotator truth (test)", "truth", "kl", "kl_truth"),
        ("KL to the 5-annotation subsample (test)", "annotators", "kl", "kl"),
        ("Accuracy against the 5-annotation majority (test)", "annotators", "accuracy", "accuracy"),
        ("Accuracy against the 100-annotator majority (test)", "truth", "accuracy", None),
    ):

        def cell(
            method: str, dataset: str, ref: str = reference, met: str = metric,
            const: str | None = const_key,
        ) -> str:  # fmt: skip
            if method == "constant":
                return "—" if const is None else f"{constants[dataset][const]:.3f}"
            return mean_std(value(x, ref, met) for x in cells[(method, dataset)])

        sections.append((title, table([*methods, "constant"], args.datasets, cell, "method")))
    seconds = sum(json.loads((args.root / r.name / "experiment.json").read_text())["total_s"]
                  for r in runs)  # fmt: skip
    about = (f"`python experiments/smollm2.py{' --quick' if args.quick else ''} --datasets "
             f"{' '.join(args.datasets)} --seeds {' '.join(map(str, seeds))}`: configs/smollm2.py "
             f"(SmolLM2-135M-Instruct dequantized from Q4_1, LoRA r16/α32, float32, "
             f"{'4 steps of 2,048 tokens' if args.quick else 'one epoch'}), trained on 5 annotations per item, "
             f"scored on the test split (best checkpoint by validation KL); mean ± std over "
             f"{len(seeds)} seed(s). Run time of all runs (first execution): {seconds:.0f} s; "
             f"this invocation: {time.perf_counter() - started:.0f} s.")  # fmt: skip
    name = "smollm2-quick.md" if args.quick else "smollm2.md"
    write_tables(ROOT / "experiments" / "results" / name, "SmolLM2-135M-Instruct on ChaosNLI", sections, about)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
