"""Launch training under torchrun (one process per GPU, or gloo processes on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from kalm.training.config import TrainConfig

# Called with the torchrun command before a multi-node launch (nnodes > 1). The orchestration layer
# registers the hand-off to the other nodes here (tasks/train.py: deployments.torchrun_node.publish),
# so kalm/ itself stays free of Prefect and of any one cluster manager.
BEFORE_MULTI_NODE_LAUNCH: list[Callable[[Sequence[str]], object]] = []


def torchrun_command(cfg: TrainConfig, model_path: str, data: Path, out: Path) -> list[str]:
    """The torchrun command line that trains on the token file ``data`` (see ``prepare_training_data``)."""
    d = cfg.distributed
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={d.nproc_per_node}",
           f"--nnodes={d.nnodes}"]
    if d.nnodes > 1:
        # The k8s Indexed Job sets KALM_RDZV_ENDPOINT (<job>-0.<service>:29500) on every pod.
        endpoint = d.rdzv_endpoint or os.environ.get("KALM_RDZV_ENDPOINT")
        if not endpoint:
            raise ValueError("train.distributed.rdzv_endpoint (or the KALM_RDZV_ENDPOINT environment variable) is "
                             "required for nnodes > 1: host:port of node 0")
        cmd += [f"--rdzv-backend={d.rdzv_backend}", f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id={d.rdzv_id or 'kalm'}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "kalm.training", "--config-json", cfg.model_dump_json(), "--model-path", model_path,
            "--out", str(out), "--data", str(data)]
    return cmd


def launch(cfg: TrainConfig, model_path: str, data: Path, out: Path) -> dict:
    """Run torchrun and return rank 0's summary (written to ``out/summary.json``)."""
    cmd = torchrun_command(cfg, model_path, data, out)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    summary = Path(out) / "summary.json"
    summary.unlink(missing_ok=True)
    if cfg.distributed.nnodes > 1:
        for hook in BEFORE_MULTI_NODE_LAUNCH:
            hook(cmd)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {' '.join(cmd[:6])} ... (the ranks' errors "
                           "are above in the log)")
    return json.loads(summary.read_text())
