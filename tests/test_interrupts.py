"""A second Ctrl-C stops a run at once (exit 130) without damaging a committed checkpoint,
whether it comes during start-up and compilation or mid-training (real CLI, subprocess)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from jdjudge.checkpoint.manager import RunCheckpoints
from tests.cli_helpers import cli_env
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")

SECOND_SIGINT = (
    "jdjudge.train: stopped at once by a second SIGINT; checkpoints already committed are "
    "intact; rerun the same command to resume"
)


def _start_training(workdir: Path, home: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "jdjudge.train", f"--config={TINY}",
               f"--config.workdir={workdir}", "--config.steps=100000",
               "--config.checkpoint_every=20", "--config.eval_every=1000"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=home, env=cli_env(home))  # fmt: skip


def _interrupt_twice(process: subprocess.Popen) -> tuple[int, str, float]:
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr, time.monotonic() - sent


def test_second_sigint_during_startup_exits_130_at_once(tmp_path):
    workdir = tmp_path / "run"
    process = _start_training(workdir, tmp_path)
    assert process.stdout is not None
    first = process.stdout.readline()  # the data summary: model building and compiling next
    assert first.startswith("jdjudge.train: data"), first
    time.sleep(0.5)  # past the loop's first check (a signal before it ends the run cleanly)
    status, stderr, seconds = _interrupt_twice(process)
    assert status == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == SECOND_SIGINT
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    steps = workdir / "checkpoints"
    assert not steps.exists() or not [p for p in steps.iterdir() if p.name.isdigit()]


def test_second_sigint_during_training_exits_130_and_keeps_checkpoints_whole(tmp_path):
    workdir = tmp_path / "run"
    process = _start_training(workdir, tmp_path)
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / "40").is_dir():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.02)
    status, stderr, seconds = _interrupt_twice(process)
    assert status == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == SECOND_SIGINT
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    with RunCheckpoints(workdir, read_only=True) as checkpoints:  # every step restores whole
        for step in checkpoints.steps():
            restored = checkpoints.restore_newest(None, only_step=step)
            assert restored is not None and restored[0] == step
