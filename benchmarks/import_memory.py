"""Host memory of HF checkpoint import, and proof that training never builds [B, L, V] logits.

Usage: python benchmarks/import_memory.py [--layers 6 --hidden 1024 --vocab 32000]

1. Writes a random Llama-style checkpoint (several safetensors shards, streamed tensor by
   tensor) to a temp dir, then imports it in a fresh subprocess per setting and reports peak
   RSS (ru_maxrss) above the process's RSS just before the import, against the size of the
   params plus the largest tensor (what an import that never copies more than one tensor at a
   time should need). JAX's CPU devices live in host memory, so the params count here.
2. Compiles the judge forward (`Decoder.judge_logits`) and the gradient of a loss on it for a
   128k and a 1k vocabulary and compares XLA's temp-buffer sizes (memory_analysis): they should
   differ by about the vocab-sized tables, not by batch x seq x vocab logits.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1 << 20


def model_config(args: argparse.Namespace):
    from jdjudge.models.config import DecoderConfig

    return DecoderConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_layers=args.layers,
        num_heads=16,
        num_kv_heads=4,
    )


def write_checkpoint(cfg, out: Path, dtype: str, shard_mb: int) -> dict[str, int]:
    """A random checkpoint written tensor by tensor; returns its size facts."""
    from jdjudge.models.hf_config import hf_config_from_decoder
    from jdjudge.models.hf_export import EXPORT_DTYPES, shard_specs, write_safetensors
    from jdjudge.models.hf_import import tensor_specs

    rng = np.random.default_rng(0)
    specs = tensor_specs(cfg)
    itemsize = EXPORT_DTYPES[dtype][0].itemsize
    shards = shard_specs(specs, itemsize, shard_mb * MB)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        tensor = lambda s: rng.standard_normal(s.hf_shape, np.float32) * 0.02  # noqa: E731
        write_safetensors(out / name, shard, tensor, dtype)
        weight_map.update({s.name: name for s in shard})
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    config = hf_config_from_decoder(cfg, "llama") | {"dtype": dtype}
    (out / "config.json").write_text(json.dumps(config))
    sizes = [math.prod(s.hf_shape) for s in specs]
    return {"files": len(shards), "elements": sum(sizes), "largest_elements": max(sizes)}


def child(model_dir: str, scan: bool) -> None:
    """Runs in a fresh process: import the checkpoint, print RSS facts as JSON."""
    import jax
    import psutil

    from jdjudge.models.hf_import import load_hf_model

    jax.numpy.zeros(1).block_until_ready()  # Backend up before the baseline.
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    _, params = load_hf_model(model_dir, dtype="float32", scan_layers=scan)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    print(json.dumps({"before": before, "peak": peak, "params": param_bytes, "s": seconds}))


def import_memory(args: argparse.Namespace) -> None:
    cfg = model_config(args)
    for dtype in args.file_dtypes:
        with tempfile.TemporaryDirectory() as tmp:
            facts = write_checkpoint(cfg, Path(tmp), dtype, args.shard_mb)
            for scan in (False, True):
                cmd = [sys.executable, __file__, "--child", tmp] + (["--scan"] * scan)
                run = subprocess.run(cmd, capture_output=True, text=True, check=True)
                got = json.loads(run.stdout.strip().splitlines()[-1])
                itemsize = got["params"] // facts["elements"]  # Params keep the file dtype.
                largest = facts["largest_elements"] * itemsize
                extra = got["peak"] - got["before"] - got["params"]
                print(
                    f"file {dtype:8s} scan={scan!s:5s} {facts['files']} shards: params "
                    f"{got['params'] / MB:7.1f} MB, largest tensor {largest / MB:6.1f} MB, "
                    f"RSS before {got['before'] / MB:6.1f} MB, peak {got['peak'] / MB:7.1f} MB "
                    f"-> peak - before = params + {extra / MB:6.1f} MB "
                    f"({extra / largest:.2f} x largest tensor), {got['s']:.1f} s"
                )


def logits_memory(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from jdjudge.models.config import DecoderConfig
    from jdjudge.models.decoder import Decoder, abstract_params

    b, length = args.batch, args.seq
    ints = jax.ShapeDtypeStruct((b, length), jnp.int32)
    answer = jax.ShapeDtypeStruct((b,), jnp.int32)
    labels = jax.ShapeDtypeStruct((3, 1), jnp.int32)
    rows = {}
    for vocab in (1000, 128256):
        cfg = DecoderConfig(
            vocab_size=vocab,
            hidden_size=256,
            intermediate_size=512,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
        )
        model = Decoder(cfg)
        params = abstract_params(cfg)

        def judge(p, *batch, model=model):
            return model.apply({"params": p}, *batch, method=Decoder.judge_logits)

        def loss(p, *batch, judge=judge):
            return jax.nn.logsumexp(judge(p, *batch)[..., 0], axis=-1).sum()

        batch = (ints, ints, ints, answer, labels)
        for name, fn in (("judge forward", judge), ("grad of judge loss", jax.grad(loss))):
            mem = jax.jit(fn).lower(params, *batch).compile().memory_analysis()
            rows[(name, vocab)] = mem
            print(
                f"vocab {vocab:6d} {name:19s}: temp {mem.temp_size_in_bytes / MB:8.2f} MB, "
                f"arguments {mem.argument_size_in_bytes / MB:8.2f} MB, "
                f"outputs {mem.output_size_in_bytes / MB:8.2f} MB"
            )
    table = (128256 - 1000) * 256 * 4
    full = b * length * 128256 * 4
    for name in ("judge forward", "grad of judge loss"):
        big, small = rows[(name, 128256)], rows[(name, 1000)]
        print(
            f"{name}: 128k - 1k vocab: temp {_mb(big, small, 'temp')}, arguments "
            f"{_mb(big, small, 'argument')}, outputs {_mb(big, small, 'output')}; one "
            f"embedding/lm_head table = {table / MB:.2f} MB; [B, L, V] float32 logits would "
            f"be {full / MB:.0f} MB"
        )


def _mb(big, small, field: str) -> str:
    key = f"{field}_size_in_bytes"
    return f"{(getattr(big, key) - getattr(small, key)) / MB:+.2f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--file-dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--skip-logits", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.scan)
        return
    if not args.skip_import:
        import_memory(args)
    if not args.skip_logits:
        logits_memory(args)


if __name__ == "__main__":
    main()
