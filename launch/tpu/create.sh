#!/usr/bin/env bash
# Create the Cloud TPU slice the other steps use: a TPU VM slice (gcloud compute tpus tpu-vm
# create, which returns once it is READY) or, with QUEUED=1, a queued resource (waits until
# it is ACTIVE, asking every POLL_SECONDS, default 30).
#
#   TPU_NAME=judge-v5e16 ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 \
#     launch/tpu/create.sh [--queued] [--spot | --reserved | --best-effort]
#
# Needs TPU_NAME, ZONE, ACCELERATOR_TYPE. Optional: PROJECT, RUNTIME_VERSION (default
# v2-alpha-tpuv5-lite, the v5e image), QUEUED=1 and QUEUED_RESOURCE (default $TPU_NAME-qr),
# JDJUDGE_TPU_SPOT=1, JDJUDGE_TPU_RESERVED=1 or JDJUDGE_TPU_BEST_EFFORT=1 (queued only, via
# gcloud alpha); none of them: on-demand. DRY_RUN=1 prints the commands instead.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$HERE/common.sh"
parse_flags "$@"
check_common
check_create

if [[ "${QUEUED:-0}" != 1 ]]; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${CAPACITY[@]}"
  exit 0
fi

track=()
if [[ "${CAPACITY[*]}" == --best-effort ]]; then track=(alpha); fi
run gcloud "${track[@]}" compute tpus queued-resources create "$QUEUED_RESOURCE" "${WHERE[@]}" \
  --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
  --runtime-version="$RUNTIME_VERSION" "${CAPACITY[@]}"

describe=(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${WHERE[@]}"
  --format=value\(state.state\))
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  run "${describe[@]}" # repeated until it prints ACTIVE
  exit 0
fi
while state="$("${describe[@]}")" && [[ "$state" != ACTIVE ]]; do
  if [[ "$state" == FAILED || "$state" == SUSPENDED ]]; then
    printf '%s: error: queued resource %s is %s\n' "$SCRIPT" "$QUEUED_RESOURCE" "$state" >&2
    exit 1
  fi
  printf '%s: queued resource %s is %s; asking again in %ss\n' \
    "$SCRIPT" "$QUEUED_RESOURCE" "${state:-not reported}" "$POLL_SECONDS"
  sleep "$POLL_SECONDS"
done
