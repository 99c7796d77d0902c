"""LoRA at each projection vs LoRA by weight merge vs full fine-tuning: the production train
step's compiled FLOPs and temporaries (XLA's own cost and memory analysis) and its measured
step time, in one run on the same machine: the three steps take turns, one step each a
round, so the machine's load falls on all three alike.

    python benchmarks/lora_cost.py [--hidden 512 --layers 8 --tokens 256 --batch 8 --steps 20]

"merged" is the peer: the same adapters applied as W' = W + s·A·B inside the step (what
jdjudge did before), which makes the backward form every full weight gradient. All three use
the same model, batch, objective, jit, shardings and donation (``training.jitted``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jdjudge import host_memory
from jdjudge.config.presets import llama_shaped
from jdjudge.config.schema import Config, LoraConfig, ModelConfig, OptimizerConfig
from jdjudge.data.batching import random_full_rows
from jdjudge.models import lora
from jdjudge.models.decoder import Decoder
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.training.flops import token_lora_params, train_flops_per_token
from jdjudge.training.jitted import build_steps
from jdjudge.training.model_state import ModelState, build_model_state
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss

LABEL_IDS, SYNONYMS = np.array([[5], [6], [7]], np.int32), np.ones((3, 1), bool)


def _merged_peer(model_state: ModelState, cfg: LoraConfig) -> ModelState:
    """The same state, its adapters merged into the kernels inside the step."""
    layout = model_state.layout

    def merged(trainable, base, rng):
        del rng
        return lora.merge(base, trainable, cfg)

    plain = Decoder(dataclasses.replace(layout.model.config, lora_dropout=0.0))
    layout = dataclasses.replace(layout, params_fn=merged, model=plain)
    return dataclasses.replace(model_state, layout=layout)


def _flops(compiled: jax.stages.Compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@dataclasses.dataclass
class Prepared:
    """One case compiled and ready to step: its figures from XLA's analyses and its state."""

    figures: dict
    run: Callable[[Any, int], tuple[Any, float]]  # (state, step) -> (state, loss), done
    state: Any
    times: list[float] = dataclasses.field(default_factory=list)
    loss: float = float("nan")

    def step(self, step: int) -> None:
        started = time.perf_counter()
        self.state, self.loss = self.run(self.state, step)
        self.times.append(time.perf_counter() - started)


def prepare(name: str, config: Config, args: argparse.Namespace, merged: bool = False) -> Prepared:
    """Build and compile the production train step for ``config`` on random rows."""
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, 100)
    model_state = build_model_state(config, args.vocab, args.tokens, mesh, optimizer,
                                    label_token_ids=LABEL_IDS)  # as train builds it  # fmt: skip
    if merged:
        model_state = _merged_peer(model_state, config.lora)
    steps = build_steps(
        model_state,
        optimizer,
        judge_loss(config.objective, model_state.layout.step_label_ids(LABEL_IDS), SYNONYMS),
        mesh,
    )
    state = model_state.init_state(jax.random.key(0))
    batch = global_batch(random_full_rows(args.vocab, args.batch, args.tokens), mesh)
    started = time.perf_counter()
    compiled = steps.train.lower(state, batch, jax.random.key(1), model_state.frozen).compile()
    compile_s = time.perf_counter() - started
    cost = _flops(compiled)
    params = state.params  # the eval step's forward on the same batch: what the backward adds
    forward = _flops(steps.evaluate.lower(params, batch, model_state.frozen).compile())
    memory = compiled.memory_analysis()
    decoder = model_state.model.config  # the model FLOPs MFU divides by (training.flops)
    adapters = token_lora_params(decoder, state.params) if config.lora.enabled else 0
    model_flops = train_flops_per_token(decoder, args.tokens, adapters) * args.batch * args.tokens
    figures = {
        "name": name,
        "gflop": cost / 1e9,
        "model_gflop": model_flops / 1e9,
        "backward_gflop": (cost - forward) / 1e9,
        "temp_mb": memory.temp_size_in_bytes / 2**20,
        "compile_s": compile_s,
    }

    def run(state: Any, step: int) -> tuple[Any, float]:
        state, metrics = steps.train(state, batch, jax.random.key(step), model_state.frozen)
        jax.block_until_ready(state)  # the whole step, its update too, not only the loss
        return state, float(metrics["loss"])

    return Prepared(figures, run, state)


def time_interleaved(cases: list[Prepared], steps: int, warmup: int = 3) -> list[dict]:
    """Step the cases in turn, one step each a round, the order rotating every round, so a
    change in the machine's load falls on all of them alike; ``warmup`` rounds untimed.
    Each case's row gets its median and spread, and ``paired`` its per-round ratios to the
    first case's step."""
    for round_ in range(warmup + steps):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            case.step(round_)
    rows = []
    for case in cases:
        times = case.times[warmup:]
        rows.append({**case.figures, "median_ms": statistics.median(times) * 1e3,
                     "spread_ms": (max(times) - min(times)) * 1e3, "loss": case.loss,
                     "times": times})  # fmt: skip
    first = rows[0]["times"]
    for row in rows:
        row["paired"] = [t / f for t, f in zip(row["times"], first, strict=True)]
    return rows


def measure(name: str, config: Config, args: argparse.Namespace, merged: bool = False) -> dict:
    """One case alone: its figures and the median of ``args.steps`` steps after 3."""
    return time_interleaved([prepare(name, config, args, merged)], args.steps)[0]


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    host_memory.configure(Config().host_malloc)  # as train.run: before JAX's CPU client starts
    model = llama_shaped(ModelConfig(), args.hidden, args.layers)
    optimizer = OptimizerConfig(learning_rate=1e-4, warmup_steps=0)
    full = Config(model=model, optimizer=optimizer)
    with_lora = dataclasses.replace(full, lora=LoraConfig(rank=args.rank, alpha=2.0 * args.rank))
    print(f"hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, batch "
          f"{args.batch} x {args.tokens} tokens, r={args.rank}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    prepared = [
        prepare("full fine-tuning", full, args),
        prepare("LoRA merged (peer)", with_lora, args, merged=True),
        prepare("LoRA at the projections", with_lora, args),
    ]
    rows = time_interleaved(prepared, args.steps)
    print(f"{'case':26} {'GFLOP':>9} {'bwd GFLOP':>9} {'temp MiB':>9} {'step ms':>9} "
          f"{'spread':>8} {'compile s':>9} {'loss':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['name']:26} {r['gflop']:9.2f} {r['backward_gflop']:9.2f} {r['temp_mb']:9.1f} "
              f"{r['median_ms']:9.1f} {r['spread_ms']:8.1f} {r['compile_s']:9.1f} "
              f"{r['loss']:8.4f}")  # fmt: skip
    full_row, merged_row, attached = rows
    print(f"lora_flops_vs_full={attached['gflop'] / full_row['gflop']:.3f}")
    backward = attached["backward_gflop"] / full_row["backward_gflop"]
    print(f"lora_backward_flops_vs_full={backward:.3f}")
    print(f"lora_flops_vs_merged={attached['gflop'] / merged_row['gflop']:.3f}")
    low, paired, high = _quartiles(attached["paired"])
    print(f"LoRA / full fine-tuning step, paired by round: median {paired:.3f} "
          f"(IQR {low:.3f}-{high:.3f}); load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"lora_step_time_vs_full={attached['median_ms'] / full_row['median_ms']:.3f}")
    print(f"lora_step_time_vs_full_paired={paired:.3f}")
    print(f"lora_step_time_vs_merged={attached['median_ms'] / merged_row['median_ms']:.3f}")


if __name__ == "__main__":
    main()
