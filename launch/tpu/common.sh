#!/usr/bin/env bash
# Sourced by launch/tpu/*.sh, not run: the shared variables, their checks, and `run`.
#
# Every script takes the same flags, so up.sh can hand its own to each step:
#   --queued        a queued resource instead of a plain slice   (QUEUED=1)
#   --spot          Spot capacity                                (JDJUDGE_TPU_SPOT=1)
#   --reserved      a reservation                                (JDJUDGE_TPU_RESERVED=1)
#   --best-effort   best-effort capacity, queued resources only  (JDJUDGE_TPU_BEST_EFFORT=1)
#   --config.KEY=V  one more training flag for run.sh (after those in EXTRA_ARGS)
# DRY_RUN=1 prints each command instead of running it. docs/launch.md has the variables.
set -euo pipefail

SCRIPT="launch/tpu/${0##*/}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
JDJUDGE_SPEC="${JDJUDGE_SPEC:-jdjudge[tpu]}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3.11}"
APT_PACKAGES="${APT_PACKAGES-python3.11 python3.11-venv}"
REMOTE_VENV="${REMOTE_VENV:-jdjudge-venv}"
REMOTE_DIR="${REMOTE_DIR:-jdjudge}"
POLL_SECONDS="${POLL_SECONDS:-30}"
MOUNT_ROOT="${MOUNT_ROOT:-jdjudge-gcs}"
GCSFUSE_FLAGS="${GCSFUSE_FLAGS-"--implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0"}"
FLAG_ARGS=()

die() {
  printf '%s: error: %s\n' "$SCRIPT" "$1" >&2
  exit 2
}

need() { # need NAME "what it is, e.g. NAME=value"
  [[ -n "${!1:-}" ]] || die "$1 is not set ($2)"
}

# The words of a command line for the workers' shell, each quoted only where needed.
quote() {
  local word sq="'\\''" out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//"'"/$sq}'")
    fi
  done
  printf '%s' "${out[*]}"
}

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+ %s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

parse_flags() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --queued) QUEUED=1 ;;
      --spot) JDJUDGE_TPU_SPOT=1 ;;
      --reserved) JDJUDGE_TPU_RESERVED=1 ;;
      --best-effort) JDJUDGE_TPU_BEST_EFFORT=1 ;;
      --config.*) FLAG_ARGS+=("$arg") ;;
      *) die "unknown argument '$arg' (flags: --queued --spot --reserved --best-effort --config.KEY=VALUE)" ;;
    esac
  done
}

check_common() {
  need TPU_NAME "the TPU VM's name, e.g. TPU_NAME=judge-v5e16"
  need ZONE "the TPU's zone, e.g. ZONE=us-west4-a"
  WHERE=("--zone=$ZONE")
  if [[ -n "${PROJECT:-}" ]]; then WHERE+=("--project=$PROJECT"); fi
  QUEUED_RESOURCE="${QUEUED_RESOURCE:-$TPU_NAME-qr}"
}

check_create() {
  need ACCELERATOR_TYPE "the slice type, e.g. ACCELERATOR_TYPE=v5litepod-16"
  CAPACITY=()
  if [[ "${JDJUDGE_TPU_SPOT:-0}" == 1 ]]; then CAPACITY+=(--spot); fi
  if [[ "${JDJUDGE_TPU_RESERVED:-0}" == 1 ]]; then CAPACITY+=(--reserved); fi
  if [[ "${JDJUDGE_TPU_BEST_EFFORT:-0}" == 1 ]]; then
    [[ "${QUEUED:-0}" == 1 ]] || die "best-effort capacity needs a queued resource (QUEUED=1 or --queued)"
    CAPACITY+=(--best-effort)
  fi
  ((${#CAPACITY[@]} <= 1)) || die "choose one of spot, reserved and best-effort, not ${CAPACITY[*]}"
}

remote_data() { # where setup.sh copies DATA on every worker (relative to the home directory)
  local data="${DATA%/}"
  printf '%s' "$REMOTE_DIR/data/${data##*/}"
}

check_setup() {
  if [[ -n "${DATA:-}" && ! -e "$DATA" ]]; then die "DATA does not exist: $DATA"; fi
  return 0
}

# shellcheck source=SCRIPTDIR/../gs_url.sh
source "$(dirname "${BASH_SOURCE[0]}")/../gs_url.sh"

check_run() {
  need CONFIG "the config file to train with, e.g. CONFIG=configs/llama.py or configs/llama.py:summeval"
  need WORKDIR "where checkpoints and logs go, e.g. WORKDIR=gs://my-bucket/jdjudge/llama-snli"
  CONFIG_FILE="${CONFIG%%:*}" # configs/llama.py:summeval -> configs/llama.py and :summeval
  # shellcheck disable=SC2034 # used by run.sh
  CONFIG_ARG="${CONFIG#"$CONFIG_FILE"}"
  [[ -f "$CONFIG_FILE" ]] || die "CONFIG file not found: $CONFIG_FILE"
  BUCKET="" # set for a gs:// WORKDIR: run.sh mounts it on every worker under MOUNT_ROOT
  if [[ "$WORKDIR" == gs://* ]]; then
    split_gs_url "$WORKDIR"
    MOUNT_ROOT="${MOUNT_ROOT%/}"
    [[ -n "$MOUNT_ROOT" ]] || die "MOUNT_ROOT is empty (where each worker mounts the bucket, e.g. MOUNT_ROOT=jdjudge-gcs)"
  elif [[ "$WORKDIR" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
    die "WORKDIR must be gs://BUCKET/PATH (mounted on every worker with gcsfuse) or a path on the workers; got '$WORKDIR'"
  else
    local chips="${ACCELERATOR_TYPE:-}"
    chips="${chips##*-}"
    if ! [[ "$chips" =~ ^[0-9]+$ ]] || ((chips > 8)); then
      die "WORKDIR must start with gs:// on a multi-worker slice (each worker's own disk would hold a different checkpoint); got '$WORKDIR' (a single-host slice, ACCELERATOR_TYPE=v5litepod-8 or smaller, may use a local path)"
    fi
  fi
  EXTRA=()
  if [[ -n "${DATA:-}" ]]; then EXTRA+=("--config.data.path=$(remote_data)"); fi
  local words=()
  read -r -a words <<<"${EXTRA_ARGS:-}"
  EXTRA+=("${words[@]}" "${FLAG_ARGS[@]}")
}
