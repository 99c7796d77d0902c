"""Running the real CLIs in subprocesses, and telling whether they changed a directory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT

# Where no Hub can answer: the discard port refuses at once, so "offline" is deterministic
# whatever network the machine has.
DEAD_HUB = "http://127.0.0.1:9"


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """One CPU device, the checkout importable, an empty Hugging Face cache in ``home`` and
    a Hub endpoint that refuses connections."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env.update(HF_HOME=str(home / "hf-home"), HF_ENDPOINT=DEAD_HUB)
    env.pop("HF_HUB_OFFLINE", None)
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_module(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip
    return Result(done.returncode, done.stdout, done.stderr)


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """path -> (mode, sha256 of the content) for everything under ``roots``: equal snapshots
    mean nothing was written, renamed, created or removed there."""
    state: dict[str, tuple[int, str]] = {}
    for root in roots:
        if not root.exists():
            state[str(root)] = (0, "absent")
            continue
        for path in sorted([root, *root.rglob("*")]):
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            state[str(path)] = (path.stat().st_mode, digest)
    return state
