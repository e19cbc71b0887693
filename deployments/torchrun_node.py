"""Multi-node training on Kubernetes: one Indexed Job, torchrun on every pod, rendezvous on pod 0.

The kalm-gpu-k8s pool starts each flow run as an Indexed Job of ``nnodes`` pods
(deployments/k8s-job-template.json) whose hostnames ``<job>-<index>`` resolve through a headless
Service (deployments/k8s-rendezvous-service.json). Pod 0 runs the Prefect flow run; when its train
stage starts torchrun with ``nnodes > 1`` it first :func:`publish` es the exact torchrun command
(rendezvous endpoint ``<job>-0.<service>:29500``, from ``KALM_RDZV_ENDPOINT``) on the shared
``KALM_HOME`` volume. Every other pod runs :func:`follow`: it waits for that command and runs it;
torchrun's c10d rendezvous assigns node ranks, so the command is the same on every node. A flow
run that ends without multi-node training (e.g. train came from the cache) releases the followers.

    python -m deployments.torchrun_node follow      # pods 1..nnodes-1 (deployments/k8s-node.sh)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from kalm.store import atomic_path


def handoff_path(flow_run_id: str) -> Path:
    """Where node 0 leaves the torchrun command of a flow run: under ``$KALM_HOME/torchrun/``
    (a ReadWriteMany volume that every pod of the job mounts)."""
    from tasks.common import KALM_DIR

    return Path(os.environ.get("KALM_TORCHRUN_HANDOFF_DIR", KALM_DIR / "torchrun")) / f"{flow_run_id}.json"


def publish(cmd: Sequence[str], flow_run_id: Optional[str] = None) -> Optional[Path]:
    """Node 0: record the torchrun command for the other nodes of this flow run's job.

    A no-op (returns None) outside a Prefect flow run (no ``PREFECT__FLOW_RUN_ID``).
    """
    flow_run_id = flow_run_id or os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return None
    path = handoff_path(flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"cmd": list(cmd), "published_at": time.time()}))
    return path


def flow_run_finished(flow_run_id: str) -> bool:
    """Whether the flow run is in a final state (Prefect's API at ``PREFECT_API_URL``)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and state.is_final()


def follow(flow_run_id: str, poll_s: float = 5.0, timeout_s: Optional[float] = None,
           finished: Callable[[str], bool] = flow_run_finished) -> int:
    """Nodes 1..N-1: wait for node 0's torchrun command and run it; returns its exit code.

    Returns 0 without running anything when the flow run ends first.

    Raises:
        TimeoutError: neither happened within ``timeout_s`` seconds.
    """
    path, start = handoff_path(flow_run_id), time.monotonic()
    while True:
        if path.exists():
            cmd = json.loads(path.read_text())["cmd"]
            print(f"torchrun_node: joining {' '.join(cmd[:8])} ...", flush=True)
            return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
                                  ).returncode
        if finished(flow_run_id):
            print(f"torchrun_node: flow run {flow_run_id} ended without multi-node training", flush=True)
            return 0
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no torchrun command at {path} after {timeout_s:.0f} s and flow run {flow_run_id} "
                               "is still running: is KALM_HOME a volume shared by every pod of the job?")
        time.sleep(poll_s)


def main(argv: list[str]) -> int:
    if argv[:1] != ["follow"]:
        print("usage: python -m deployments.torchrun_node follow", file=sys.stderr)
        return 2
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        print("torchrun_node: PREFECT__FLOW_RUN_ID is not set (the Prefect worker sets it in the job's pods)",
              file=sys.stderr)
        return 2
    return follow(flow_run_id)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
