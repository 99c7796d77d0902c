"""Faults: SIGKILL and SIGTERM mid-run, damaged checkpoints, resharding restore.

The reference for "the resumed run is the same run" is an uninterrupted run with the same
seed, compared bitwise (CPU XLA is deterministic).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jdjudge import train
from jdjudge.checkpoint.manager import RunCheckpoints
from jdjudge.checkpoint.metrics_log import read_metrics
from jdjudge.checkpoint.resume import truncate_metrics
from jdjudge.config.cli import load_config
from jdjudge.data.pipeline import build_judgment_data
from jdjudge.sharding import make_mesh
from jdjudge.training.model_state import state_layout
from jdjudge.training.optim import make_optimizer
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")
STEPS = 160
RUN_ARGS = [
    f"--config.steps={STEPS}",
    "--config.checkpoint_every=20",
    "--config.eval_every=20",
    "--config.log_every=10",
    "--config.data.num_items=400",
]


def _command(workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jdjudge.train",
        f"--config={TINY}",
        f"--config.workdir={workdir}",
        *RUN_ARGS,
    ]


def _env() -> dict[str, str]:
    # One CPU device in the subprocesses: the run itself, not the simulated mesh, is tested.
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "XLA_FLAGS": ""}


def _run(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(workdir), capture_output=True, text=True, env=_env(), timeout=300, cwd=PROJECT_ROOT
    )


def _start_and_wait_for_checkpoint(workdir: Path) -> subprocess.Popen:
    """Start a run and return once its first checkpoint is committed (the step directory
    appears only after Orbax's atomic rename)."""
    process = subprocess.Popen(
        _command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(), cwd=PROJECT_ROOT,
    )  # fmt: skip
    committed = workdir / "checkpoints" / "20"
    deadline = time.monotonic() + 240
    while not committed.is_dir():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.02)
    return process


# Throughput figures depend on the wall clock and on where an invocation's timing window
# starts; everything else in the log is a pure function of the run.
TIMING = ("step_time_s", "tokens_per_s", "padding_efficiency", "mfu")


def _computed(workdir: Path) -> list[dict]:
    events = read_metrics(workdir / "metrics.jsonl")
    return [{k: v for k, v in e.items() if k not in TIMING} for e in events]


def _evals(workdir: Path) -> list[dict]:
    return [e for e in read_metrics(workdir / "metrics.jsonl") if e["split"] == "eval"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with the same seed."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    result = _run(workdir)
    assert result.returncode == 0, result.stderr
    return workdir


def test_sigkill_then_rerun_gives_the_uninterrupted_metrics(reference, tmp_path):
    workdir = tmp_path / "run"
    process = _start_and_wait_for_checkpoint(workdir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(e["step"] for e in read_metrics(workdir / "metrics.jsonl"))
    assert killed_at < STEPS, "the run finished before it was killed: nothing was tested"

    result = _run(workdir)
    assert result.returncode == 0, result.stderr
    assert "resuming from the checkpoint at step" in result.stderr
    assert _evals(workdir) == _evals(reference)  # bitwise: JSON floats are exact reprs
    assert _computed(workdir) == _computed(reference)
    # TensorBoard reads the two invocations' event files as one run: the killed attempt's
    # points past the checkpoint are dropped, so every step appears once, as in the log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert len(list((workdir / "tensorboard").iterdir())) == 2
    logged = [(e["step"], e["kl"]) for e in read_metrics(workdir / "metrics.jsonl") if e["split"] == "train"]  # fmt: skip
    seen = [(s.step, s.value) for s in events.Scalars("train/kl")]
    assert [step for step, _ in seen] == [step for step, _ in logged]
    np.testing.assert_allclose([v for _, v in seen], [v for _, v in logged], rtol=1e-6)


def test_sigterm_saves_exits_zero_and_the_rerun_resumes_there(reference, tmp_path):
    workdir = tmp_path / "run"
    process = _start_and_wait_for_checkpoint(workdir)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopped by SIGTERM at step" in stdout
    stopped_at = int(stdout.split("at step ")[1].split(";")[0])
    assert stopped_at < STEPS
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()

    result = _run(workdir)
    assert result.returncode == 0, result.stderr
    assert f"resuming from the checkpoint at step {stopped_at}" in result.stderr
    assert _evals(workdir) == _evals(reference)


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    newest = workdir / "checkpoints" / str(STEPS)
    for path in (newest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")  # a half-written step: names present, contents gone
    (workdir / "checkpoints" / f"{STEPS + 20}.orbax-checkpoint-tmp-1234").mkdir()
    argv = ["jdjudge.train", f"--config={TINY}", f"--config.workdir={workdir}", *RUN_ARGS]
    with pytest.warns(UserWarning, match=f"skipping checkpoint step {STEPS}"):
        assert train.main(argv) == 0
    assert f"resuming from the checkpoint at step {STEPS - 20}" in capsys.readouterr().err
    assert (workdir / "checkpoints" / f"{STEPS}.damaged").is_dir()
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()  # saved again by the resumed run
    # In-process the mesh has 4 simulated devices (the reference ran on one): the same run,
    # up to float reassociation in the data-parallel reduction.
    for got, want in zip(_evals(workdir), _evals(reference), strict=True):
        assert got["step"] == want["step"]
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-4)


def test_changed_run_defining_config_is_refused_unless_forced(reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = sorted(p.name for p in workdir.rglob("*"))
    argv = ["jdjudge.train", f"--config={TINY}", f"--config.workdir={workdir}", *RUN_ARGS]
    changed = [*argv, "--config.model.hidden_size=32", "--config.objective.alpha=0.5"]
    with pytest.raises(SystemExit) as exit_info:
        train.main(changed)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"jdjudge.train: error: workdir {workdir} holds a different run: "
        "model.hidden_size (64 -> 32); objective.alpha (0.8 -> 0.5); "
        "use another workdir or --config.force=true"
    )
    assert sorted(p.name for p in workdir.rglob("*")) == before  # nothing written
    forced = [
        *argv,
        "--config.objective.alpha=0.5",
        "--config.force=true",
        f"--config.steps={STEPS + 20}",
    ]
    assert train.main(forced) == 0
    invocations = [json.loads(line) for line in (workdir / "invocations.jsonl").open()]
    assert [i["start_step"] for i in invocations] == [0, STEPS]
    assert invocations[-1]["forced_changes"] == ["objective.alpha (0.8 -> 0.5)"]
    assert invocations[0]["config"]["objective"]["alpha"] == 0.8
    assert json.loads((workdir / "config.json").read_text())["objective"]["alpha"] == 0.5
    with RunCheckpoints(workdir, read_only=True) as checkpoints:  # each step's own record
        alphas = {s: checkpoints.read_metadata(s)["config"]["objective"]["alpha"]
                  for s in (STEPS, STEPS + 20)}  # fmt: skip
    assert alphas == {STEPS: 0.8, STEPS + 20: 0.5}


def test_restore_reshards_onto_a_different_mesh(reference):
    config = load_config(["x", f"--config={TINY}", f"--config.workdir={reference}", *RUN_ARGS])
    data = build_judgment_data(config.data)
    one_device = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, STEPS)
    vocab, seq_len = len(data.tokenizer), data.train.tokens.shape[1]
    labels = data.label_token_ids  # the head's label columns train alone (model.head_rows)
    one = state_layout(config, vocab, seq_len, one_device, optimizer, labels)
    four_devices = make_mesh({"data": 1, "fsdp": 2, "tensor": 2})
    four = state_layout(config, vocab, seq_len, four_devices, optimizer, labels)
    with RunCheckpoints(reference, read_only=True) as checkpoints:
        step_a, state_a, _ = checkpoints.restore_newest(one.abstract_state)
        step_b, state_b, damaged = checkpoints.restore_newest(four.abstract_state)
    assert step_a == step_b == STEPS and damaged == []
    kernel = state_b.params["layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_truncate_metrics_keeps_one_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    events = [
        {"step": 0, "split": "eval", "kl": 0.6},
        {"step": 20, "split": "train", "kl": 0.5},
        {"step": 20, "split": "test", "kl": 0.4},  # end-of-run event: written again on resume
        {"step": 30, "split": "train", "kl": 0.3},  # after the checkpoint: replayed
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"step": 31, "spl')
    assert truncate_metrics(str(path), 20) == 3
    assert read_metrics(path) == events[:2]
