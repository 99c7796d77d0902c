"""The best checkpoint is the best over the whole run, however often it was resumed.

Orbax's BestN forgot the metrics of steps saved before a restart, so a resumed run deleted
its best checkpoint. The reference here is written out independently: of all the steps ever
saved, keep the newest ``keep`` and the one with the lowest eval KL (earliest among ties).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jdjudge import train
from jdjudge.checkpoint.manager import RunCheckpoints
from jdjudge.checkpoint.metrics_log import read_metrics
from tests.cli_helpers import cli_env
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")


def _expected_kept(saved: list[tuple[int, float | None]], keep: int) -> set[int]:
    newest = {step for step, _ in sorted(saved)[-keep:]}
    scored = [(kl, step) for step, kl in saved if kl is not None]
    return newest | ({min(scored)[1]} if scored else set())


@pytest.mark.parametrize("seed", range(4))
def test_retention_across_reopenings_matches_the_whole_run_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    saved: list[tuple[int, float | None]] = []
    step, keep = 0, int(rng.integers(1, 4))
    warnings.simplefilter("ignore")
    for _ in range(int(rng.integers(2, 5))):  # each block is one process's life
        with RunCheckpoints(tmp_path, keep=keep) as checkpoints:
            for _ in range(int(rng.integers(1, 5))):
                step += int(rng.integers(1, 30))
                kl = None if rng.random() < 0.3 else round(float(rng.random()), 3)
                checkpoints.save(step, {"x": jnp.full(2, step)}, {}, {}, kl)
                saved.append((step, kl))
        on_disk = {int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()}
        assert on_disk == _expected_kept(saved, keep), saved
    with RunCheckpoints(tmp_path, read_only=True) as checkpoints:
        scored = [(kl, s) for s, kl in saved if kl is not None]
        if scored:
            assert checkpoints.choose("best")[0] == min(scored)[1]
        assert checkpoints.choose("latest")[0] == step


def _argv(workdir: Path, steps: int) -> list[str]:
    return ["jdjudge.train", f"--config={TINY}", f"--config.workdir={workdir}",
            f"--config.steps={steps}"]  # fmt: skip


def _saved_steps(workdir: Path) -> set[int]:
    return {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}


def _best(workdir: Path) -> int:
    with RunCheckpoints(workdir, read_only=True) as checkpoints:
        return checkpoints.choose("best")[0]


def test_250_then_700_steps_keeps_step_250_as_best(tmp_path, capsys):
    """The reported case: with the tiny defaults, step 250 (eval KL 0.2378) beats every
    later evaluation, and used to be deleted by the resumed run."""
    workdir = tmp_path / "run"
    assert train.main(_argv(workdir, 250)) == 0
    capsys.readouterr()
    assert train.main(_argv(workdir, 700)) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    evals = {e["step"]: e["kl"] for e in read_metrics(workdir / "metrics.jsonl")
             if e["split"] == "eval"}  # fmt: skip
    saved_evaluated = {s: evals[s] for s in evals if s in {250, 300, 400, 500, 600, 700}}
    assert min(saved_evaluated, key=saved_evaluated.get) == 250  # the premise of the case
    assert 250 in _saved_steps(workdir) and _best(workdir) == 250
    # The summary says what this invocation did, and keeps the run's step-0 eval KL.
    assert summary.startswith("jdjudge.train: resumed at step 250, 450 steps in ")
    assert f"eval KL {evals[0]:.4f} -> {evals[700]:.4f}" in summary
    assert f"best step 250 (eval KL {evals[250]:.4f})" in summary


def test_sigint_and_resume_keeps_the_uninterrupted_best(tmp_path):
    # 500 steps: the SIGINT checkpoint (soon after step 100) is older than the newest three
    # periodic ones (300, 400, 500), so retention must let it go
    steps = 500
    reference = tmp_path / "reference"
    assert train.main(_argv(reference, steps)) == 0

    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "jdjudge.train", *_argv(workdir, steps)[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=cli_env(tmp_path),
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / "100").is_dir():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    stopped_at = int(stdout.split("at step ")[1].split(";")[0])
    assert 100 <= stopped_at < 300

    assert train.main(_argv(workdir, steps)) == 0
    assert _best(workdir) == _best(reference)
    assert _saved_steps(workdir) == _saved_steps(reference)  # the SIGINT step was let go


def test_judge_uses_the_best_checkpoint_by_default_and_says_which(tmp_path, capsys):
    from jdjudge import judge

    tiny_run = tmp_path / "run"
    argv = [*_argv(tiny_run, 30), "--config.eval_every=10", "--config.checkpoint_every=10"]
    assert train.main(argv) == 0
    evals = {e["step"]: e["kl"] for e in read_metrics(tiny_run / "metrics.jsonl")
             if e["split"] == "eval" and e["step"] > 0}  # fmt: skip
    best = min(evals, key=evals.get)  # every evaluated step (10, 20, 30) was saved and kept
    items = tmp_path / "items.jsonl"
    item = {"id": "a", "prompt": "Review: good\nVerdict:", "labels": ["positive", "negative"]}
    items.write_text(json.dumps(item) + "\n", encoding="utf-8")
    for flag, step, why in (([], best, f"the best, eval KL {evals[best]:.4f}"),
                            (["--checkpoint=latest"], 30, "the latest"),
                            (["--checkpoint=10"], 10, "as asked")):  # fmt: skip
        out = tmp_path / f"out-{step}.jsonl"
        argv = [f"--model={tiny_run}", f"--input={items}", f"--output={out}", *flag]
        assert judge.main(argv) == 0
        assert (
            f"jdjudge.judge: {tiny_run}: checkpoint step {step} ({why})" in capsys.readouterr().err
        )
