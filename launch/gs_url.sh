#!/usr/bin/env bash
# Sourced by launch/tpu/common.sh and launch/gke/submit.sh, which define die().
# shellcheck disable=SC2034 # BUCKET and BUCKET_PATH are read by the scripts sourcing this
set -euo pipefail

# gs://bucket/some/path -> BUCKET=bucket, BUCKET_PATH=some/path (empty: the bucket's root);
# refuses what no mount could serve (no bucket, an invalid name, . or .. in the path).
split_gs_url() {
  local rest="${1#gs://}"
  BUCKET="${rest%%/*}"
  BUCKET_PATH=""
  if [[ "$rest" == */* ]]; then BUCKET_PATH="${rest#*/}"; fi
  while [[ "$BUCKET_PATH" == /* ]]; do BUCKET_PATH="${BUCKET_PATH#/}"; done
  while [[ "$BUCKET_PATH" == */ ]]; do BUCKET_PATH="${BUCKET_PATH%/}"; done
  [[ -n "$BUCKET" ]] || die "WORKDIR names no bucket: '$1' (e.g. WORKDIR=gs://my-bucket/jdjudge/llama-snli)"
  [[ "$BUCKET" =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]] || die "WORKDIR's bucket '$BUCKET' is not a bucket name (lowercase letters, digits, -, _ and .)"
  case "/$BUCKET_PATH/" in
    */./* | */../*) die "WORKDIR's path may not contain . or .. (it would leave the mounted bucket): '$1'" ;;
  esac
}
