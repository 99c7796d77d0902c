"""``python -m jdjudge.evaluate --config=<the run's config> --config.workdir=<run dir>``

Scores a judge on a split and writes ``<workdir>/eval/``: ``metrics.json``, ``report.md``,
``predictions.jsonl`` and PNG plots. The judge is the run's best checkpoint (``--checkpoint``
picks another), any Hugging Face model (``--model``: untrained, the "raw" baseline) or a chat
model behind an OpenAI-compatible API (``--api``). The items are the config's test split
(``--split`` another) or a JSONL file of records (``--input``). ``--compare DIR...`` prints
one table across evaluated runs instead. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from jdjudge.config.cli import load_config
from jdjudge.config.schema import Config
from jdjudge.data.jsonl import load_jsonl
from jdjudge.data.pipeline import SPLITS, load_splits
from jdjudge.data.prompts import fit_to_max_length
from jdjudge.data.records import JudgmentRecord
from jdjudge.entry import UsageError, run_cli
from jdjudge.evaluation import compare
from jdjudge.evaluation.bootstrap import Bootstrap
from jdjudge.evaluation.metrics import kl
from jdjudge.evaluation.predictions import PREDICTIONS_FILE, Predictions, write_predictions
from jdjudge.evaluation.report import format_report, method_name, number
from jdjudge.evaluation.scoring import MAIN, evaluate_predictions
from jdjudge.outputs import atomic_dir, check_writable_dir, json_safe
from jdjudge.workdir import METRICS_FILE

PROG = "jdjudge.evaluate"
METRICS_JSON = "metrics.json"
REPORT = "report.md"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split("\n\n")[1])  # fmt: skip
    ap.add_argument("--model", help="jdjudge run (or checkpoint step dir), HF dir or hub id "
                    "(default: the config's workdir)")  # fmt: skip
    ap.add_argument("--checkpoint", help="for a run: best (default), latest or a step")
    ap.add_argument("--split", default="test", choices=SPLITS, help="the config's split to score")
    ap.add_argument("--input", type=Path, help="records to score (JSONL, with human judgments)")
    ap.add_argument("--output", type=Path, help="output directory (default: <workdir>/eval)")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and robustness")
    ap.add_argument("--compare", nargs="+", type=Path, metavar="DIR",
                    help="evaluated runs (or their eval dirs): one table across them")  # fmt: skip
    api = ap.add_argument_group("closed-model baseline")
    api.add_argument("--api", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api.add_argument("--api_model", help="the chat model, e.g. gpt-4o")
    api.add_argument("--api_key_env", default="OPENAI_API_KEY",
                     help="environment variable holding the API key")  # fmt: skip
    api.add_argument("--api_top_logprobs", type=int, default=20)
    api.add_argument("--api_concurrency", type=int, default=4, help="requests in flight")
    api.add_argument("--api_cache", type=Path, help="response cache (default ~/.cache/jdjudge/api)")
    return ap


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own flags, and the ``--config``/``--config.KEY`` arguments left for ``load_config``."""
    ap = parser()
    args, rest = ap.parse_known_args(list(argv[1:]))
    unknown = [a for a in rest if not a.startswith("--config")]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    for flag in ("batch_size", "bootstrap", "api_top_logprobs", "api_concurrency"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag}={getattr(args, flag)}: must be >= 1")
    if args.compare and (rest or args.model or args.api or args.input):
        ap.error("--compare reads evaluated runs; it takes no --config, --model, --api or --input")
    if args.api and not args.api_model:
        ap.error("--api needs --api_model (the chat model to ask)")
    if args.api and args.model:
        ap.error("give --model (a local judge) or --api (a remote one), not both")
    return args, rest


def _config(args: argparse.Namespace, config_argv: list[str]) -> Config | None:
    """The config that names the data (and, for a run, how it was trained)."""
    if any(a.startswith("--config=") for a in config_argv):
        return load_config([PROG, *config_argv])
    if config_argv:
        raise UsageError("--config.KEY overrides need --config=FILE")
    return None


def _output_dir(args: argparse.Namespace, config: Config | None, model: str | None) -> Path:
    if args.output is not None:
        out = args.output
    else:
        base = config.workdir if config is not None else model
        if not base:
            raise UsageError("--output is required when there is no config workdir or run")
        suffix = f"-{args.input.stem}" if args.input else "" if args.split == "test" else f"-{args.split}"  # fmt: skip
        out = Path(base) / f"eval{suffix}"
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / METRICS_JSON).is_file())):  # fmt: skip
        raise UsageError(f"--output={out}: exists and is not an earlier evaluation; choose a new directory")  # fmt: skip
    check_writable_dir(out.parent if out.parent != Path("") else Path("."), f"--output={out}")
    return out


def _records(args: argparse.Namespace, config: Config | None) -> list[JudgmentRecord]:
    if args.input is not None:
        if not args.input.is_file():
            raise UsageError(f"--input={args.input}: no such file")
        return load_jsonl(args.input)
    if config is None:
        raise UsageError("give --config (its data section names the items) or --input")
    try:
        return load_splits(config.data)[args.split]
    except ValueError as error:
        raise UsageError(f"data: {error}") from None


def _local_judgments(
    args: argparse.Namespace, config: Config | None, model: str, records: list[JudgmentRecord]
) -> tuple[np.ndarray, dict[str, Any]]:
    """q from a jdjudge run or an HF model, rendering prompts as the config says."""
    from jdjudge.compilation_cache import DEFAULT_DIR, enable
    from jdjudge.judge import judge_items  # JAX and the models load only when needed
    from jdjudge.loading import is_run, load_judge

    enable(config.compilation_cache if config is not None else DEFAULT_DIR)
    judge = load_judge(model, checkpoint=args.checkpoint)
    about = {"model": model, "checkpoint": judge.describe() if judge.step is not None else None}
    data = (judge.config or config).data if (judge.config or config) else None
    if not is_run(model) and data is not None:  # an HF model renders prompts as the config does
        judge = replace(judge, chat_template=bool(data.chat_template), max_length=int(data.max_length))  # fmt: skip
    print(f"{PROG}: {model}: {judge.describe()}", file=sys.stderr)
    add_bos = judge.tokenizer.bos_token_id is not None and not judge.chat_template
    try:
        fitted = fit_to_max_length(
            records, judge.tokenizer, judge.max_length, truncate=bool(data and data.truncate),
            chat_template=judge.chat_template, reserved=1 if add_bos else 0,
        )  # fmt: skip
    except ValueError as error:
        raise UsageError(f"{error}") from None
    if judge.config is not None and config is not None and args.input is None:
        _warn_data_differences(judge.config, config)
    lines = judge_items(judge, fitted, args.batch_size, desc=PROG)
    about["method"] = method_name(judge.config, trained=judge.step is not None)
    about["run_config"] = judge.config
    return np.array([line["distribution"] for line in lines], np.float64), about


# data keys that change how items are batched or tokenized for the step, not which items
BATCHING_ONLY = ("tokenizer", "packing", "tokens_per_batch", "max_row_length",
                 "min_bucket_length", "widths_per_octave")  # fmt: skip


def _warn_data_differences(trained: Config, given: Config) -> None:
    """The items come from ``--config``'s data section; if the run trained on another (a
    forgotten override), its test split is other items, which the user should know."""
    from jdjudge.checkpoint.resume import flatten
    from jdjudge.config.fields import to_dict

    ran, now = flatten(to_dict(trained.data)), flatten(to_dict(given.data))
    differ = [f"data.{k}={now.get(k)!r} (the run: {ran.get(k)!r})" for k in sorted(ran.keys() | now.keys())
              if ran.get(k) != now.get(k) and k not in BATCHING_ONLY]  # fmt: skip
    if differ:
        print(f"{PROG}: warning: --config's data differs from the run's: {'; '.join(differ)}; "
              "its splits may hold other items", file=sys.stderr)  # fmt: skip


def _api_judgments(
    args: argparse.Namespace, records: list[JudgmentRecord]
) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    from jdjudge.evaluation.api import ApiSettings, judge_with_api

    settings = ApiSettings(
        base_url=args.api, model=args.api_model, key_env=args.api_key_env,
        top_logprobs=args.api_top_logprobs, concurrency=args.api_concurrency,
        cache_dir=args.api_cache,
    )  # fmt: skip
    got = judge_with_api(records, settings)
    extra = {"label_mass": got.label_mass, "outside_mass": got.outside_mass,
             "no_label": got.no_label, "absent_labels": got.filled}  # fmt: skip
    api = {"base_url": args.api, "model": args.api_model, "top_logprobs": args.api_top_logprobs,
           "mean_label_mass": float(got.label_mass.mean()),
           "mean_outside_mass": float(got.outside_mass.mean()),
           "no_label_items": int(got.no_label.sum()),
           "items_with_absent_labels": int((got.filled > 0).sum()), "requests": got.requests,
           "cached": got.cached}  # fmt: skip
    about = {"model": f"{args.api_model} @ {args.api}", "checkpoint": None, "method": f"api:{args.api_model}"}  # fmt: skip
    return got.q, about, extra, api


def _training_events(model: str | None) -> list[dict[str, Any]] | None:
    from jdjudge.checkpoint.metrics_log import read_metrics

    if not model:
        return None
    run = Path(model)
    if run.name.isdigit() and run.parent.name == "checkpoints":  # one step of a run
        run = run.parent.parent
    path = run / METRICS_FILE
    return read_metrics(path) if path.is_file() else None


def _write(out: Path, result: dict[str, Any], preds: Predictions, events: Any, title: str) -> None:
    """Everything into a temporary directory that replaces ``out`` whole when complete."""
    from jdjudge.evaluation.plots import write_plots

    with atomic_dir(out) as tmp:
        p = preds.p
        plots = write_plots(
            tmp, labels=preds.labels, p=p, q=preds.q, item_kl=kl(p, preds.q),
            reliability=result["reliability"], robustness=result["robustness"],
            training=events, title=title,
        )  # fmt: skip
        write_predictions(tmp / PREDICTIONS_FILE, preds)
        text = json.dumps(json_safe(result), indent=1, allow_nan=False)
        (tmp / METRICS_JSON).write_text(text + "\n", encoding="utf-8")
        (tmp / REPORT).write_text(format_report(result, plots), encoding="utf-8")


def evaluate(argv: Sequence[str]) -> dict[str, Any]:
    """Score one judge; returns the metrics dictionary (also written to ``metrics.json``)."""
    args, config_argv = parse_args(argv)
    config = _config(args, config_argv)
    model = None if args.api else (args.model or (config.workdir if config else None))
    if not args.api and not model:
        raise UsageError("give --model, or --config with the run's workdir")
    out = _output_dir(args, config, model)
    records = _records(args, config)
    extra: dict[str, np.ndarray] = {}
    if args.api:
        q, about, extra, api = _api_judgments(args, records)
    else:
        q, about = _local_judgments(args, config, model, records)
        api = None
    run_config = about.pop("run_config", None) or config
    try:
        preds = Predictions(records, q, extra)
    except ValueError as error:
        raise UsageError(f"--input={args.input}: {error}") from None
    dataset = run_config.data.name if run_config and args.input is None else (args.input.stem if args.input else "?")  # fmt: skip
    about.update(dataset=dataset, split=args.split if args.input is None else "input",
                 labels=list(preds.labels), task=preds.task)  # fmt: skip
    result = {"about": about, **evaluate_predictions(preds, Bootstrap(args.bootstrap, args.seed))}
    if api is not None:
        result["api"] = api
    title = f"{about['method']} · {dataset} · {about['split']} ({len(records)} items)"
    _write(out, result, preds, _training_events(model), title)
    print(_summary(result, out))
    return result


def _summary(result: dict[str, Any], out: Path) -> str:
    scores = result["scores"]["annotators"]
    parts = [f"{name} {number(scores[name]['value'])} [{number(scores[name]['low'])}, "
             f"{number(scores[name]['high'])}]" for name in (*MAIN[:2], "accuracy")]  # fmt: skip
    if "truth" in result["scores"]:
        parts.append(f"KL to truth {number(result['scores']['truth']['kl']['value'])}")
    return f"{PROG}: {result['items']} items; " + "; ".join(parts) + f" -> {out}"


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` includes the program name (as ``sys.argv`` does)."""
    args = list(sys.argv if argv is None else argv)

    def run() -> int:
        parsed, _ = parse_args(args)
        if parsed.compare:
            compare.run(parsed.compare, parsed.output, Bootstrap(parsed.bootstrap, parsed.seed))
        else:
            evaluate(args)
        return 0

    return run_cli(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
