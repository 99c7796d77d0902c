"""A real pretrained judge: SmolLM2-135M-Instruct on ChaosNLI, trained on 5 annotations per
item and scored against the 100-annotator distribution (the paper's Table 1 question at
small scale).

    python -m jdjudge.convert --output=models/SmolLM2-135M-Instruct   # once
    python experiments/smollm2.py --quick    # SNLI, 1 seed, 4 LoRA steps (9.3 min, a smoke test)
    python experiments/smollm2.py            # SNLI, 1 seed, one LoRA epoch per method (CPU)
    python experiments/smollm2.py --grid --paper   # the full grid, the paper's settings (GPU)

Methods: raw (the untrained instruct model, prompted: the paper's "Raw" rows), single-point
(α = 0), KL+CE (α = 0.8, ε = 0) and KL+CE+adversarial (ε = 0.25, PGD), LoRA r16/α32 on
``configs/smollm2.py``; plus the constant predictor (every item judged with the training
split's label marginals), the baseline a judge must beat. ``--ablation`` adds KL+adversarial
(α = 1: without CE) for the paper's ablation (without adversarial = KL+CE, without KL =
single-point); ``--finetune lora full`` adds full fine-tuning; ``--grid`` is all of it on
ChaosNLI SNLI and MNLI, SummEval and MT-Bench with 3 seeds. ``--paper`` trains as the paper
did (bfloat16, 16,384 tokens a step, 2 epochs, eval every 25 steps): for a GPU, where one
process runs every cell and the persistent compilation cache shares the compiled steps
between cells of the same shapes. Runs are cached and resumable under
``experiments/runs/smollm2/``; tables go to ``experiments/results/smollm2[-quick|-paper].md``.
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
ABLATION = {"KL+adv": ("--config.objective.alpha=1",)}  # without CE
QUICK_SPLITS = ("--config.data.test_fraction=0.1", "--config.data.validation_fraction=0.05")
PAPER = ("--config.model.dtype=bfloat16", "--config.model.param_dtype=bfloat16",
         "--config.model.remat=full", "--config.data.tokens_per_batch=16384",
         "--config.epochs=2", "--config.eval_every=25", "--config.checkpoint_every=25")  # fmt: skip
FINETUNE = {"lora": (), "full": ("--config.lora.rank=0",)}
SLUG = {"raw": "raw", "single-point": "single", "KL+CE": "klce", "KL+CE+adv": "adv",
        "KL+adv": "kladv"}  # fmt: skip
GRID_DATASETS = ("chaosnli_snli", "chaosnli_mnli", "summeval", "mtbench")


def grid(datasets: list[str], seeds: list[int], quick: bool, methods: dict[str, tuple[str, ...]],
         finetunes: list[str], paper: bool) -> list[Run]:  # fmt: skip
    # --quick: 4 steps of 2,048 tokens, and smaller validation and test splits (10% test, 5%
    # of the rest validation): a smoke test of the whole path, not comparable to the full run
    length = (("--config.epochs=0", "--config.steps=4", "--config.eval_every=4", "--config.checkpoint_every=4",
               "--config.data.tokens_per_batch=2048", *QUICK_SPLITS) if quick else ())  # fmt: skip
    suffix = "-quick" if quick else "-paper" if paper else ""
    runs = []
    for dataset in datasets:
        config = f"{CONFIG}:{dataset}"
        raw = QUICK_SPLITS if quick else ()  # the same items as the others
        runs.append(Run(f"{dataset}-raw{'-quick' if quick else ''}", config, raw, evaluate=(f"--model={MODEL}",),
                        train=False, tags={"dataset": dataset, "method": "raw", "seed": 0,
                                           "finetune": "none"}))  # fmt: skip
        for finetune in finetunes:
            for method, flags in methods.items():
                for seed in seeds:
                    name = f"{dataset}-{SLUG[method]}{'-full' if finetune == 'full' else ''}-s{seed}{suffix}"  # fmt: skip
                    overrides = (*flags, *FINETUNE[finetune], f"--config.seed={seed}", *length,
                                 *(PAPER if paper else ()))  # fmt: skip
                    runs.append(Run(name, config, overrides, tags={
                        "dataset": dataset, "method": method, "seed": seed, "finetune": finetune}))  # fmt: skip
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
    out = {"kl": float(kl(p, q).mean()), "accuracy": float(correct(p, q).mean())}
    if all(r.true_distribution is not None for r in test):
        truth = np.stack([r.true_distribution for r in test])
        out |= {"kl_truth": float(kl(truth, q).mean()), "accuracy_truth": float(correct(truth, q).mean())}  # fmt: skip
    return out


def _cell(results: list[dict], reference: str, metric: str, scale: float = 1.0) -> str:
    """One seed: the value with its bootstrap interval; several: mean ± std over seeds."""
    entries = [x["scores"].get(reference, {}).get(metric) for x in results]
    if len(results) != 1 or entries[0] is None or entries[0].get("low") is None:
        return mean_std(value(x, reference, metric) * scale for x in results)
    e = entries[0]
    digits = 1 if scale != 1 else 3
    return f"{e['value'] * scale:.{digits}f} [{e['low'] * scale:.{digits}f}, {e['high'] * scale:.{digits}f}]"  # fmt: skip


def _robustness(results: list[dict], delta: float) -> str:
    return mean_std(next(r["kl"] for r in x["robustness"]["perturbed"] if abs(r["delta"] - delta) < 1e-9)
                    for x in results)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", nargs="+", default=None, help="default: chaosnli_snli")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0")
    parser.add_argument("--finetune", nargs="+", choices=list(FINETUNE), default=None)
    parser.add_argument("--ablation", action="store_true", help="add KL+adv (without CE)")
    parser.add_argument("--grid", action="store_true", help="4 datasets, LoRA and full, 3 seeds, ablation")  # fmt: skip
    parser.add_argument("--paper", action="store_true", help="the paper's bf16, 16k-token, 2-epoch training")  # fmt: skip
    parser.add_argument("--root", type=Path, default=ROOT / "experiments" / "runs" / "smollm2")
    args = parser.parse_args(argv)
    if not (MODEL / "config.json").is_file():
        print(f"no model at {MODEL}: run python -m jdjudge.convert --output={MODEL}", file=sys.stderr)  # fmt: skip
        return 2
    datasets = args.datasets or (list(GRID_DATASETS) if args.grid else ["chaosnli_snli"])
    seeds = args.seeds or ([0, 1, 2] if args.grid else [0])  # one CPU LoRA epoch: ~25 min
    finetunes = args.finetune or (["lora", "full"] if args.grid else ["lora"])
    methods = METHODS | (ABLATION if args.ablation or args.grid else {})
    started = time.perf_counter()
    runs = grid(datasets, seeds, args.quick, methods, finetunes, args.paper)
    results = execute_all(runs, args.root, bootstrap=1000)
    cells: dict = {}
    for run, result in zip(runs, results, strict=True):
        key = run.tags["method"] + (
            "" if run.tags["finetune"] in ("lora", "none") else " (full FT)"
        )
        cells.setdefault((key, run.tags["dataset"]), []).append(result)
    constants = {d: constant_predictor(d, QUICK_SPLITS if args.quick else ()) for d in datasets}
    rows = ["raw"] + [m + ("" if f == "lora" else " (full FT)") for f in finetunes for m in methods]
    sections = []
    for title, reference in (("KL to the 100-annotator truth / accuracy % against its majority (test)", "truth"),
                             ("KL to the training-time annotations / accuracy % against their majority (test)", "annotators")):  # fmt: skip

        def cell(row: str, dataset: str, ref: str = reference) -> str:
            if row == "constant":
                c = constants[dataset]
                kl_key, acc_key = (
                    ("kl_truth", "accuracy_truth") if ref == "truth" else ("kl", "accuracy")
                )
                return f"{c[kl_key]:.3f} / {100 * c[acc_key]:.1f}" if kl_key in c else "—"
            found = cells[(row, dataset)]
            if ref not in found[0]["scores"]:
                return "—"
            return f"{_cell(found, ref, 'kl')} / {_cell(found, ref, 'accuracy', 100)}"

        sections.append((title, table([*rows, "constant"], datasets, cell, "method")))
    deltas = [r["delta"] for r in results[0]["robustness"]["perturbed"]]
    for dataset in datasets:
        body = table(rows, [f"δ = {d:g}" for d in deltas],
                     lambda row, col, d=dataset: _robustness(cells[(row, d)], float(col.split("= ")[1])),
                     corner="method")  # fmt: skip
        sections.append((f"Robustness (the paper's Table 3): KL to δ-perturbed test targets, {dataset}", body))  # fmt: skip
    if "KL+adv" in methods:
        ablation = {"KL+CE+adv (full)": "KL+CE+adv", "without adversarial (KL+CE)": "KL+CE",
                    "without CE (KL+adv)": "KL+adv", "without KL (CE: single-point)": "single-point"}  # fmt: skip

        def reference(d: str) -> str:
            return "truth" if "truth" in cells[("KL+CE", d)][0]["scores"] else "annotators"

        body = table(list(ablation), datasets,
                     lambda row, d: f"{_cell(cells[(ablation[row], d)], reference(d), 'kl')} / "
                                    f"{_cell(cells[(ablation[row], d)], reference(d), 'accuracy', 100)}",
                     corner="LoRA")  # fmt: skip
        sections.append(("Ablation: KL / accuracy % (against the truth where there is one)", body))
    seconds = sum(json.loads((args.root / r.name / "experiment.json").read_text())["total_s"]
                  for r in runs)  # fmt: skip
    training = ("4 steps of 2,048 tokens" if args.quick else
                "bfloat16, 16,384 tokens a step, 2 epochs" if args.paper else
                "float32, 2,048 tokens a step, one epoch")  # fmt: skip
    flags = " ".join(argv if argv is not None else sys.argv[1:])
    about = (f"`python experiments/smollm2.py{' ' + flags if flags else ''}`: configs/smollm2.py "
             f"(SmolLM2-135M-Instruct dequantized from Q4_1; LoRA r16/α32; {training}), "
             "ChaosNLI trained on 5 annotations per item, scored on the test split (best "
             "checkpoint by validation KL). One seed: the value and its 95% item-bootstrap "
             f"interval; several: mean ± std over seeds ({len(seeds)} here). Run time of all "
             f"runs (first execution): {seconds:.0f} s; this invocation: "
             f"{time.perf_counter() - started:.0f} s.")  # fmt: skip
    name = "smollm2-quick.md" if args.quick else "smollm2-paper.md" if args.paper else "smollm2.md"
    write_tables(ROOT / "experiments" / "results" / name, "SmolLM2-135M-Instruct as a judge", sections, about)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
