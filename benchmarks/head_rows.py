"""``model.head_rows``: full fine-tuning with the whole untied head trained (``all``) vs only
its label columns (``labels``): the production train step's measured step time and XLA's
compiled memory (arguments + temporaries), in one process on the same batch, the two cases'
steps interleaved.

    python benchmarks/head_rows.py [--hidden 256 --layers 4 --vocab 128256 --tokens 128 --batch 8]

Both use the same model, weights, batch, objective, jit, shardings and donation
(``training.jitted``); the step-0 loss must agree, since the other columns never reach it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from jdjudge.config.presets import llama_shaped
from jdjudge.config.schema import Config, ModelConfig, OptimizerConfig
from jdjudge.data.batching import random_full_rows
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.training.jitted import build_steps
from jdjudge.training.model_state import build_model_state
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

LABEL_IDS, SYNONYMS = np.array([[5], [6], [7]], np.int32), np.ones((3, 1), bool)


def build(config: Config, args: argparse.Namespace) -> dict:
    """The production state and compiled step for ``config``, with its memory analysis."""
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, 100)
    model_state = build_model_state(
        config, args.vocab, args.tokens, mesh, optimizer, label_token_ids=LABEL_IDS
    )
    labels = model_state.layout.step_label_ids(LABEL_IDS)
    loss_fn = judge_loss(config.objective, labels, SYNONYMS)
    steps = build_steps(model_state, optimizer, loss_fn, mesh)
    state = model_state.init_state(jax.random.key(0))
    batch = global_batch(random_full_rows(args.vocab, args.batch, args.tokens), mesh)
    frozen = model_state.frozen
    compiled = steps.train.lower(state, batch, jax.random.key(1), frozen).compile()
    memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "name": config.model.head_rows,
        "accessed_mb": cost["bytes accessed"] / 2**20,  # XLA's count: load-independent
        "argument_mb": memory.argument_size_in_bytes / 2**20,
        "temp_mb": memory.temp_size_in_bytes / 2**20,
        "run": lambda state, rng: steps.train(state, batch, rng, frozen),
        "state": state,
        "times": [],
        "losses": [],
    }


def time_interleaved(rows: list[dict], steps: int, warmup: int) -> None:
    """One step of each case in turn, so a shared machine's load swings hit both alike."""
    for step in range(steps + warmup):
        for row in rows:
            started = time.perf_counter()
            row["state"], metrics = row["run"](row["state"], jax.random.key(step))
            row["losses"].append(float(metrics["loss"]))  # waits for the step
            if step >= warmup:
                row["times"].append(time.perf_counter() - started)
    for row in rows:
        row["median_ms"] = statistics.median(row["times"]) * 1e3
        row["spread_ms"] = (max(row["times"]) - min(row["times"])) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    model = llama_shaped(ModelConfig(), args.hidden, args.layers)
    config = Config(model=model, optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=0))
    rows = [
        build(dataclasses.replace(config, model=dataclasses.replace(model, head_rows=h)), args)
        for h in ("all", "labels")
    ]
    load = os.getloadavg()[0]
    time_interleaved(rows, args.steps, args.warmup)
    print(f"hidden {args.hidden} x {args.layers} layers, untied head, vocab {args.vocab}, batch "
          f"{args.batch} x {args.tokens} tokens, float32, full fine-tuning, median of "
          f"{args.steps} steps; load average {load:.2f} -> {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs, {jax.devices()[0].platform}")  # fmt: skip
    print(f"{'head_rows':10} {'step ms':>9} {'spread':>8} {'args MiB':>9} {'temp MiB':>9} "
          f"{'accessed MiB':>12} {'step-0 loss':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['name']:10} {r['median_ms']:9.1f} {r['spread_ms']:8.1f} "
              f"{r['argument_mb']:9.1f} {r['temp_mb']:9.1f} {r['accessed_mb']:12.1f} "
              f"{r['losses'][0]:12.6f}")  # fmt: skip
    full, labels = rows
    print(f"labels_step_time_vs_all={labels['median_ms'] / full['median_ms']:.3f}")
    memory = {r["name"]: r["argument_mb"] + r["temp_mb"] for r in rows}
    print(f"labels_memory_vs_all={memory['labels'] / memory['all']:.3f}")


if __name__ == "__main__":
    main()
