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
# Sized from the preset the GPU deployments run (python -m deployments.resources; override with env).
PY=${PY:-$(dirname "$(command -v "$PREFECT")")/python}
PLAN=$("$PY" -m deployments.resources "${KALM_GPU_PRESET:-kalm-mini}")
plan() { "$PY" -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$PLAN" "$1"; }
# One flow run per GPU host: a kalm-mini run takes all of a host's GPUs (plan: container_gpus).
"$PREFECT" work-pool set-concurrency-limit kalm-gpu "${KALM_GPU_HOSTS:-1}" >/dev/null
# Tasks tagged "gpu" (generate shards, filter, train, evaluate) hold a GPU *group* each: a vLLM
# engine of tensor_parallel_size GPUs. The limit counts groups over all hosts, so kalm-mini's two
# engines per host generate side by side (the limit used to be 1 and serialised every shard).
GPU_GROUPS=${KALM_GPU_GROUPS:-$(( $(plan gpu_groups) * ${KALM_GPU_HOSTS:-1} ))}
"$PREFECT" concurrency-limit create gpu "$GPU_GROUPS" >/dev/null  # creates or resizes (an upsert)

export KALM_PROJECT_DIR=${KALM_PROJECT_DIR:-$PWD}
export KALM_GPU_IMAGE=${KALM_GPU_IMAGE:-kalm-pipeline:gpu}
export KALM_GIT_URL=${KALM_GIT_URL:-$(git config --get remote.origin.url || echo "$PWD")}
export KALM_GIT_BRANCH=${KALM_GIT_BRANCH:-main}
"$PREFECT" --no-prompt deploy --all
