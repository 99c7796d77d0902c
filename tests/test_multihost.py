"""Two processes on localhost, joined by ``jax.distributed`` through the ``distributed.*``
keys, with 4 simulated CPU devices each: they train the same run as one process with 8
devices (also over two slices), only process 0 writes the run's files, a SIGTERM stops both at
one step with one checkpoint that a rerun resumes from, and a process that dies or fails takes
the other down."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import cli_env
from tests.conftest import PROJECT_ROOT
from tests.multihost_worker import FAIL_AT_STEP

pytestmark = pytest.mark.slow

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")
STEPS = 24
RUN = [f"--config={TINY}", f"--config.steps={STEPS}", "--config.log_every=1",
       "--config.eval_every=12", "--config.checkpoint_every=1000"]  # fmt: skip
ACROSS_PROCESSES = ["--config.mesh.data=2", "--config.mesh.fsdp=4"]  # both axes span both
TWO_SLICES = ["--config.mesh.dcn_data=2", "--config.mesh.data=1", "--config.mesh.fsdp=4"]
PROBE = ".jdjudge-probe-"  # jdjudge.outputs.check_writable_dir
RUN_FILES = {"metrics.jsonl", "config.json", "invocations.jsonl", "tokenizer"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _devices_env(home: Path, count: int) -> dict[str, str]:
    return cli_env(home, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")


def _start_pair(
    workdir: Path, home: Path, extra: list[str], fail_at_step: int | None = None
) -> list[subprocess.Popen]:
    """Both processes of one run (process i audits its writes into ``home/audit-i.json``;
    process 1 raises before ``fail_at_step`` if given)."""
    port = _free_port()
    processes = []
    env = _devices_env(home, 4)
    if fail_at_step is not None:
        env[FAIL_AT_STEP] = str(fail_at_step)
    for index in (0, 1):
        args = [*RUN, f"--config.workdir={workdir}", *extra,
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={index}"]  # fmt: skip
        command = [
            sys.executable,
            "-m",
            "tests.multihost_worker",
            str(home / f"audit-{index}.json"),
            *args,
        ]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, cwd=home, env=env))  # fmt: skip
    return processes


def _finish(processes: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    return [(p.wait(timeout=timeout), *p.communicate()) for p in processes]


def _train_losses(workdir: Path) -> dict[tuple[int, str], float]:
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {(e["step"], e["split"]): e["loss"] for e in events}


@pytest.fixture(scope="module")
def one_process_losses(tmp_path_factory) -> dict[tuple[int, str], float]:
    """The reference: the same run in one process with 8 devices."""
    home = tmp_path_factory.mktemp("one-process")
    command = [sys.executable, "-m", "jdjudge.train", *RUN, f"--config.workdir={home / 'run'}",
               *ACROSS_PROCESSES]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=home,
                          env=_devices_env(home, 8), timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return _train_losses(home / "run")


def _assert_same_losses(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    steps = sorted(want)
    ours, theirs = np.array([got[k] for k in steps]), np.array([want[k] for k in steps])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=0)


def _written_outside_checkpoints(audit: Path, workdir: Path) -> set[str]:
    """Top-level names in the workdir a process wrote, but for the checkpoints and the probe
    each process makes (and removes at once) to learn whether it can write there."""
    paths = [Path(p) for p in json.loads(audit.read_text()) if PROBE not in Path(p).name]
    inside = [p.relative_to(workdir) for p in paths if p.is_relative_to(workdir)]
    return {p.parts[0] if p.parts else "." for p in inside} - {"checkpoints"}


def test_two_processes_are_the_eight_device_run_and_stop_together_and_resume_on_two_slices(
    tmp_path, one_process_losses
):
    """A SIGTERM to both mid-run: one checkpoint at one step, from which a rerun resumes, here
    over two slices (``mesh.dcn_data=2``: one per process, the data axis across them; the
    checkpoint is resharded onto that mesh). The whole log is then the one-process run's, and
    over both invocations process 1 wrote nothing outside the (collective) checkpoints."""
    workdir = tmp_path / "run"
    processes = _start_pair(workdir, tmp_path, ACROSS_PROCESSES)
    _wait_for_training(workdir, processes)
    for p in processes:
        p.send_signal(signal.SIGTERM)
    results = _finish(processes)
    for status, _, stderr in results:
        assert status == 0, stderr[-3000:]
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
    assert len(saved) == 1 and 0 < saved[0] < STEPS, saved
    assert f"stopped by preemption notice at step {saved[0]}" in results[0][1]
    assert "jdjudge.train:" not in results[1][1]  # one summary, from process 0
    wrote = [_written_outside_checkpoints(tmp_path / f"audit-{i}.json", workdir) for i in (0, 1)]

    results = _finish(_start_pair(workdir, tmp_path, TWO_SLICES))
    for status, _, stderr in results:
        assert status == 0, stderr[-3000:]
        assert f"resuming from the checkpoint at step {saved[0]}" in stderr
    _assert_same_losses(_train_losses(workdir), one_process_losses)
    assert "jdjudge.train:" in results[0][1] and "jdjudge.train:" not in results[1][1]
    for i in (0, 1):
        wrote[i] |= _written_outside_checkpoints(tmp_path / f"audit-{i}.json", workdir)
    assert wrote[0] >= RUN_FILES, wrote[0]
    assert wrote[1] == set(), f"process 1 wrote {wrote[1]}"


def test_a_killed_process_stops_the_other_with_an_error(tmp_path):
    workdir = tmp_path / "run"
    processes = _start_pair(workdir, tmp_path,
                            [*ACROSS_PROCESSES, "--config.steps=100000",
                             "--config.distributed.heartbeat_timeout=5"])  # fmt: skip
    _wait_for_training(workdir, processes)
    processes[1].kill()
    killed = time.monotonic()
    status = processes[0].wait(timeout=120)
    assert status != 0
    assert time.monotonic() - killed < 60
    processes[1].wait()


def _wait_for_training(workdir: Path, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 240
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        for p in processes:
            assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)


def test_a_process_that_fails_takes_the_other_down_quickly(tmp_path):
    """An error in process 1 alone (here injected at step 3): it exits at once with its own
    status, and process 0 stops within the heartbeat timeout, not after JAX's minutes-long
    orderly shutdown."""
    workdir = tmp_path / "run"
    extra = [*ACROSS_PROCESSES, "--config.steps=100000", "--config.distributed.heartbeat_timeout=5"]
    processes = _start_pair(workdir, tmp_path, extra, fail_at_step=3)
    started = time.monotonic()
    (first, _, _), (second, _, stderr) = _finish(processes)
    assert second == 1 and "injected failure at step 3" in stderr, stderr[-3000:]
    assert first != 0
    assert time.monotonic() - started < 150
