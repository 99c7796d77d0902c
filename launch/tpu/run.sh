#!/usr/bin/env bash
# Copy CONFIG to every worker, then run the same training command on all of them
# (jax.distributed finds the other workers itself on Cloud TPU). A gs://BUCKET/PATH WORKDIR
# reaches jdjudge as a path: each worker first mounts BUCKET with gcsfuse at
# MOUNT_ROOT/BUCKET unless it is mounted already, and trains with
# --config.workdir=MOUNT_ROOT/BUCKET/PATH. The workers' output streams to this terminal, and
# is appended to LOG_FILE too when that is set. Rerunning resumes from the newest checkpoint
# in WORKDIR.
#
#   TPU_NAME=judge-v5e16 ZONE=us-west4-a CONFIG=configs/llama.py \
#     WORKDIR=gs://my-bucket/jdjudge/llama-snli launch/tpu/run.sh [--config.KEY=VALUE ...]
#
# Needs TPU_NAME, ZONE, CONFIG (a local file, optionally :ARG as in configs/llama.py:summeval),
# WORKDIR (gs://, unless ACCELERATOR_TYPE names a single-host slice). Optional: PROJECT,
# EXTRA_ARGS (more --config.KEY=VALUE flags, split at spaces), DATA (as in setup.sh),
# LOG_FILE, REMOTE_VENV, REMOTE_DIR, MOUNT_ROOT (default jdjudge-gcs: relative paths are
# under the workers' home), GCSFUSE_FLAGS (default "--implicit-dirs --rename-dir-limit=200000
# --metadata-cache-ttl-secs=0"). DRY_RUN=1 prints the commands instead.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$HERE/common.sh"
parse_flags "$@"
check_common
check_run

# A path as one word for the workers' shell; a relative one is made absolute there, under
# their $HOME (expanded by that shell, not this one), so jdjudge gets an absolute workdir.
remote_path() {
  if [[ "$1" == /* ]]; then
    quote "$1"
  else
    # shellcheck disable=SC2016 # "$HOME" is for the workers' shell
    printf '"$HOME"/%s' "$(quote "$1")"
  fi
}

remote_config="$REMOTE_DIR/config/${CONFIG_FILE##*/}"
command="$(quote PYTHONUNBUFFERED=1 "$REMOTE_VENV/bin/python" -m jdjudge.train \
  "--config=$remote_config$CONFIG_ARG")"
if [[ -n "$BUCKET" ]]; then
  # Mounted only where it is not yet: a mount outlives the ssh session (gcsfuse runs in the
  # background) and later runs, but not a worker's restart.
  mount_dir="$(remote_path "$MOUNT_ROOT/$BUCKET")"
  flags=()
  read -r -a flags <<<"$GCSFUSE_FLAGS"
  mount="mkdir -p $mount_dir && { mountpoint -q $mount_dir || $(quote gcsfuse "${flags[@]}" "$BUCKET") $mount_dir; }"
  command="$mount && $command --config.workdir=$(remote_path "$MOUNT_ROOT/$BUCKET${BUCKET_PATH:+/$BUCKET_PATH}")"
else
  command+=" $(quote "--config.workdir=$WORKDIR")"
fi
if ((${#EXTRA[@]})); then command+=" $(quote "${EXTRA[@]}")"; fi

run gcloud compute tpus tpu-vm scp "$CONFIG_FILE" "$TPU_NAME:$remote_config" "${WHERE[@]}" \
  --worker=all
ssh=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$command")
if [[ -n "${LOG_FILE:-}" ]]; then
  run "${ssh[@]}" 2>&1 | tee -a "$LOG_FILE"
else
  run "${ssh[@]}"
fi
