#!/usr/bin/env bash
# Create kalm's work pools and the GPU concurrency limit on the Prefect API in PREFECT_API_URL,
# then register every deployment in prefect.yaml. Idempotent: rerunning changes nothing.
# The GPU pools can be created without Docker or Kubernetes here; their workers run elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}

ensure_pool() {  # name type [base-job-template]
  if ! "$PREFECT" work-pool inspect "$1" >/dev/null 2>&1; then
    if [ -n "${3:-}" ]; then
      "$PREFECT" work-pool create "$1" --type "$2" --base-job-template "$3"
    else
      "$PREFECT" work-pool create "$1" --type "$2"
    fi
  fi
}

ensure_pool kalm-cpu process
ensure_pool kalm-gpu docker
ensure_pool kalm-gpu-k8s kubernetes deployments/k8s-job-template.json
# One GPU flow run per GPU slot: two runs never share a GPU.
"$PREFECT" work-pool set-concurrency-limit kalm-gpu "${KALM_GPUS:-1}" >/dev/null
# Task-level guard as well: tasks tagged "gpu" run one at a time across all flows.
"$PREFECT" concurrency-limit inspect gpu >/dev/null 2>&1 || "$PREFECT" concurrency-limit create gpu "${KALM_GPUS:-1}" >/dev/null

export KALM_PROJECT_DIR=${KALM_PROJECT_DIR:-$PWD}
export KALM_GPU_IMAGE=${KALM_GPU_IMAGE:-kalm-pipeline:gpu}
export KALM_GIT_URL=${KALM_GIT_URL:-$(git config --get remote.origin.url || echo "$PWD")}
export KALM_GIT_BRANCH=${KALM_GIT_BRANCH:-main}
"$PREFECT" --no-prompt deploy --all
