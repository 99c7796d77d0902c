"""launch/slurm and launch/gke, run against stand-in srun / kubectl that log their arguments
(tests/launch_helpers.py): the commands they issue, the manifest they fill, their refusals."""

from __future__ import annotations

import shlex

import pytest
import yaml

from tests.launch_helpers import (
    CONFIG,
    LAUNCH,
    WORKDIR,
    Launcher,
    ok,
)

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
