"""The non-finite guard: a poisoned batch never reaches the parameters or a checkpoint."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jdjudge import train
from jdjudge.checkpoint.manager import RunCheckpoints, tree_is_finite
from jdjudge.checkpoint.metrics_log import read_metrics
from jdjudge.data.sources import PaddedSource
from jdjudge.sharding import global_batch
from tests.conftest import PROJECT_ROOT
from tests.production import production, random_batch

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")
POISON_STEP = 7  # 1-based: the 7th training batch gets a NaN target


def test_nonfinite_step_leaves_the_state_untouched():
    mesh, model_state, steps = production({"data": 1, "fsdp": 1, "tensor": 1})
    state = model_state.init_state(jax.random.key(0))
    before = jax.device_get(state.params)  # the step donates (and so invalidates) ``state``
    batch = random_batch()
    batch["targets"][2] = np.nan
    new_state, metrics = steps.train(state, global_batch(batch, mesh), jax.random.key(0), None)
    assert not bool(metrics["finite"])
    assert int(new_state.skipped) == 1 and int(new_state.step) == 1
    assert [int(i) for i in metrics["nonfinite_items"] if i >= 0] == [2]  # dataset index
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(new_state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def _poison(monkeypatch, poison_step: int) -> dict:
    """Poison two targets of one training batch, remembering the item ids it held."""
    original = PaddedSource.train_batch
    seen: dict = {"ids": []}

    def train_batch(self, step):
        batch = original(self, step)
        if step + 1 == poison_step:
            batch["targets"][[3, 5]] = np.nan
            train = self.splits["train"]
            seen["ids"] = [train.ids[i] for i in batch["item_index"][[3, 5]]]
        return batch

    monkeypatch.setattr(PaddedSource, "train_batch", train_batch)
    return seen


@pytest.fixture
def poisoned(monkeypatch):
    return _poison(monkeypatch, POISON_STEP)


def _argv(workdir, guard, log_every=10, checkpoint_every=10):
    return [
        "jdjudge.train", f"--config={TINY}", f"--config.workdir={workdir}",
        "--config.steps=20", f"--config.log_every={log_every}", "--config.eval_every=10",
        f"--config.checkpoint_every={checkpoint_every}", "--config.data.num_items=400",
        f"--config.nan_guard={guard}",
    ]  # fmt: skip


def test_skip_mode_counts_logs_and_still_checkpoints_a_finite_state(poisoned, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert train.main(_argv(workdir, "skip")) == 0
    assert "1 non-finite steps skipped" in capsys.readouterr().out
    trains = [e for e in read_metrics(workdir / "metrics.jsonl") if e["split"] == "train"]
    assert [e["skipped_steps"] for e in trains] == [1, 1]
    with RunCheckpoints(workdir, read_only=True) as checkpoints:
        step, state, _ = checkpoints.restore_newest(None)  # no target: the raw saved tree
    assert step == 20 and int(state["skipped"]) == 1 and tree_is_finite(state)


def test_stop_mode_names_the_step_and_items_and_saves_nothing_bad(poisoned, tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(_argv(workdir, "stop"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"jdjudge.train: error: non-finite loss or gradient at step {POISON_STEP}; "
        f"items: {', '.join(poisoned['ids'])}"
    )
    assert not (workdir / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (workdir / "checkpoints").iterdir()
    )


def test_stop_mode_reads_the_flags_late_but_reports_the_first_bad_step(
    monkeypatch, tmp_path, capsys
):
    """The flags are read on log steps and before saves, not every step: a bad step 7 is
    found at the save of step 9 (log_every=5, checkpoint_every=3), still named as step 7
    with its items, and nothing after step 6 (the last good save) is written."""
    seen = _poison(monkeypatch, 7)
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(_argv(workdir, "stop", log_every=5, checkpoint_every=3))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "jdjudge.train: error: non-finite loss or gradient at step 7; "
        f"items: {', '.join(seen['ids'])}"
    )
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3, 6]
    events = read_metrics(workdir / "metrics.jsonl")
    assert [(e["step"], e["split"]) for e in events] == [(0, "eval"), (5, "train")]
