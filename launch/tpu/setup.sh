#!/usr/bin/env bash
# Install jdjudge on every worker of the slice: APT_PACKAGES, gcsfuse (from Google's apt
# repository, unless the worker has it; run.sh mounts a gs:// WORKDIR with it), a virtual
# environment REMOTE_VENV made with REMOTE_PYTHON, `pip install JDJUDGE_SPEC` into it, and
# REMOTE_DIR/{config,data}.
# With DATA set, also copies that local file or folder to REMOTE_DIR/data/ on every worker
# (run.sh then passes --config.data.path pointing at it).
#
#   TPU_NAME=judge-v5e16 ZONE=us-west4-a launch/tpu/setup.sh
#
# Needs TPU_NAME, ZONE. Optional: PROJECT, JDJUDGE_SPEC (default jdjudge[tpu]; a pip
# requirement such as "jdjudge[tpu] @ git+https://github.com/ORG/jdjudge@main" or a wheel
# URL), REMOTE_PYTHON (default python3.11), APT_PACKAGES (default "python3.11 python3.11-venv";
# empty: none; gcsfuse is installed all the same), REMOTE_VENV (default jdjudge-venv), REMOTE_DIR (default jdjudge;
# both relative to the workers' home), DATA. DRY_RUN=1 prints the commands instead.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$HERE/common.sh"
parse_flags "$@"
check_common
check_setup

steps=()
packages=()
read -r -a packages <<<"$APT_PACKAGES"
if ((${#packages[@]})); then
  steps+=("$(quote sudo apt-get -q update)")
  steps+=("$(quote sudo DEBIAN_FRONTEND=noninteractive apt-get -q install -y "${packages[@]}")")
fi
# Cloud Storage FUSE, as its documentation installs it; the $(...) runs on the worker.
# shellcheck disable=SC2016
repo='deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main'
gcsfuse=(
  "echo \"$repo\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
  "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
  "sudo apt-get -q update"
  "sudo DEBIAN_FRONTEND=noninteractive apt-get -q install -y gcsfuse"
)
install="${gcsfuse[0]}"
for step in "${gcsfuse[@]:1}"; do install+=" && $step"; done
steps+=("{ command -v gcsfuse >/dev/null || { $install; }; }")
steps+=("$(quote "$REMOTE_PYTHON" -m venv "$REMOTE_VENV")")
steps+=("$(quote "$REMOTE_VENV/bin/pip" install -q --upgrade pip)")
steps+=("$(quote "$REMOTE_VENV/bin/pip" install --upgrade "$JDJUDGE_SPEC")")
steps+=("$(quote mkdir -p "$REMOTE_DIR/config" "$REMOTE_DIR/data")")
command="${steps[0]}"
for step in "${steps[@]:1}"; do command+=" && $step"; done

run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$command"
if [[ -n "${DATA:-}" ]]; then
  run gcloud compute tpus tpu-vm scp --recurse "$DATA" "$TPU_NAME:$REMOTE_DIR/data/" \
    "${WHERE[@]}" --worker=all
fi
