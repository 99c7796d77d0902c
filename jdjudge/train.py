"""``python -m jdjudge.train --config=configs/tiny.py`` — fine-tune a distributional judge.

Thin wiring: config → data → mesh → sharded init → jitted steps → log / eval / checkpoint.
All math lives in pure modules (losses, train_step); all I/O stays here at the edge.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from jdjudge import __version__
from jdjudge.builders import decoder_config, objective_config
from jdjudge.checkpoint import checkpoint_manager, save_checkpoint
from jdjudge.cli import ConfigError, fail, load_config
from jdjudge.config_validation import validate_config
from jdjudge.data.batching import EncodedDataset, eval_batches, make_batch, train_batch_indices
from jdjudge.data.pipeline import JudgmentData, build_judgment_data
from jdjudge.metrics_log import MetricsWriter
from jdjudge.models.decoder import Decoder, partition_rules
from jdjudge.optim import make_optimizer
from jdjudge.sharding import (
    MESH_AXES,
    batch_sharding,
    data_parallel_size,
    global_batch,
    make_mesh,
    replicated,
    tree_shardings,
)
from jdjudge.train_step import (
    TrainState,
    finalize_means,
    init_train_state,
    make_eval_step,
    make_train_step,
)

PROG = "jdjudge.train"


def _local_batch(
    ds: EncodedDataset, indices: np.ndarray, batch_size: int, with_truth: bool
) -> dict[str, np.ndarray]:
    """This process's slice of the global batch (the whole batch on one host)."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    batch = make_batch(ds, indices, batch_size)
    batch = {key: value[start : start + per_process] for key, value in batch.items()}
    if not with_truth:
        batch.pop("true_targets", None)
    return batch


def _eval_indices(ds: EncodedDataset, batch_size: int) -> Iterator[np.ndarray]:
    yield from eval_batches(len(ds.ids), batch_size)


def evaluate(
    eval_step: Any, params: Any, data: JudgmentData, config: ConfigDict, mesh: Any
) -> dict[str, float]:
    """Weighted means of the eval metrics over the whole held-out split."""
    totals: dict[str, float] = {}
    for indices in _eval_indices(data.eval, config.eval_batch_size):
        batch = _local_batch(data.eval, indices, config.eval_batch_size, data.has_truth)
        sums = jax.device_get(eval_step(params, global_batch(batch, mesh)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return finalize_means(totals)


def _check_runtime(config: ConfigDict, mesh: Any) -> None:
    """Checks that need the devices (the mesh) rather than only the config."""
    shards = data_parallel_size(mesh)
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % shards or config[key] % jax.process_count():
            raise ConfigError(
                f"{key}={config[key]}: must be divisible by the {shards} data-parallel shards "
                f"and the {jax.process_count()} processes"
            )


def run(config: ConfigDict) -> dict[str, Any]:
    """Train per ``config``; returns the summary (also printed and logged)."""
    errors = validate_config(config)
    if errors:
        raise ConfigError("; ".join(errors))
    try:
        mesh = make_mesh({axis: config.mesh[axis] for axis in MESH_AXES})
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _check_runtime(config, mesh)

    try:  # everything is loaded and validated before any file is written
        data = build_judgment_data(config.data)
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    model = Decoder(decoder_config(config.model, vocab_size=len(data.tokenizer)))
    objective = objective_config(config.objective)
    optimizer = make_optimizer(config.optimizer, config.steps)

    rng = jax.random.key(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    seq_len = data.train.tokens.shape[1]
    abstract = jax.eval_shape(lambda r: init_train_state(model, optimizer, r, seq_len), init_rng)
    state_shardings = tree_shardings(abstract, partition_rules(), mesh)
    state: TrainState = jax.jit(
        lambda r: init_train_state(model, optimizer, r, seq_len), out_shardings=state_shardings
    )(init_rng)

    label_ids, synonym_mask = data.label_token_ids, data.synonym_mask
    train_step = jax.jit(
        make_train_step(model, optimizer, objective, label_ids, synonym_mask),
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(make_eval_step(model, objective, label_ids, synonym_mask))

    workdir = config.workdir
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as handle:
        handle.write(config.to_json_best_effort(indent=2) + "\n")
    data.tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))

    started = time.perf_counter()
    first_eval: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    with MetricsWriter(os.path.join(workdir, "metrics.jsonl")) as log:
        first_eval = last_eval = evaluate(eval_step, state.params, data, config, mesh)
        log.write(0, "eval", last_eval)
        bar = tqdm(range(config.steps), desc=PROG, unit="step", disable=None, dynamic_ncols=True)
        for step in bar:
            indices = train_batch_indices(len(data.train.ids), config.batch_size, config.seed, step)
            batch = global_batch(
                _local_batch(data.train, indices, config.batch_size, data.has_truth), mesh
            )
            state, metrics = train_step(state, batch, jax.random.fold_in(step_rng, step))
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                log.write(done, "train", metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", kl=f"{metrics['kl']:.3f}")
            if done % config.eval_every == 0 or done == config.steps:
                last_eval = evaluate(eval_step, state.params, data, config, mesh)
                log.write(done, "eval", last_eval)
        bar.close()

    checkpoint_dir = None
    if config.checkpoint.enabled:
        manager = checkpoint_manager(workdir)
        metadata = {"config": json.loads(config.to_json_best_effort()), "version": __version__}
        save_checkpoint(manager, config.steps, state, metadata)
        manager.wait_until_finished()
        manager.close()
        checkpoint_dir = str(manager.directory)

    summary = {
        "steps": config.steps,
        "seconds": round(time.perf_counter() - started, 1),
        "eval_kl_initial": first_eval["kl"],
        "eval_kl_final": last_eval["kl"],
        "eval_accuracy_final": last_eval["accuracy"],
        "eval_kl_truth_final": last_eval.get("kl_truth"),
        "checkpoint": checkpoint_dir,
    }
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    truth = summary["eval_kl_truth_final"]
    truth_text = f", KL to truth {truth:.4f}" if truth is not None else ""
    return (
        f"{PROG}: {summary['steps']} steps in {summary['seconds']}s; eval KL "
        f"{summary['eval_kl_initial']:.4f} -> {summary['eval_kl_final']:.4f}{truth_text}, "
        f"accuracy {summary['eval_accuracy_final']:.3f}; checkpoint {summary['checkpoint']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config = load_config(argv)
        summary = run(config)
    except ConfigError as error:
        fail(PROG, str(error))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
