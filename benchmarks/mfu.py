"""MFU of the production train step on one accelerator: a ~1B-parameter random-weight
Llama-shaped model (hidden 2048 × 16 layers, vocabulary 128,256) in bf16, full fine-tuning
and LoRA r16, attention ``auto`` (cuDNN on a GPU, splash on a TPU), rows of 4,096 tokens.

    python benchmarks/mfu.py             # on the GPU or TPU to measure
    python benchmarks/mfu.py --tiny      # any backend, a minute on CPU: checks the script

MFU = the step's model FLOPs (``jdjudge/training/flops.py``, the formula in
docs/performance.md) / (median step time × the chip's peak dense bf16 FLOP/s,
``flops.PEAK_FLOPS``). XLA's own count of the compiled step is printed beside it. The step
is ``benchmarks/lora_cost.measure``'s: the production ``build_model_state`` and
``build_steps`` on one device, timed after 3 warm-up steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the sibling benchmarks

from benchmarks.lora_cost import measure
from jdjudge import host_memory
from jdjudge.config.presets import llama_shaped
from jdjudge.config.schema import Config, LoraConfig, ModelConfig, OptimizerConfig
from jdjudge.training.flops import peak_flops

TINY = {"hidden": 128, "layers": 2, "vocab": 1024, "tokens": 256, "batch": 2, "steps": 2}


def configs(args: argparse.Namespace) -> list[tuple[str, Config]]:
    model = llama_shaped(ModelConfig(), args.hidden, args.layers)
    model = dataclasses.replace(model, dtype=args.dtype, param_dtype=args.dtype, remat=args.remat)
    full = Config(model=model, optimizer=OptimizerConfig(learning_rate=1e-5, warmup_steps=0))
    lora = dataclasses.replace(full, lora=LoraConfig(rank=args.rank, alpha=2.0 * args.rank))
    return [("full fine-tuning", full), (f"LoRA r{args.rank}", lora)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens a row")
    parser.add_argument("--batch", type=int, default=8, help="rows a step")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--remat", default="none", help="model.remat")
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--tiny", action="store_true", help="a small shape, any backend")
    args = parser.parse_args()
    if args.tiny:
        vars(args).update(TINY)
    host_memory.configure(Config().host_malloc)  # as train.run: before JAX's backend starts
    device = jax.devices()[0]
    peak = peak_flops(device)
    print(f"device {device.device_kind} ({jax.default_backend()}), peak bf16 "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (no MFU)'}; hidden "
          f"{args.hidden} x {args.layers} layers, vocab {args.vocab}, {args.batch} x "
          f"{args.tokens} tokens a step, {args.dtype}, remat {args.remat}", flush=True)  # fmt: skip
    if peak is None and not args.tiny:
        raise SystemExit(
            f"mfu: {device.device_kind} has no known peak FLOP/s (training.flops.PEAK_FLOPS), "
            "so there is no MFU to measure; --tiny checks the script on any backend"
        )
    wanted = [
        (n, c) for n, c in configs(args) if ("lora" if c.lora.enabled else "full") in args.modes
    ]
    tokens = args.batch * args.tokens
    for name, config in wanted:
        row = measure(name, config, args)
        seconds = row["median_ms"] / 1e3
        achieved = row["model_gflop"] * 1e9 / seconds
        mfu = f"{achieved / peak:.3f}" if peak else "n/a"
        print(f"{name}: step {row['median_ms']:.1f} ms (spread {row['spread_ms']:.1f}), "
              f"{tokens / seconds:,.0f} tokens/s, model {row['model_gflop']:.2f} GFLOP "
              f"(XLA {row['gflop']:.2f}), {achieved / 1e12:.2f} TFLOP/s, compile "
              f"{row['compile_s']:.1f} s, loss {row['loss']:.4f}; mfu={mfu}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
