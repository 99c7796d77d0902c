"""``python -m jdjudge.train --config=configs/tiny.py`` — fine-tune a distributional judge.

Thin wiring: config → data → mesh → model and state → jitted steps → (resume) → loop with
logging, evaluation, checkpoints and clean stops. All math lives in pure modules (objective,
training.steps); all I/O stays here at the edge. Everything that can be refused (config, data,
an incompatible workdir) is refused before the first file is written.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jdjudge import __version__
from jdjudge.checkpoint.manager import (
    CHECKPOINT_DIR,
    checkpoint_manager,
    read_metadata,
    restore_latest,
    save_checkpoint,
    set_aside,
    tokenizer_files,
)
from jdjudge.checkpoint.metrics_log import MetricsWriter
from jdjudge.checkpoint.preemption import PreemptionWatcher
from jdjudge.checkpoint.resume import fingerprint_arrays, run_defining_differences, truncate_metrics
from jdjudge.config.cli import ConfigError, fail, load_config
from jdjudge.config.fields import to_dict, validate
from jdjudge.config.schema import Config
from jdjudge.data.packing import PackingConfig
from jdjudge.data.pipeline import JudgmentData, build_judgment_data
from jdjudge.data.sources import BatchSource, PackedSource, PaddedSource, process_rows
from jdjudge.sharding import data_parallel_size, global_batch, make_mesh
from jdjudge.training.jitted import Steps, build_steps
from jdjudge.training.model_state import ModelState, build_model_state
from jdjudge.training.optim import make_optimizer
from jdjudge.training.state import TrainState
from jdjudge.training.steps import finalize_means, judge_loss

PROG = "jdjudge.train"
EVAL = "validation"  # periodic evaluation and best-checkpoint selection; "test" only at the end


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient under ``nan_guard="stop"``."""


@dataclass(frozen=True)
class Resumed:
    step: int
    state: TrainState
    damaged_steps: list[int]


def _local_batch(batch: dict[str, np.ndarray], with_truth: bool) -> dict[str, np.ndarray]:
    """This process's rows of a global batch, without reference targets the data lacks."""
    local = process_rows(batch, jax.process_index(), jax.process_count())
    if not with_truth:
        local.pop("true_targets", None)
    return local


@dataclass(frozen=True)
class Trainer:
    """What the loop drives: the model and state, and the jitted steps over them."""

    model_state: ModelState
    steps: Steps


def evaluate(
    trainer: Trainer,
    params: Any,
    data: JudgmentData,
    source: BatchSource,
    split: str,
    mesh: Mesh,
) -> dict[str, float]:
    """Weighted means of the eval metrics over a whole split."""
    totals: dict[str, float] = {}
    frozen = trainer.model_state.frozen
    for batch in source.eval_batches(split):
        local = _local_batch(batch, data.has_truth)
        sums = jax.device_get(trainer.steps.evaluate(params, global_batch(local, mesh), frozen))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return finalize_means(totals)


def data_fingerprint(data: JudgmentData) -> str:
    arrays = {}
    for name, ds in data.splits.items():
        arrays.update({f"{name}.tokens": ds.tokens, f"{name}.targets": ds.targets})
    return fingerprint_arrays(arrays, [i for ds in data.splits.values() for i in ds.ids])


def batch_source(config: Config, data: JudgmentData, mesh: Mesh) -> BatchSource:
    """Padded rows (``batch_size`` items a step) or packed rows (``data.tokens_per_batch``)."""
    if not config.data.packing:
        return PaddedSource(data.splits, config.batch_size, config.eval_batch_size, config.seed)
    max_length = config.data.max_length
    packing = PackingConfig(
        tokens_per_batch=config.data.tokens_per_batch,
        min_length=min(config.data.min_bucket_length, max_length),
        max_length=max_length,
        rows_multiple=data_parallel_size(mesh) * jax.process_count(),
        pad_id=int(data.tokenizer.pad_token_id),
    )
    return PackedSource(data.splits, packing, config.seed)


def training_steps(config: Config, data: JudgmentData, source: BatchSource) -> int:
    """``steps``, or with ``epochs`` > 0 the steps that cover that many passes over train."""
    if not config.epochs:
        return config.steps
    if isinstance(source, PackedSource):
        loader = source.loaders["train"]
        whole = int(config.epochs)
        steps = sum(len(loader.plan(e)) for e in range(whole))
        return steps + round((config.epochs - whole) * len(loader.plan(whole)))
    return math.ceil(config.epochs * len(data.train) / config.batch_size)


def build_trainer(config: Config, data: JudgmentData, mesh: Mesh, total_steps: int) -> Trainer:
    """The model and state for this data (vocabulary, sequence length), and the jitted steps
    with the judge's objective on its label tokens."""
    optimizer = make_optimizer(config.optimizer, total_steps)
    seq_len = data.train.tokens.shape[1]
    model_state = build_model_state(config, len(data.tokenizer), seq_len, mesh, optimizer)
    loss_fn = judge_loss(config.objective, data.label_token_ids, data.synonym_mask)
    return Trainer(model_state, build_steps(model_state, optimizer, loss_fn, mesh))


def _check_runtime(config: Config, mesh: Mesh) -> None:
    """Checks that need the devices (the mesh) rather than only the config."""
    shards = data_parallel_size(mesh)
    for key in () if config.data.packing else ("batch_size", "eval_batch_size"):
        value = getattr(config, key)
        if value % shards or value % jax.process_count():
            raise ConfigError(
                f"{key}={value}: must be divisible by the {shards} data-parallel shards "
                f"and the {jax.process_count()} processes"
            )


def _check_workdir(config: Config) -> None:
    """The one check that looks at the filesystem: the workdir must not be a file."""
    if os.path.exists(config.workdir) and not os.path.isdir(config.workdir):
        raise ConfigError(f"workdir={config.workdir!r}: exists and is not a directory")


def _resume(config: Config, trainer: Trainer, fingerprint: str) -> Resumed | None:
    """The newest usable checkpoint of this workdir, after checking it belongs to this run.
    Reads only; raises ConfigError when the workdir holds a different run."""
    if not os.path.isdir(os.path.join(config.workdir, CHECKPOINT_DIR)):
        return None
    manager = checkpoint_manager(config.workdir)
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            return None
        saved = _newest_metadata(manager, steps)
        if not config.force:
            current = to_dict(config)
            differences = run_defining_differences(saved.get("config", {}), current)
            if saved.get("data_fingerprint") != fingerprint:
                differences.append("data fingerprint (the items or their tokenization changed)")
            if differences:
                raise ConfigError(
                    f"workdir {config.workdir} holds a different run: {'; '.join(differences)}; "
                    "use another workdir or --config.force=true"
                )
        restored = restore_latest(manager, trainer.model_state.layout.abstract_state)
        if restored is None:
            raise ConfigError(
                f"workdir {config.workdir} has checkpoints {steps} but none restores; "
                "use another workdir"
            )
        step, state, damaged = restored
        return Resumed(step=step, state=state, damaged_steps=damaged)
    finally:
        manager.close()


def _newest_metadata(manager: Any, steps: list[int]) -> dict[str, Any]:
    for step in steps:
        try:
            return read_metadata(manager, step)
        except Exception:  # a damaged step: restore_latest warns about it
            continue
    return {}


def _nonfinite_message(step: int, metrics: dict[str, Any], ids: list[str]) -> str:
    bad = [int(i) for i in np.asarray(metrics["nonfinite_items"]) if i >= 0]
    named = ", ".join(ids[i] for i in bad) or "none alone (the gradient is non-finite)"
    return f"non-finite loss or gradient at step {step}; items: {named}"


def run(config: Config) -> dict[str, Any]:
    """Train per ``config``; returns the summary (also printed and logged)."""
    validate(config)
    _check_workdir(config)
    try:
        mesh = make_mesh(config.mesh.shape())
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _check_runtime(config, mesh)
    try:  # everything is loaded and validated before any file is written
        data = build_judgment_data(config.data, default_tokenizer=config.model.init_from)
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    source = batch_source(config, data, mesh)
    total_steps = training_steps(config, data, source)
    trainer = build_trainer(config, data, mesh, total_steps)
    fingerprint = data_fingerprint(data)
    resumed = _resume(config, trainer, fingerprint)
    print(f"{PROG}: data {data.name}\n{data.summary}")
    return _train(config, data, source, trainer, mesh, fingerprint, resumed, total_steps)


def _train(
    config: Config,
    data: JudgmentData,
    source: BatchSource,
    trainer: Trainer,
    mesh: Mesh,
    fingerprint: str,
    resumed: Resumed | None,
    total_steps: int,
) -> dict[str, Any]:
    workdir = config.workdir
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(to_dict(config), indent=2) + "\n")
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    data.tokenizer.save_pretrained(tokenizer_dir)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    metadata = {
        "config": to_dict(config),
        "data_fingerprint": fingerprint,
        "version": __version__,
    }
    tokenizer = tokenizer_files(tokenizer_dir)

    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    if resumed is None:
        state, start = trainer.model_state.init_state(init_rng), 0
    else:
        state, start = resumed.state, resumed.step
        set_aside(os.path.join(workdir, CHECKPOINT_DIR), resumed.damaged_steps)
        truncate_metrics(metrics_path, start)
        print(f"{PROG}: resuming from the checkpoint at step {start}", file=sys.stderr)

    manager = checkpoint_manager(workdir, config.checkpoint.keep, config.checkpoint.keep_best)
    started = time.perf_counter()
    first_eval: dict[str, float] | None = None
    last_eval: dict[str, float] = {}
    stopped_by: str | None = None
    test_eval: dict[str, float] = {}
    saved_step = start if resumed is not None else -1
    skipped_seen = int(state.skipped)
    try:
        with MetricsWriter(metrics_path) as log, PreemptionWatcher() as watcher:
            if resumed is None:
                first_eval = last_eval = evaluate(trainer, state.params, data, source, EVAL, mesh)
                log.write(0, "eval", last_eval)
            bar = tqdm(
                range(start, total_steps), initial=start, total=total_steps, desc=PROG,
                unit="step", disable=None, dynamic_ncols=True,
            )  # fmt: skip
            for step in bar:
                local = _local_batch(source.train_batch(step), data.has_truth)
                rng = jax.random.fold_in(step_rng, step)
                batch = global_batch(local, mesh)
                state, metrics = trainer.steps.train(state, batch, rng, trainer.model_state.frozen)
                done = step + 1
                if config.nan_guard == "stop" and not bool(metrics["finite"]):
                    raise NonFiniteError(_nonfinite_message(done, metrics, data.train.ids))
                if done % config.log_every == 0 or done == total_steps:
                    values = jax.device_get(metrics)
                    event = {k: float(v) for k, v in values.items() if np.ndim(v) == 0}
                    event["skipped_steps"] = int(state.skipped)
                    log.write(done, "train", event)
                    bar.set_postfix(loss=f"{event['loss']:.3f}", kl=f"{event['kl']:.3f}")
                    if event["skipped_steps"] > skipped_seen:
                        tqdm.write(f"{PROG}: {event['skipped_steps']} non-finite steps skipped")
                        skipped_seen = event["skipped_steps"]
                eval_kl = None
                if done % config.eval_every == 0 or done == total_steps:
                    last_eval = evaluate(trainer, state.params, data, source, EVAL, mesh)
                    log.write(done, "eval", last_eval)
                    eval_kl = last_eval["kl"]
                stop = watcher.should_stop(done)
                periodic = done % config.checkpoint_every == 0 or done == total_steps
                if config.checkpoint.enabled and (periodic or stop):
                    save_checkpoint(manager, done, state, metadata, tokenizer, eval_kl)
                    saved_step = done
                if stop:
                    stopped_by = watcher.signal_name
                    break
            bar.close()
            if stopped_by is None:  # the held-out test split, once, at the end
                test_eval = evaluate(trainer, state.params, data, source, "test", mesh)
                log.write(int(state.step), "test", test_eval)
    finally:
        manager.wait_until_finished()
        manager.close()

    return {
        "steps": int(state.step),
        "seconds": round(time.perf_counter() - started, 1),
        "eval_kl_initial": None if first_eval is None else first_eval["kl"],
        "eval_kl_final": last_eval.get("kl"),
        "eval_accuracy_final": last_eval.get("accuracy"),
        "eval_kl_truth_final": last_eval.get("kl_truth"),
        "test_kl": test_eval.get("kl"),
        "skipped_steps": int(state.skipped),
        "checkpoint": str(manager.directory) if saved_step >= 0 else None,
        "stopped_by": stopped_by,
    }


def format_summary(summary: dict[str, Any]) -> str:
    if summary["stopped_by"]:
        return (
            f"{PROG}: stopped by {summary['stopped_by']} at step {summary['steps']}; "
            f"checkpoint saved in {summary['checkpoint']}; rerun the same command to resume"
        )
    parts = [f"{PROG}: {summary['steps']} steps in {summary['seconds']}s"]
    final = summary["eval_kl_final"]
    if final is not None:
        initial = summary["eval_kl_initial"]
        start = f"{initial:.4f} -> " if initial is not None else ""
        truth = summary["eval_kl_truth_final"]
        parts.append(
            f"eval KL {start}{final:.4f}"
            + (f", KL to truth {truth:.4f}" if truth is not None else "")
            + f", accuracy {summary['eval_accuracy_final']:.3f}"
        )
    if summary["test_kl"] is not None:
        parts.append(f"test KL {summary['test_kl']:.4f}")
    if summary["skipped_steps"]:
        parts.append(f"{summary['skipped_steps']} non-finite steps skipped")
    parts.append(f"checkpoint {summary['checkpoint']}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config = load_config(argv)
        summary = run(config)
    except ConfigError as error:
        fail(PROG, str(error))
    except NonFiniteError as error:
        fail(PROG, str(error), status=1)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
