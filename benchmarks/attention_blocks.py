"""Blockwise attention's forward + backward by block size on padded rows (one item a row), the
measurement behind ``attention.row_block_size``: the same inputs for every block, the blocks
timed in turn, round after round, in one process.

    python benchmarks/attention_blocks.py [--lengths 256 1024 2560 --blocks 128 256 --reps 7]

Heads as in ``step_time``'s hidden 256 × 4 model (2 KV heads of 2 query heads, head_dim 64);
each row holds about ``--tokens`` / length items' worth of rows, so every length computes a
similar number of tokens. Each item ends up to 5% before its row's end, as in a padded batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdjudge.models.attention import row_block_size
from jdjudge.models.blockwise import balanced_block, blockwise_attention

KV_HEADS, GROUP, HEAD_DIM = 2, 2, 64


def padded_rows(rows: int, length: int, rng: np.random.Generator) -> tuple[jax.Array, ...]:
    real = rng.integers(int(length * 0.95), length + 1, rows)
    segment_ids = (np.arange(length)[None] < real[:, None]).astype(np.int32)
    shape = (rows, length, KV_HEADS)
    q = jnp.asarray(rng.standard_normal((*shape, GROUP, HEAD_DIM)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((*shape, HEAD_DIM)), jnp.float32) for _ in "kv")
    return q, k, v, jnp.asarray(segment_ids)


def forward_backward(block: int):
    def loss(q, k, v, segment_ids):
        return jnp.sum(blockwise_attention(q, k, v, segment_ids, block) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def time_blocks(inputs: tuple[jax.Array, ...], blocks: list[int], reps: int) -> dict[int, float]:
    """Median ms of each block's step, the blocks interleaved so drift hits all alike."""
    steps = {block: forward_backward(block) for block in blocks}
    for step in steps.values():
        jax.block_until_ready(step(*inputs))  # compile
    times: dict[int, list[float]] = {block: [] for block in blocks}
    for _ in range(reps):
        for block, step in steps.items():
            started = time.perf_counter()
            jax.block_until_ready(step(*inputs))
            times[block].append(time.perf_counter() - started)
    return {block: statistics.median(t) * 1e3 for block, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[160, 256, 384, 512, 640, 768, 896, 1024, 1280, 2560])  # fmt: skip
    parser.add_argument("--blocks", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--tokens", type=int, default=8192, help="rows x length, about")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; forward + backward "
          f"ms, median of {args.reps} (block -> its balanced size)")  # fmt: skip
    for length in args.lengths:
        rows = max(1, args.tokens // length)
        ms = time_blocks(padded_rows(rows, length, rng), args.blocks, args.reps)
        best = min(ms, key=ms.get)
        cells = "  ".join(f"{b} -> {balanced_block(length, b)}: {t:7.1f}" for b, t in ms.items())
        ratio = ms[args.blocks[-1]] / ms[args.blocks[0]]
        print(f"{rows:3} x {length:5}: {cells}  {args.blocks[-1]}/{args.blocks[0]} {ratio:.3f}  "
              f"fastest {best}, row_block_size {row_block_size(length)}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
