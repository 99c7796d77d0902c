"""How the production train step scales with the packed row length, per attention
implementation: compiled temporaries (XLA's memory analysis), FLOPs (its cost analysis) and
measured step time, for one row of 1k, 2k and 4k tokens packed with items of ``--item``
tokens, in one run on the same machine.

    python benchmarks/attention_scaling.py [--hidden 256 --layers 4 --item 256 --steps 5]

``reference`` materializes the [L, L] scores of every head (quadratic in the row); the
``blockwise`` default visits only the blocks its items span (linear for fixed-size items).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import time

import jax
import numpy as np

from jdjudge.config.presets import llama_shaped
from jdjudge.config.schema import Config, DataConfig, ModelConfig, OptimizerConfig
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.training.jitted import build_steps
from jdjudge.training.model_state import build_model_state, with_attention_blocks
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

LABEL_IDS, SYNONYMS = np.array([[5], [6], [7]], np.int32), np.ones((3, 1), bool)


def packed_row(vocab: int, length: int, item: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One row of ``length`` tokens holding items of ``item`` tokens back to back, each
    answering at its last token, as the packer lays them out."""
    rng = np.random.default_rng(seed)
    items = length // item
    index = np.arange(items * item)
    segments = np.zeros(length, np.int32)
    segments[: items * item] = index // item + 1
    positions = np.zeros(length, np.int32)
    positions[: items * item] = index % item
    return {
        "tokens": rng.integers(0, vocab, (1, length)).astype(np.int32),
        "segment_ids": segments[None],
        "positions": positions[None],
        "answer_index": (np.arange(1, items + 1, dtype=np.int32) * item - 1)[None],
        "targets": rng.dirichlet(np.ones(3), (1, items)).astype(np.float32),
        "weights": np.ones((1, items), np.float32),
        "item_index": np.arange(items, dtype=np.int32)[None],
    }


def measure(config: Config, length: int, args: argparse.Namespace) -> dict[str, float]:
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, 100)
    model_state = build_model_state(config, args.vocab, length, mesh, optimizer,
                                    label_token_ids=LABEL_IDS)  # as train builds it  # fmt: skip
    loss_fn = judge_loss(config.objective, model_state.layout.step_label_ids(LABEL_IDS), SYNONYMS)
    steps = build_steps(model_state, optimizer, loss_fn, mesh)
    state = model_state.init_state(jax.random.key(0))
    batch = global_batch(packed_row(args.vocab, length, args.item), mesh)
    compiled = steps.train.lower(state, batch, jax.random.key(1), model_state.frozen).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    times = []
    for step in range(args.steps + 2):
        started = time.perf_counter()
        state, metrics = steps.train(state, batch, jax.random.key(step), model_state.frozen)
        float(metrics["loss"])  # waits for the step
        times.append(time.perf_counter() - started)
    return {
        "temp_mib": memory.temp_size_in_bytes / 2**20,
        "gflop": cost["flops"] / 1e9,
        "median_ms": statistics.median(times[2:]) * 1e3,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--item", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--implementations", nargs="+", default=["reference", "blockwise"])
    args = parser.parse_args()
    model = llama_shaped(ModelConfig(), args.hidden, args.layers)
    base = Config(data=DataConfig(packing=True), model=model,
                  optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=0))  # fmt: skip
    print(f"hidden {args.hidden} x {args.layers} layers, one packed row of items of "
          f"{args.item} tokens; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    blocks = with_attention_blocks(base, np.array([args.item])).model.attention_block_size
    print(f"blockwise blocks of {blocks} tokens (as train picks them for these items)")
    print(f"{'attention':10} {'row':>6} {'temp MiB':>9} {'GFLOP':>8} {'step ms':>8} {'loss':>8}")
    results: dict[str, list[dict[str, float]]] = {}
    for name in args.implementations:
        config = dataclasses.replace(base, model=dataclasses.replace(model, attention=name))
        config = with_attention_blocks(config, np.array([args.item]))  # as train resolves 0
        for length in args.lengths:
            r = measure(config, length, args)
            results.setdefault(name, []).append(r)
            print(f"{name:10} {length:6} {r['temp_mib']:9.1f} {r['gflop']:8.2f} "
                  f"{r['median_ms']:8.1f} {r['loss']:8.4f}", flush=True)  # fmt: skip
    for name, rows in results.items():
        growth = [b["temp_mib"] / a["temp_mib"] for a, b in itertools.pairwise(rows)]
        print(f"{name}_temp_growth_per_doubling=" + ",".join(f"{g:.2f}" for g in growth))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
