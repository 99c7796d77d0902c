"""End to end: the CLI trains, logs, evaluates and checkpoints a tiny run."""

from __future__ import annotations

import json

import orbax.checkpoint as ocp

from jdjudge import train
from jdjudge.metrics_log import read_metrics
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")


def test_short_run_writes_metrics_config_tokenizer_and_checkpoint(tmp_path, capsys):
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
    for event in events:
        assert {"step", "split", "loss", "kl", "accuracy", "kl_truth"} <= event.keys()
        assert all(isinstance(v, (int, float, str)) for v in event.values())
    assert evals[-1]["kl"] < evals[0]["kl"]  # it learns something in 60 steps

    config = json.loads((workdir / "config.json").read_text())
    assert config["steps"] == 60 and config["objective"]["alpha"] == 0.8
    assert (workdir / "tokenizer" / "tokenizer.json").is_file()

    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "metadata"))
    assert manager.all_steps() == [60]
    restored = manager.restore(60, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    assert restored["metadata"]["config"]["seed"] == 0
