#!/usr/bin/env bash
# Train on a GKE TPU slice with a JobSet: fill launch/gke/jobset.yaml from the variables below
# and apply it, follow process 0's log, or delete the JobSet and its ConfigMap.
#
#   JOB_NAME=judge-llama CONFIG=configs/llama.py WORKDIR=gs://my-bucket/jdjudge/llama-snli \
#     launch/gke/submit.sh [apply]     # kubectl apply -f - (the filled manifest on stdin)
#   JOB_NAME=... CONFIG=... WORKDIR=... launch/gke/submit.sh render   # print it, apply nothing
#   JOB_NAME=judge-llama launch/gke/submit.sh logs     # wait for process 0, kubectl logs -f
#   JOB_NAME=judge-llama launch/gke/submit.sh delete   # kubectl delete the JobSet, ConfigMap
#
# Needs JOB_NAME, and for apply and render CONFIG (a local file, optionally :ARG; it travels
# in a ConfigMap) and WORKDIR (gs://BUCKET/PATH: the pods' own disks vanish with them; each
# pod mounts BUCKET at /gcs with the Cloud Storage FUSE CSI driver and trains with
# --config.workdir=/gcs/PATH). Optional: NAMESPACE, K8S_SERVICE_ACCOUNT (default default;
# it needs Workload Identity access to the bucket), GCSFUSE_MOUNT_OPTIONS (default
# implicit-dirs,rename-dir-limit=200000,metadata-cache:ttl-secs:0), IMAGE (default
# python:3.12-slim), JDJUDGE_SPEC (pip-installed by every pod at start, default jdjudge[tpu];
# empty when IMAGE has jdjudge already), TPU_ACCELERATOR (default tpu-v5-lite-podslice),
# TPU_TOPOLOGY (default 4x4), CHIPS_PER_HOST (default 4), NUM_HOSTS (default chips in
# TPU_TOPOLOGY / CHIPS_PER_HOST), MAX_RESTARTS (default 3), EXTRA_ARGS, POLL_SECONDS (default
# 10), TEMPLATE. DRY_RUN=1 prints the kubectl commands instead.
set -euo pipefail

SCRIPT="launch/gke/submit.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="${TEMPLATE:-$HERE/jobset.yaml}"
GCS_MOUNT=/gcs # where each pod sees the bucket
POLL_SECONDS="${POLL_SECONDS:-10}"

die() {
  printf '%s: error: %s\n' "$SCRIPT" "$1" >&2
  exit 2
}
need() { [[ -n "${!1:-}" ]] || die "$1 is not set ($2)"; }
whole() { [[ "$2" =~ ^[0-9]+$ && "$2" != 0 ]] || die "$1 must be a positive whole number, not '$2'"; }
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# shellcheck source=SCRIPTDIR/../gs_url.sh
source "$HERE/../gs_url.sh"

# The manifest: each ${NAME} of the template replaced by its value (YAML-escaped, for the
# double-quoted strings they stand in), then ${CONFIG_BODY} by the config file, indented.
render() {
  need CONFIG "the config file, e.g. CONFIG=configs/llama.py"
  need WORKDIR "where checkpoints and logs go, e.g. WORKDIR=gs://my-bucket/jdjudge/llama-snli"
  [[ "$WORKDIR" == gs://* ]] || die "WORKDIR must start with gs:// (every pod writes the same checkpoints, and a pod's disk goes with it; the pods mount the bucket at $GCS_MOUNT); got '$WORKDIR'"
  split_gs_url "$WORKDIR"
  local account="${K8S_SERVICE_ACCOUNT:-default}"
  [[ "$account" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "K8S_SERVICE_ACCOUNT must be a Kubernetes service account name (lowercase letters, digits, - and .), not '$account'"
  local config_file="${CONFIG%%:*}" topology="${TPU_TOPOLOGY:-4x4}" chips=1 size name value text
  [[ -f "$config_file" ]] || die "CONFIG file not found: $config_file"
  [[ "$topology" =~ ^[0-9]+(x[0-9]+)+$ ]] || die "TPU_TOPOLOGY must look like 4x4 or 2x2x4, not '$topology'"
  for size in ${topology//x/ }; do chips=$((chips * size)); done
  local -A fill=(
    [JOB_NAME]="$JOB_NAME"
    [IMAGE]="${IMAGE:-python:3.12-slim}"
    [JDJUDGE_SPEC]="${JDJUDGE_SPEC-jdjudge[tpu]}"
    [TPU_ACCELERATOR]="${TPU_ACCELERATOR:-tpu-v5-lite-podslice}"
    [TPU_TOPOLOGY]="$topology"
    [CHIPS_PER_HOST]="${CHIPS_PER_HOST:-4}"
    [MAX_RESTARTS]="${MAX_RESTARTS:-3}"
    [CONFIG_ARG]="${CONFIG#"$config_file"}"
    [WORKDIR]="$GCS_MOUNT${BUCKET_PATH:+/$BUCKET_PATH}"
    [GCS_MOUNT]="$GCS_MOUNT"
    [BUCKET]="$BUCKET"
    [K8S_SERVICE_ACCOUNT]="$account"
    [GCSFUSE_MOUNT_OPTIONS]="${GCSFUSE_MOUNT_OPTIONS:-implicit-dirs,rename-dir-limit=200000,metadata-cache:ttl-secs:0}"
    [EXTRA_ARGS]="${EXTRA_ARGS:-}"
  )
  for name in CHIPS_PER_HOST MAX_RESTARTS; do whole "$name" "${fill[$name]}"; done
  fill[NUM_HOSTS]="${NUM_HOSTS:-$((chips / fill[CHIPS_PER_HOST]))}"
  whole NUM_HOSTS "${fill[NUM_HOSTS]}"
  ((fill[NUM_HOSTS] * fill[CHIPS_PER_HOST] == chips)) || die "NUM_HOSTS=${fill[NUM_HOSTS]} hosts of CHIPS_PER_HOST=${fill[CHIPS_PER_HOST]} chips do not make TPU_TOPOLOGY=$topology ($chips chips)"

  text="$(<"$TEMPLATE")"
  for name in "${!fill[@]}"; do
    value="${fill[$name]//\\/\\\\}"
    value="${value//\"/\\\"}"
    text="${text//"\${$name}"/"$value"}"
  done
  local body_placeholder="\${CONFIG_BODY}"
  if [[ "${text//"$body_placeholder"/}" =~ \$\{[A-Z0-9_]+\} ]]; then
    die "$TEMPLATE has a placeholder this script does not fill: ${BASH_REMATCH[0]}"
  fi
  local body
  body="$(<"$config_file")"
  text="${text//"$body_placeholder"/"${body//$'\n'/$'\n'    }"}"
  printf '%s\n' "$text"
}

action="${1:-apply}"
case "$action" in
  apply | render | logs | delete) ;;
  *) die "unknown subcommand '$action' (apply, render, logs or delete)" ;;
esac
need JOB_NAME "the JobSet's name, lowercase letters, digits and -, e.g. JOB_NAME=judge-llama"
[[ "$JOB_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "JOB_NAME must be lowercase letters, digits and -, starting with a letter; got '$JOB_NAME'"
kubectl=(kubectl)
if [[ -n "${NAMESPACE:-}" ]]; then kubectl+=("--namespace=$NAMESPACE"); fi
# Process 0: the first pod of the first Job; only it writes the training log.
first="jobset.sigs.k8s.io/jobset-name=$JOB_NAME,jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0"

case "$action" in
  render) render ;;
  apply)
    manifest="$(render)"
    run "${kubectl[@]}" apply -f - <<<"$manifest"
    ;;
  logs)
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      run "${kubectl[@]}" logs -f -l "$first" --tail=-1
      exit 0
    fi
    until [[ -n "$("${kubectl[@]}" get pods -l "$first" -o name)" ]]; do
      printf '%s: no pod of %s yet; asking again in %ss\n' "$SCRIPT" "$JOB_NAME" "$POLL_SECONDS"
      sleep "$POLL_SECONDS"
    done
    until "${kubectl[@]}" logs -f -l "$first" --tail=-1; do
      printf '%s: process 0 is not running yet; asking again in %ss\n' "$SCRIPT" "$POLL_SECONDS"
      sleep "$POLL_SECONDS"
    done
    ;;
  delete) run "${kubectl[@]}" delete "jobset/$JOB_NAME" "configmap/$JOB_NAME-config" --ignore-not-found ;;
esac
