"""``python -m jdjudge.train --config=configs/tiny.py`` — fine-tune a distributional judge.

Thin wiring: config → data → mesh → model and state → jitted steps → (resume) → loop with
logging, evaluation, checkpoints and clean stops. All math lives in pure modules (objective,
training.steps); all I/O stays here at the edge. Everything that can be refused (config, data,
an incompatible workdir) is refused before the first file is written.
"""

from __future__ import annotations

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

from jdjudge import __version__, compilation_cache, distributed, host_memory
from jdjudge.checkpoint.manager import RunCheckpoints, tokenizer_files
from jdjudge.checkpoint.metrics_log import MetricsWriter
from jdjudge.checkpoint.preemption import PreemptionWatcher
from jdjudge.checkpoint.resume import fingerprint_arrays, truncate_metrics
from jdjudge.checkpoint.retention import best_step
from jdjudge.config.cli import ConfigError, load_config
from jdjudge.config.fields import to_dict, validate
from jdjudge.config.schema import Config
from jdjudge.data.pipeline import JudgmentData, build_judgment_data
from jdjudge.data.prefetch import local_batch, train_batches
from jdjudge.data.sources import BatchSource, PackedSource, make_source
from jdjudge.entry import RunFailed, run_cli
from jdjudge.loading import model_source
from jdjudge.models.attention import describe_blocks
from jdjudge.outputs import is_primary
from jdjudge.sharding import data_parallel_size, global_batch, make_mesh, packed_rows_multiple
from jdjudge.summary import format_summary
from jdjudge.training.flops import peak_flops, token_lora_params
from jdjudge.training.jitted import Steps, build_steps
from jdjudge.training.model_state import ModelState, build_model_state, with_attention_blocks
from jdjudge.training.optim import learning_rate_schedule, make_optimizer
from jdjudge.training.steps import finalize_means, judge_loss
from jdjudge.training.telemetry import Throughput
from jdjudge.workdir import (
    METRICS_FILE,
    Resumed,
    check_forced_change,
    check_workdir,
    initial_eval,
    record_start,
    resume,
)

PROG = "jdjudge.train"
TENSORBOARD_DIR = "tensorboard"
EVAL = "validation"  # periodic evaluation and best-checkpoint selection; "test" only at the end


class NonFiniteError(RunFailed):
    """A non-finite loss or gradient under ``nan_guard="stop"`` (exit status 1)."""


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
    bar = tqdm(total=len(data.splits[split]), desc=f"{PROG} {split}", unit="item",
               leave=False, disable=None if is_primary() else True, dynamic_ncols=True)  # fmt: skip
    with bar:
        for batch in source.eval_batches(split):
            local = local_batch(batch, data.has_truth)
            sums = trainer.steps.evaluate(params, global_batch(local, mesh), frozen)
            for key, value in jax.device_get(sums).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            bar.update(int(np.count_nonzero(batch["weights"])))
    return finalize_means(totals)


def data_fingerprint(data: JudgmentData) -> str:
    arrays = {}
    for name, ds in data.splits.items():
        arrays.update({f"{name}.tokens": ds.tokens, f"{name}.targets": ds.targets})
    return fingerprint_arrays(arrays, [i for ds in data.splits.values() for i in ds.ids])


def batch_source(config: Config, data: JudgmentData, mesh: Mesh) -> BatchSource:
    """Padded rows (``batch_size`` items a step) or packed rows (``data.tokens_per_batch``)."""
    rows_multiple = packed_rows_multiple(mesh, jax.process_count())
    return make_source(config, data.splits, rows_multiple, int(data.tokenizer.pad_token_id))


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
    """The model and state for this data (vocabulary, sequence length, label tokens: their
    head columns may train alone), and the jitted steps with the judge's objective on them."""
    config = with_attention_blocks(config, data.train.lengths)
    optimizer = make_optimizer(config.optimizer, total_steps)
    seq_len = data.train.tokens.shape[1]
    labels = data.label_token_ids
    model_state = build_model_state(
        config, len(data.tokenizer), seq_len, mesh, optimizer, label_token_ids=labels
    )
    step_labels = model_state.layout.step_label_ids(labels)
    loss_fn = judge_loss(config.objective, step_labels, data.synonym_mask)
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


def _check_model_source(config: Config) -> None:
    """``model.init_from`` is a local directory, or a hub id that is cached or fetchable:
    checked before the data (whose tokenizer it is by default), and fast when offline."""
    name = config.model.init_from
    if name:
        model_source(name, f"model.init_from={name!r}", "set --config.model.init_from=<local dir>")


def _nonfinite_message(step: int, metrics: dict[str, Any], ids: list[str]) -> str:
    bad = [int(i) for i in np.asarray(metrics["nonfinite_items"]) if i >= 0]
    named = ", ".join(ids[i] for i in bad) or "none alone (the gradient is non-finite)"
    return f"non-finite loss or gradient at step {step}; items: {named}"


def run(config: Config) -> dict[str, Any]:
    """Train per ``config``; returns the summary (also printed and logged). SIGTERM/SIGINT
    are watched from the start, so an early Ctrl-C also stops cleanly."""
    with PreemptionWatcher(PROG) as watcher:
        validate(config)
        host_memory.configure(config.host_malloc)  # before JAX's CPU client starts its threads
        distributed.initialize(config.distributed)  # before anything starts JAX's backends
        compilation_cache.enable(config.compilation_cache)
        check_workdir(config)
        try:
            mesh = make_mesh(config.mesh.shape(), dcn_data=config.mesh.dcn_data)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _check_runtime(config, mesh)
        _check_model_source(config)
        try:  # everything is loaded and validated before any file is written
            data = build_judgment_data(config.data, default_tokenizer=config.model.init_from)
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None
        source = batch_source(config, data, mesh)
        total_steps = training_steps(config, data, source)
        trainer = build_trainer(config, data, mesh, total_steps)
        fingerprint = data_fingerprint(data)
        resumed = resume(config, trainer.model_state.layout.abstract_state, fingerprint)
        check_forced_change(config, resumed, total_steps)
        shared = {k: v for k, v in to_dict(config).items() if k != "distributed"}
        distributed.check_agreement({"config": shared, "data": fingerprint, "steps": total_steps,
                                     "start": resumed and resumed.step})  # fmt: skip
        if is_primary():
            print(f"{PROG}: data {data.name}\n{data.summary}")
            if not config.model.attention_block_size:  # say what 0 chose
                decoder = trainer.model_state.model.config
                blocks = describe_blocks(decoder.attention, decoder.dtype,
                                         decoder.attention_block_size)  # fmt: skip
                print(f"{PROG}: {blocks}")
        loop = Loop(config, data, source, trainer, mesh, total_steps, watcher)
        return loop.run(resumed, fingerprint)


@dataclass
class Loop:
    """The training loop of one invocation, from its start step to ``total_steps``."""

    config: Config
    data: JudgmentData
    source: BatchSource
    trainer: Trainer
    mesh: Mesh
    total_steps: int
    watcher: PreemptionWatcher

    def evaluate(self, params: Any, split: str) -> dict[str, float]:
        return evaluate(self.trainer, params, self.data, self.source, split, self.mesh)

    def run(self, resumed: Resumed | None, fingerprint: str) -> dict[str, Any]:
        """Train from ``resumed`` (or from scratch) and return the invocation's summary."""
        config, workdir = self.config, self.config.workdir
        start = 0 if resumed is None else resumed.step
        summary: dict[str, Any] = {"start_step": start, "resumed": resumed is not None,
                                   "total_steps": self.total_steps}  # fmt: skip
        if self.watcher.requested:  # a signal during loading: nothing written, nothing lost
            return {**summary, "steps": start, "stopped_by": self.watcher.signal_name,
                    "checkpoint": None}  # fmt: skip
        state, step_rng = self._begin(resumed)
        metadata = {"config": to_dict(config), "data_fingerprint": fingerprint,
                    "version": __version__,
                    **self.trainer.model_state.layout.checkpoint_metadata()}  # fmt: skip
        checkpoints = RunCheckpoints(workdir, config.checkpoint.keep, config.checkpoint.keep_best)
        if resumed is not None and resumed.damaged_steps:
            checkpoints.set_aside(resumed.damaged_steps)
        started = time.perf_counter()
        test_eval: dict[str, float] = {}
        try:
            events = os.path.join(workdir, TENSORBOARD_DIR) if config.tensorboard else None
            with MetricsWriter(os.path.join(workdir, METRICS_FILE), enabled=is_primary(),
                               tensorboard=events, start_step=start) as log:  # fmt: skip
                if resumed is None:
                    first_eval = self.evaluate(state.params, EVAL)
                    log.write(0, "eval", first_eval)
                else:
                    first_eval = initial_eval(workdir) or {}
                saver = Saver(checkpoints, metadata, tokenizer_files(self.data.tokenizer))
                state, last_eval, stopped_by = self._steps(state, step_rng, log, saver)
                if stopped_by is None:  # the held-out test split, once, at the end
                    test_eval = self.evaluate(state.params, "test")
                    log.write(int(state.step), "test", test_eval)
        finally:
            checkpoints.close()
        best = best_step(checkpoints.eval_kl)
        last_eval = last_eval or (first_eval if resumed is None else {})
        return {
            **summary,
            "steps": int(state.step),
            "seconds": round(time.perf_counter() - started, 1),
            "eval_kl_initial": first_eval.get("kl"),
            "eval_kl_final": last_eval.get("kl"),
            "eval_accuracy_final": last_eval.get("accuracy"),
            "eval_kl_truth_final": last_eval.get("kl_truth"),
            "test_kl": test_eval.get("kl"),
            "skipped_steps": int(state.skipped),
            "best_step": best,
            "best_eval_kl": None if best is None else checkpoints.eval_kl[best],
            "checkpoint": str(checkpoints.directory) if checkpoints.eval_kl else None,
            "stopped_by": stopped_by,
        }

    def _begin(self, resumed: Resumed | None) -> tuple[Any, jax.Array]:
        """Record this invocation in the workdir and return the state to start from (with
        the step RNG): the log is cut back to the checkpoint's step so it reads as one run."""
        config = self.config
        start = 0 if resumed is None else resumed.step
        forced = [] if resumed is None else resumed.forced
        record_start(config, self.data.tokenizer, start, self.total_steps, forced)
        if forced:
            print(f"{PROG}: continuing from step {start} under changed run-defining keys "
                  f"({'; '.join(forced)}); recorded in invocations.jsonl", file=sys.stderr)  # fmt: skip
        metrics_path = os.path.join(config.workdir, METRICS_FILE)
        init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
        if resumed is None:
            if is_primary():  # events of an earlier attempt that never saved a checkpoint
                truncate_metrics(metrics_path, -1, rewritten_splits=())
            return self.trainer.model_state.init_state(init_rng), step_rng
        if is_primary():
            truncate_metrics(metrics_path, start)
        print(f"{PROG}: resuming from the checkpoint at step {start}", file=sys.stderr)
        return resumed.state, step_rng

    def _steps(
        self, state: Any, step_rng: jax.Array, log: MetricsWriter, saver: Saver
    ) -> tuple[Any, dict[str, float], str | None]:
        """Steps from ``state.step`` to the end or to a requested stop; returns the state,
        the last evaluation (if any ran) and what stopped the loop (None: it finished).
        Batches are prepared ahead (``train_batches``); the host waits for the device only
        for the first step, log steps, evaluations and saves, so it can prepare meanwhile."""
        config, start = self.config, int(state.step)
        if self.watcher.should_stop(start):  # a signal during compilation or the first eval
            return state, {}, self.watcher.signal_name
        last_eval: dict[str, float] = {}
        skipped_seen = int(state.skipped)
        unread: list[tuple[int, dict[str, jax.Array]]] = []  # "stop": flags not yet checked
        layout = self.trainer.model_state.layout
        lora = layout.lora is not None
        lora_params = token_lora_params(layout.model.config, state.params) if lora else 0
        schedule = learning_rate_schedule(config.optimizer, self.total_steps)
        throughput = Throughput(layout.model.config, lora_params, self.mesh.devices.size,
                                peak_flops())  # fmt: skip
        bar = tqdm(
            range(start, self.total_steps), initial=start, total=self.total_steps,
            desc=PROG, unit="step", disable=None if is_primary() else True, dynamic_ncols=True,
        )  # fmt: skip
        batches = train_batches(self.source, self.mesh, self.data.has_truth, start,
                                self.total_steps)  # fmt: skip
        with bar, batches:
            for step in bar:
                host_batch, batch = batches.get(step)
                rng = jax.random.fold_in(step_rng, step)
                state, metrics = self.trainer.steps.train(
                    state, batch, rng, self.trainer.model_state.frozen
                )
                throughput.add(host_batch)
                if step == start:  # compiled and run once: time the steps from here
                    jax.block_until_ready(metrics["loss"])
                    throughput.open()
                done = step + 1
                if config.nan_guard == "stop":
                    unread.append((done, {k: metrics[k] for k in ("finite", "nonfinite_items")}))
                if done % config.log_every == 0 or done == self.total_steps:
                    self._check_finite(unread)
                    event = {k: float(v) for k, v in jax.device_get(metrics).items()
                             if np.ndim(v) == 0}  # fmt: skip
                    event["skipped_steps"] = int(state.skipped)
                    event["lr"] = float(schedule(done - 1))  # the rate of this step's update
                    event.update(throughput.report())
                    log.write(done, "train", event)
                    bar.set_postfix(loss=f"{event['loss']:.3f}", kl=f"{event['kl']:.3f}",
                                    tok_s=f"{event.get('tokens_per_s', 0):.0f}")  # fmt: skip
                    if event["skipped_steps"] > skipped_seen:
                        tqdm.write(f"{PROG}: {event['skipped_steps']} non-finite steps skipped")
                        skipped_seen = event["skipped_steps"]
                eval_kl = None
                stop = self.watcher.should_stop(done)
                evaluating = done % config.eval_every == 0 or done == self.total_steps
                periodic = done % config.checkpoint_every == 0 or done == self.total_steps
                saving = config.checkpoint.enabled and (periodic or stop)
                if evaluating or saving or stop:  # nothing is evaluated or saved past a bad step
                    self._check_finite(unread)
                with throughput.pause():
                    if evaluating:
                        last_eval = self.evaluate(state.params, EVAL)
                        log.write(done, "eval", last_eval)
                        eval_kl = last_eval["kl"]
                    if saving:
                        saver.save(done, state, eval_kl)
                if stop:
                    return state, last_eval, self.watcher.signal_name
        return state, last_eval, None

    def _check_finite(self, unread: list[tuple[int, dict[str, jax.Array]]]) -> None:
        """Raise for the first non-finite step among the unread (``nan_guard="stop"``). A bad
        step left the state as it was (``lax.cond``), so reading late, but before anything is
        logged or saved, spares the host a wait for the device every step."""
        flags = jax.device_get([metrics["finite"] for _, metrics in unread])
        for (done, metrics), finite in zip(unread, flags, strict=True):
            if not finite:
                raise NonFiniteError(_nonfinite_message(done, metrics, self.data.train.ids))
        unread.clear()


@dataclass(frozen=True)
class Saver:
    """What every checkpoint of this invocation stores beside its state."""

    checkpoints: RunCheckpoints
    metadata: dict[str, Any]
    tokenizer: dict[str, str]

    def save(self, step: int, state: Any, eval_kl: float | None) -> None:
        self.checkpoints.save(step, state, self.metadata, self.tokenizer, eval_kl)


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` includes the program name (as ``sys.argv`` does)."""
    args = list(sys.argv if argv is None else argv)

    def train_and_report() -> int:
        summary = run(load_config(args))
        if is_primary():  # every process has the same summary; one prints it
            print(format_summary(PROG, summary))
        return 0

    return run_cli(PROG, train_and_report)


if __name__ == "__main__":
    sys.exit(main())
