"""The experiments' runner: a grid cell trains and evaluates through the CLIs once, and a
rerun reads its cached result instead of training again."""

from __future__ import annotations

import json

import pytest

from experiments import runner
from experiments.runner import Run, execute_all, mean_std, table, value
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")


def test_a_cell_runs_once_and_is_then_read_from_its_cache(tmp_path, monkeypatch):
    from jdjudge import train

    run = Run("cell", TINY, ("--config.steps=20", "--config.eval_every=10",
                             "--config.data.num_items=300"), tags={"method": "x"})  # fmt: skip
    first = execute_all([run], tmp_path, bootstrap=50)[0]
    record = json.loads((tmp_path / "cell" / runner.RECORD).read_text())
    assert record["tags"] == {"method": "x"} and record["total_s"] > 0
    assert first["about"]["dataset"] == "synthetic" and value(first, "truth", "kl") > 0

    def no_training(argv):
        raise AssertionError("a cached cell was trained again")

    monkeypatch.setattr(train, "main", no_training)
    assert execute_all([run], tmp_path, bootstrap=50)[0] == first
    # different arguments are a different cell: it is not served from that cache
    changed = Run("cell", TINY, (*run.overrides, "--config.seed=1"))
    assert runner._cached(changed, tmp_path / "cell") is None


def test_a_stopped_training_is_neither_evaluated_nor_cached(tmp_path, monkeypatch):
    """SIGTERM makes train save and exit 0 (to resume later); the runner must not score that
    half-trained run as the cell's result."""
    from jdjudge import evaluate, train

    def stopped(argv):  # what a SIGTERM'd train leaves: metrics without the test event
        workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--config.workdir="))
        (tmp_path / "cell").mkdir(exist_ok=True)
        (tmp_path / "cell" / "metrics.jsonl").write_text(
            json.dumps({"step": 0, "split": "eval", "kl": 1.0}) + "\n"
        )
        assert workdir == str(tmp_path / "cell")
        return 0

    def no_evaluation(argv):
        raise AssertionError("a stopped run was evaluated")

    monkeypatch.setattr(train, "main", stopped)
    monkeypatch.setattr(evaluate, "main", no_evaluation)
    with pytest.raises(KeyboardInterrupt, match="stopped; rerun to resume"):
        execute_all([Run("cell", TINY, ())], tmp_path)
    assert not (tmp_path / "cell" / runner.RECORD).exists()


def test_tables_report_mean_and_std():
    assert mean_std([0.1, 0.3]) == "0.200 ± 0.141"
    assert mean_std([float("nan")]) == "—" and mean_std([0.5]) == "0.500"
    text = table(["a"], ["x", "y"], lambda r, c: f"{r}{c}", corner="m")
    assert text.splitlines() == ["| m | x | y |", "|---|---|---|", "| a | ax | ay |"]
