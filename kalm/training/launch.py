"""Launch training under torchrun (one process per GPU, or gloo processes on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kalm.training.config import TrainConfig


def torchrun_command(cfg: TrainConfig, model_path: str, data: Path, out: Path) -> list[str]:
    """The torchrun command line that trains on the token file ``data`` (see ``prepare_training_data``)."""
    d = cfg.distributed
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={d.nproc_per_node}",
           f"--nnodes={d.nnodes}"]
    if d.nnodes > 1:
        if not d.rdzv_endpoint:
            raise ValueError("train.distributed.rdzv_endpoint is required for nnodes > 1 (host:port of node 0)")
        cmd += [f"--rdzv-backend={d.rdzv_backend}", f"--rdzv-endpoint={d.rdzv_endpoint}",
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
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {' '.join(cmd[:6])} ... (the ranks' errors "
                           "are above in the log)")
    return json.loads(summary.read_text())
