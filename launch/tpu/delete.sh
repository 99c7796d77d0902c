#!/usr/bin/env bash
# Delete the slice (gcloud compute tpus tpu-vm delete) or, with QUEUED=1, the queued resource
# and its TPU VMs (queued-resources delete --force). Asks no questions (--quiet).
#
#   TPU_NAME=judge-v5e16 ZONE=us-west4-a launch/tpu/delete.sh [--queued]
#
# Needs TPU_NAME, ZONE. Optional: PROJECT, QUEUED=1, QUEUED_RESOURCE (default $TPU_NAME-qr).
# DRY_RUN=1 prints the command instead.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$HERE/common.sh"
parse_flags "$@"
check_common

if [[ "${QUEUED:-0}" == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${WHERE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${WHERE[@]}" --quiet
fi
