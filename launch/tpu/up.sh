#!/usr/bin/env bash
# Every step in order: create.sh, setup.sh, run.sh, then delete.sh, which runs however the
# run ends (also on failure or Ctrl-C) unless KEEP=1. All variables are checked before
# anything is created; the flags go to every step.
#
#   TPU_NAME=judge-v5e16 ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 \
#     CONFIG=configs/llama.py WORKDIR=gs://my-bucket/jdjudge/llama-snli \
#     launch/tpu/up.sh [--queued] [--spot | --reserved | --best-effort] [--config.KEY=VALUE ...]
#
# Needs what create.sh and run.sh need; see docs/launch.md for the optional variables.
# DRY_RUN=1 prints the commands instead.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$HERE/common.sh"
parse_flags "$@"
check_common
check_create
check_setup
check_run
ARGS=("$@")

cleanup() {
  local status=$?
  if [[ "${KEEP:-0}" == 1 ]]; then
    printf '%s: KEEP=1: leaving %s up; remove it with launch/tpu/delete.sh\n' "$SCRIPT" "$TPU_NAME"
  else
    bash "$HERE/delete.sh" "${ARGS[@]}" || status=1
  fi
  exit "$status"
}

bash "$HERE/create.sh" "$@"
trap cleanup EXIT # only once create.sh succeeded: never delete a slice this run did not make
bash "$HERE/setup.sh" "$@"
bash "$HERE/run.sh" "$@"
