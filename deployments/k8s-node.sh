#!/usr/bin/env bash
# Entry point of every pod of the kalm-gpu-k8s pool's Indexed Job (deployments/k8s-job-template.json).
# Pod 0 runs the Prefect flow run (the worker's command, passed as arguments); with
# train.distributed.nnodes > 1 the other pods join its torchrun through the rendezvous on pod 0
# (deployments/torchrun_node.py). A one-node job is pod 0 alone: the flow run as usual.
set -euo pipefail
if [ "${JOB_COMPLETION_INDEX:-0}" = "0" ]; then
  exec "$@"
fi
exec python -m deployments.torchrun_node follow
