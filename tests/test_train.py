"""End to end: the CLI trains, logs, evaluates and checkpoints a tiny run."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jdjudge import train
from jdjudge.checkpoint.metrics_log import read_metrics
from jdjudge.training import jitted
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")


def _trace_at_most_once(monkeypatch) -> None:
    """Make a retrace of the train or eval step fail: every batch of a padded run has one
    shape, so a second trace means a Python value leaked into the jit (a compile per step)."""
    for name in ("make_train_step", "make_eval_step"):
        original = getattr(jitted, name)
        monkeypatch.setattr(
            jitted, name, lambda *a, _f=original, **k: chex.assert_max_traces(_f(*a, **k), n=1)
        )


def test_short_run_writes_metrics_config_tokenizer_and_checkpoint(tmp_path, capsys, monkeypatch):
    _trace_at_most_once(monkeypatch)
    workdir = tmp_path / "run"
    argv = [
        "jdjudge.train",
        f"--config={TINY}",
        f"--config.workdir={workdir}",
        "--config.steps=60",
        "--config.eval_every=30",
        "--config.log_every=10",
        "--config.data.num_items=400",
    ]
    assert train.main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("jdjudge.train: 60 steps in ")

    events = read_metrics(workdir / "metrics.jsonl")
    evals = [e for e in events if e["split"] == "eval"]
    trains = [e for e in events if e["split"] == "train"]
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert [e["step"] for e in trains] == [10, 20, 30, 40, 50, 60]
    assert [(e["step"], e["split"]) for e in events[-1:]] == [(60, "test")]
    for event in events:
        assert {"step", "split", "loss", "kl", "accuracy", "kl_truth"} <= event.keys()
        assert all(isinstance(v, (int, float, str)) for v in event.values())
    assert evals[-1]["kl"] < evals[0]["kl"]  # it learns something in 60 steps
    # Throughput: the first window opens after step 1 (compilation excluded), the next ones
    # cover their 10 steps; padding efficiency is the windows' real / computed tokens.
    from jdjudge.config.cli import load_config
    from jdjudge.data.pipeline import build_judgment_data
    from jdjudge.sharding import make_mesh

    config = load_config(argv)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    source = train.batch_source(config, build_judgment_data(config.data), mesh)
    for event, first in zip(trains, [1, 10, 20, 30, 40, 50], strict=True):
        segments = [source.train_batch(s)["segment_ids"] for s in range(first, event["step"])]
        real, computed = sum(int((x > 0).sum()) for x in segments), sum(x.size for x in segments)
        assert event["padding_efficiency"] == pytest.approx(real / computed, rel=1e-9)
        assert event["step_time_s"] > 0
        assert event["tokens_per_s"] == pytest.approx(
            real / (event["step_time_s"] * len(segments)), rel=1e-6
        )
        assert "mfu" not in event  # no known peak FLOP/s on CPU

    config = json.loads((workdir / "config.json").read_text())
    assert config["steps"] == 60 and config["objective"]["alpha"] == 0.8
    assert (workdir / "tokenizer" / "tokenizer.json").is_file()

    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "metadata"))
    assert manager.all_steps() == [60]
    restored = manager.restore(60, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    assert restored["metadata"]["config"]["seed"] == 0


def test_tiny_model_trains_on_real_chaosnli_snli(shared_data, tmp_path, capsys):
    """The issue's real-data run, shortened: the word-level tokenizer is built from the data,
    items are packed, and the validation KL falls."""
    workdir = tmp_path / "snli"
    argv = [
        "jdjudge.train",
        f"--config={TINY}:chaosnli_snli",
        f"--config.data.path={shared_data / 'chaosnli' / 'chaosNLI_snli.jsonl'}",
        f"--config.workdir={workdir}",
        "--config.steps=40",
        "--config.eval_every=20",
        "--config.data.tokens_per_batch=1024",
    ]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "train          1086  100/100.00/100" in out  # the data summary, before training
    evals = [e for e in read_metrics(workdir / "metrics.jsonl") if e["split"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40]
    assert min(e["kl"] for e in evals[1:]) < evals[0]["kl"]
    assert "kl_truth" not in evals[0]  # real data without subsampling has no reference


@pytest.mark.parametrize("packing", [False, True])
def test_epochs_cover_the_training_split(packing):
    """``epochs`` turns into the steps whose batches hold each training item that often."""
    from jdjudge.config.cli import load_config
    from jdjudge.data.pipeline import build_judgment_data
    from jdjudge.sharding import make_mesh

    argv = ["x", f"--config={TINY}", "--config.epochs=2", "--config.data.num_items=400",
            f"--config.data.packing={packing}", "--config.data.tokens_per_batch=256"]  # fmt: skip
    config = load_config(argv)
    data = build_judgment_data(config.data)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    source = train.batch_source(config, data, mesh)
    steps = train.training_steps(config, data, source)
    seen = np.concatenate([source.train_batch(s)["item_index"].ravel() for s in range(steps)])
    counts = np.bincount(seen[seen >= 0], minlength=len(data.train))
    assert counts.min() >= 2 and counts.max() <= 3  # 2 epochs (the last batch may wrap)
    if packing:
        assert np.all(counts == 2)  # packed epochs end exactly
