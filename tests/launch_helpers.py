"""What the launch/ tests share: the scripts found, stand-in commands that log their arguments,
a launcher that runs a script with them first on PATH, and readers of the commands issued."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

LAUNCH = PROJECT_ROOT / "launch"
SCRIPTS = sorted(
    path
    for path in LAUNCH.rglob("*")
    if path.is_file() and (path.suffix in {".sh", ".sbatch"} or path.read_bytes().startswith(b"#!"))
)
SOURCED = {LAUNCH / "tpu" / "common.sh", LAUNCH / "gs_url.sh"}
CONFIG = PROJECT_ROOT / "configs" / "llama.py"
WORKDIR = "gs://bucket/jdjudge/llama-snli"

# Logs one JSON line per call (its argv, its stdin when reading "-" or a tee, the variables
# the scripts export), exits with STANDIN_EXIT_<NAME> when that is set, and answers the few
# questions the scripts ask.
STANDIN = """#!{python}
import json, os, sys
args = sys.argv[1:]
name = os.path.basename(sys.argv[0])
entry = {{"argv": [name, *args]}}
if "-" in args or "tee" in args:
    entry["stdin"] = sys.stdin.read()
if "JAX_LOCAL_DEVICE_IDS" in os.environ:
    entry["JAX_LOCAL_DEVICE_IDS"] = os.environ["JAX_LOCAL_DEVICE_IDS"]
with open(os.environ["STANDIN_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(entry) + "\\n")
if os.environ.get("STANDIN_EXIT_" + name.upper()):
    sys.exit(int(os.environ["STANDIN_EXIT_" + name.upper()]))
if name == "lsb_release":
    print("jammy")
if name == "curl":
    print("-----BEGIN PGP PUBLIC KEY BLOCK-----")
if "describe" in args:
    print("ACTIVE")
if "get" in args[:2]:
    print("pod/judge-llama-slice-0-0-abcde")
if "ssh" in args:
    print("output of the workers")
"""


class Launcher:
    """Runs launch/ scripts with the stand-ins first on PATH and nothing else inherited."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.jsonl"
        for name in ("gcloud", "srun", "sbatch", "kubectl"):
            path = self.bin / name
            path.write_text(STANDIN.format(python=sys.executable))
            path.chmod(0o755)

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "STANDIN_LOG": str(self.log),
            "POLL_SECONDS": "0",
            **env,
        }
        return subprocess.run(
            ["bash", str(LAUNCH / script), *args],
            env=environment,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]


class Worker:
    """A TPU worker played by this machine: a home directory holding REMOTE_VENV's python,
    and stand-ins for the tools the remote commands use, first on a PATH of /usr/bin:/bin."""

    def __init__(self, tmp_path: Path, tools=("mountpoint", "gcsfuse")):
        self.home = tmp_path / "worker"
        self.bin = tmp_path / "worker-bin"
        self.log = tmp_path / "worker.jsonl"
        self.add(self.home / "jdjudge-venv" / "bin" / "python")
        for tool in tools:
            self.add(self.bin / tool)

    def add(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(STANDIN.format(python=sys.executable))
        path.chmod(0o755)

    def run(self, command: str, returncode: int = 0, **env: str) -> list[dict]:
        """Run a command the scripts sent to the workers; the calls it made, as logged."""
        self.log.unlink(missing_ok=True)
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.home,
            env={"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.home),
                 "STANDIN_LOG": str(self.log), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode == returncode, result.stderr
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def remote_command(argv: list[str]) -> str:
    """The command an ssh call runs on the workers."""
    (command,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
    return command


def remote_words(argv: list[str]) -> list[str]:
    """The words of the command an ssh call runs on the workers."""
    return shlex.split(remote_command(argv))


def train_words(argv: list[str]) -> list[str]:
    """The words of the training command in a run.sh ssh call (after the mount, if any)."""
    words = remote_words(argv)
    return words[words.index("PYTHONUNBUFFERED=1") :]
