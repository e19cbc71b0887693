"""Launch training under torchrun (one process per GPU, or gloo processes on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from kalm.training.config import TrainConfig


def torchrun_command(cfg: TrainConfig, model_path: str, inputs: Sequence[Path], out: Path) -> list[str]:
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
            "--out", str(out), *[str(p) for p in inputs]]
    return cmd


def launch(cfg: TrainConfig, model_path: str, inputs: Sequence[Path], out: Path) -> dict:
    """Run torchrun and return rank 0's summary (written to ``out/summary.json``)."""
    cmd = torchrun_command(cfg, model_path, inputs, out)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {' '.join(cmd[:6])} ...")
    return json.loads((Path(out) / "summary.json").read_text())
