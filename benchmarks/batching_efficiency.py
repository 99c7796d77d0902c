"""Real tokens / computed tokens: naive padding versus packing, on real judge prompts.

Usage: python benchmarks/batching_efficiency.py [--shared-data ../shared/data]

Prompts come from the project's loaders and templates (``jdjudge.data.loaders`` and
``jdjudge.data.prompts``) when they are importable, otherwise from the simple built-in
templates below (``--renderer`` forces one). Two tokenizers: a word-level one built by
``jdjudge.data.tokenizer.build_tokenizer`` over the prompts themselves (no <unk>; about one
token per word or punctuation mark), and the real Llama 3 tokenizer from the shared data.
Only lengths matter here, so the datasets' labels are ignored. Data is read by path, never
copied into the project.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jdjudge.data.packing import (  # noqa: E402
    PackedDataset,
    PackedLoader,
    PackingConfig,
    efficiency,
)
from jdjudge.data.tokenizer import build_tokenizer  # noqa: E402

# (name: project loader and built-in renderer, folder under the shared data)
DATASETS = (
    ("summeval", "summeval"),
    ("mtbench", "mtbench_human"),
    ("chaosnli_snli", "chaosnli"),
    ("chaosnli_mnli", "chaosnli"),
)


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _summeval(root: Path) -> list[str]:
    docs = {d["doc_id"]: d["source"] for d in _jsonl(root / "summeval/documents.jsonl")}
    return [
        f"Article: {docs[it['doc_id']]}\nSummary: {it['summary']}\n"
        "Rate the coherence of the summary from 1 to 5.\nScore:"
        for it in _jsonl(root / "summeval/summeval_items.jsonl")
    ]


def _dialogue(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _mtbench(root: Path) -> list[str]:
    folder = root / "mtbench_human"
    rows = _jsonl(folder / "conversations.jsonl")
    convs = {(c["question_id"], c["model"]): c["conversation"] for c in rows}
    prompts = []
    for it in _jsonl(folder / "items.jsonl"):
        turns = 2 * it["turn"]
        a = _dialogue(convs[it["question_id"], it["model_a"]][:turns])
        b = _dialogue(convs[it["question_id"], it["model_b"]][:turns])
        prompts.append(
            f"[Assistant A]\n{a}\n[Assistant B]\n{b}\n"
            "Which assistant answered the last question better: A, B or tie?\nVerdict:"
        )
    return prompts


def _chaosnli(file: str) -> Callable[[Path], list[str]]:
    def render(root: Path) -> list[str]:
        return [
            f"Premise: {r['example']['premise']}\nHypothesis: {r['example']['hypothesis']}\n"
            "Does the premise entail the hypothesis? entailment, neutral or contradiction?\n"
            "Answer:"
            for r in _jsonl(root / "chaosnli" / file)
        ]

    return render


BUILTIN = {
    "summeval": _summeval,
    "mtbench": _mtbench,
    "chaosnli_snli": _chaosnli("chaosNLI_snli.jsonl"),
    "chaosnli_mnli": _chaosnli("chaosNLI_mnli_m.jsonl"),
}


def project_prompts(name: str, folder: Path) -> list[str] | None:
    """Prompts via the project's loader registry and templates; None when unavailable."""
    try:
        from jdjudge.data.loaders import load_records
        from jdjudge.data.prompts import render_prompt
    except ImportError:
        return None
    return [render_prompt(record) for record in load_records(name, folder)]


def naive_efficiency(lengths: np.ndarray, batch: int, fixed: int | None, seed: int) -> tuple:
    """(efficiency, distinct shapes) of right-padded batches of ``batch`` items, padded to
    each batch's longest item (``fixed`` None) or to ``fixed``; the last batch is filled."""
    order = np.random.default_rng([seed, 0]).permutation(len(lengths))
    computed, shapes = 0, set()
    for start in range(0, len(order), batch):
        width = fixed or int(lengths[order[start : start + batch]].max())
        computed += batch * width
        shapes.add((batch, width))
    return float(lengths.sum()) / computed, len(shapes)


def packed_efficiency(lengths: np.ndarray, config: PackingConfig, seed: int) -> dict:
    """Packing over one training epoch and one eval pass, from materialized batches.

    ``steady`` leaves out the epoch's last (partly empty) batch; ``ceiling`` is the best any
    packer with this batch size can do on the epoch: T / (ceil(T / (R·L)) · R·L).
    """
    seqs = [np.ones(n, np.int32) for n in lengths]
    ids = [str(i) for i in range(len(seqs))]
    dataset = PackedDataset.from_sequences(seqs, np.zeros((len(seqs), 1)), ids)
    loader = PackedLoader(dataset, config, seed)
    start = time.perf_counter()
    plan = loader.plan(0)
    plan_ms = 1e3 * (time.perf_counter() - start)
    train = [loader.batch_for_step(s) for s in range(len(plan))]
    evals = list(loader.eval_batches())
    main = loader.shapes[-1]
    capacity = main.rows * main.length
    return {
        "train": efficiency(train),
        "steady": efficiency(train[:-1]) if len(train) > 1 else float("nan"),
        "ceiling": lengths.sum() / (-(-lengths.sum() // capacity) * capacity),
        "eval": efficiency(evals),
        "shapes": len({b["tokens"].shape for b in train + evals}),
        "main": main,
        "plan_ms": plan_ms,
    }


HEADER = (
    "| dataset | prompts | tokenizer | items | mean / max len | pad to batch max (shapes) "
    "| pad to dataset max | tokens/batch | packed epoch | ceiling | packed steady | packed eval "
    "| packed shapes | full shape R×L (N) | plan ms |"
)


def rows_for(label: str, source: str, tok_name: str, lengths: np.ndarray, args, configs) -> list:
    """Table rows of one dataset under one tokenizer: naive once, packing per batch size."""
    longest, n_shapes = naive_efficiency(lengths, args.batch_size, None, args.seed)
    fixed, _ = naive_efficiency(lengths, args.batch_size, int(lengths.max()), args.seed)
    head = (
        f"| {label} | {source} | {tok_name} | {len(lengths)} | {lengths.mean():.0f} / "
        f"{lengths.max()} | {longest:.3f} ({n_shapes}) | {fixed:.3f} |"
    )
    rows = []
    for config in configs:
        p = packed_efficiency(lengths, config, args.seed)
        shape = p["main"]
        rows.append(
            f"{head} {config.tokens_per_batch} | {p['train']:.3f} | {p['ceiling']:.3f} | "
            f"{p['steady']:.3f} | {p['eval']:.3f} | {p['shapes']} | "
            f"{shape.rows}×{shape.length} ({shape.slots}) | {p['plan_ms']:.0f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--renderer", choices=("auto", "project", "builtin"), default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="items per naive batch")
    parser.add_argument("--tokens-per-batch", type=int, nargs="+", default=[16384, 4096])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import PreTrainedTokenizerFast

    llama = PreTrainedTokenizerFast(
        tokenizer_file=str(args.shared_data / "tokenizers/llama3/tokenizer.json")
    )
    configs = [PackingConfig(tokens_per_batch=t, max_length=16384) for t in args.tokens_per_batch]
    print(f"naive: {args.batch_size} items per batch; packing: {configs[0]}, and other sizes\n")
    print(HEADER + "\n" + "|---" * (HEADER.count("|") - 1) + "|")
    for name, folder in DATASETS:
        found = (
            None if args.renderer == "builtin" else project_prompts(name, args.shared_data / folder)
        )
        if found is None and args.renderer == "project":
            raise SystemExit("jdjudge.data.loaders / jdjudge.data.prompts are not importable")
        source = "project" if found is not None else "builtin"
        prompts = found if found is not None else BUILTIN[name](args.shared_data)
        words = build_tokenizer(prompts)
        encoders = (
            ("word-level", lambda t, w=words: [w.bos_token_id, *w.encode(t)]),
            ("llama3", llama.encode),  # adds <|begin_of_text|>
        )
        for tok_name, encode in encoders:
            lengths = np.array([len(encode(p)) for p in prompts], dtype=np.int64)
            print("\n".join(rows_for(name, source, tok_name, lengths, args, configs)))


if __name__ == "__main__":
    main()
