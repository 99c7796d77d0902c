"""``python -m jdjudge.judge --model=<run or HF dir> --input=items.jsonl --output=out.jsonl``

Writes one JSON line per item: ``id``, ``labels``, ``distribution`` (K floats in label
order) and, for Likert items, ``expected_score`` (Σ k·q_k). Input lines are records in the
jdjudge schema (any human judgments in them are ignored) or raw records
``{"id", "prompt", "labels": [verbalizers...]}`` whose prompt is used verbatim, so any tool
can check the numbers: q = softmax over the first token of " <label>" after the prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jdjudge.data.batching import EncodedDataset, PromptTooLong, encode_records, make_batch
from jdjudge.data.prompts import (
    VerbalizerError,
    check_verbalizers,
    label_layout,
    render_prompt,
    verbalizers,
)
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError
from jdjudge.entry import UsageError, run_cli
from jdjudge.loading import LoadedJudge, load_judge
from jdjudge.outputs import atomic_file, check_new_file
from jdjudge.training.steps import judge_log_probs

PROG = "jdjudge.judge"
PAD_MULTIPLE = 64  # batches are cropped to their longest item, rounded up: few compiled shapes
JUDGMENT_KEYS = ("counts", "distribution", "annotations", "true_distribution")


def parse_item(obj: Any, location: str) -> JudgmentRecord:
    """A record to judge from one input line; human judgments, if any, are not needed."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", location=location)
    try:
        if "task" not in obj and "prompt" in obj:  # a raw record
            unknown = set(obj) - {"id", "prompt", "labels"}
            if unknown:
                raise DataError(f"unknown field(s) {sorted(unknown)} in a raw record")
            obj = {"id": obj.get("id"), "task": "raw", "fields": {"prompt": obj["prompt"]},
                   "labels": obj.get("labels")}  # fmt: skip
        labels = obj.get("labels")
        if not isinstance(labels, list) or not labels:
            raise DataError("missing or empty", field="labels")
        fields = {k: v for k, v in obj.items() if k not in JUDGMENT_KEYS}
        uniform = [1.0 / len(labels)] * len(labels)  # placeholder: judging needs no target
        return JudgmentRecord(**fields, distribution=uniform)
    except DataError as error:
        raise error.at(location) from None
    except TypeError as error:
        raise DataError(f"not a judgment record ({error})", location=location) from None


def read_items(path: Path) -> tuple[list[JudgmentRecord], dict[str, str]]:
    """The records to judge and each one's ``file:line`` (for errors found later)."""
    records, where = [], {}
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--input={path}: {error.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            location = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"invalid JSON ({error.msg})", location=location) from None
            record = parse_item(obj, location)
            if record.id in where:
                raise DataError(f"duplicate id {record.id!r} (first on line "
                                f"{where[record.id].rsplit(':', 1)[1]})", location=location)  # fmt: skip
            where[record.id] = location
            records.append(record)
    if not records:
        raise DataError("no items", location=str(path))
    return records, where


def _expected_score(labels: Sequence[str], distribution: np.ndarray) -> float | None:
    try:
        values = np.array([float(label) for label in labels])
    except ValueError:
        return None
    return float(values @ distribution)


@dataclass(frozen=True)
class Group:
    """Records sharing one task and label set, encoded: one K, one label layout."""

    data: EncodedDataset
    label_ids: np.ndarray
    mask: np.ndarray


def prepare_group(
    judge: LoadedJudge, records: list[JudgmentRecord], where: dict[str, str]
) -> Group:
    """Encode a group, or a UsageError naming the line whose labels or prompt do not fit the
    model's tokenizer: all of it is checked before the model runs on anything."""
    tokenizer, first = judge.tokenizer, records[0]
    chat = judge.chat_template and first.task != "raw"  # raw prompts are used verbatim
    surfaces = verbalizers(first.task, first.labels, chat)
    try:
        label_ids, mask = label_layout(check_verbalizers(tokenizer, surfaces, first.labels))
    except VerbalizerError as error:
        raise UsageError(
            f"{where[first.id]}: field 'labels': {error.reason} under the model's tokenizer; "
            "use label words that are one token each"
        ) from None
    add_bos = tokenizer.bos_token_id is not None and not chat  # chat templates carry their BOS
    try:
        data = encode_records(
            records, tokenizer, judge.max_length, add_bos,
            render=lambda r: render_prompt(r, tokenizer, chat),
        )  # fmt: skip
    except PromptTooLong as error:
        raise UsageError(
            f"{where[error.record_id]}: the prompt is {error.length} tokens, longer than "
            f"--max_length={error.max_length}; raise --max_length or shorten the prompt"
        ) from None
    return Group(data, label_ids, mask)


def judge_group(
    judge: LoadedJudge, group: Group, batch_size: int, bar: tqdm
) -> dict[str, np.ndarray]:
    """The distributions of one prepared group."""
    model, params, data = judge.model, judge.params, group.data

    @jax.jit
    def log_probs(params: Any, batch: dict) -> jax.Array:
        return judge_log_probs(model, params, batch, group.label_ids, group.mask)

    out = {}
    for start in range(0, len(data.ids), batch_size):
        indices = np.arange(start, min(start + batch_size, len(data.ids)))
        batch = make_batch(data, indices, batch_size, pad_multiple=PAD_MULTIPLE)
        q = np.exp(np.asarray(log_probs(params, batch), np.float64))[: len(indices)]
        for i, dist in zip(indices, q, strict=True):
            out[data.ids[i]] = dist
        bar.update(len(indices))
    return out


def judge_items(
    judge: LoadedJudge,
    records: list[JudgmentRecord],
    batch_size: int,
    where: dict[str, str] | None = None,
    desc: str = PROG,
) -> list[dict]:
    """One output line per record, in input order (``desc`` labels the progress bar)."""
    where = where or {r.id: f"record {r.id!r}" for r in records}
    by_labels: dict[tuple, list[JudgmentRecord]] = {}
    for record in records:
        by_labels.setdefault((record.task, record.labels), []).append(record)
    groups = [prepare_group(judge, group, where) for group in by_labels.values()]
    results: dict[str, np.ndarray] = {}
    with tqdm(total=len(records), desc=desc, unit="item", disable=None) as bar:
        for group in groups:
            results.update(judge_group(judge, group, batch_size, bar))
    lines = []
    for record in records:
        dist = results[record.id]
        line: dict[str, Any] = {
            "id": record.id,
            "labels": list(record.labels),
            "distribution": [float(x) for x in dist],
        }
        if record.task == "likert":
            line["expected_score"] = _expected_score(record.labels, dist)
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, lambda: _judge(argv))


def _judge(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--model", required=True, help="jdjudge workdir/checkpoint, HF dir or hub id"
    )
    parser.add_argument("--input", required=True, type=Path, help="items to judge (JSONL)")
    parser.add_argument("--output", required=True, type=Path, help="where to write (JSONL)")
    parser.add_argument("--checkpoint", default=None,
                        help="for a run: best (default, lowest eval KL), latest or a step")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=None,
                        help="longest prompt in tokens (default: the run's, or 4096)")  # fmt: skip
    args = parser.parse_args(argv)
    for flag in ("batch_size", "max_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag}={value}: must be >= 1")
    check_new_file(args.output, "--output")  # before any work: nothing is computed in vain
    records, where = read_items(args.input)
    judge = load_judge(args.model, checkpoint=args.checkpoint)
    print(f"{PROG}: {args.model}: {judge.describe()}", file=sys.stderr)
    if args.max_length:
        judge = replace(judge, max_length=args.max_length)
    lines = judge_items(judge, records, args.batch_size, where)
    with atomic_file(args.output) as tmp:  # never a half-written output file
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    print(f"{PROG}: {len(lines)} items -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
