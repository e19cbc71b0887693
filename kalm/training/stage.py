"""The train stage: resolve the student, train (in-process or under torchrun), export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from kalm.stage import Progress, StageResult
from kalm.store import hash_outputs
from kalm.training.config import TrainConfig


def train(cfg: TrainConfig, inputs: Sequence[Path], out: Path, progress: Optional[Progress] = None) -> StageResult:
    """Train ``cfg.student`` on the example files; one process runs in-process, more under torchrun."""
    from kalm.models import transformers_path

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = transformers_path(cfg.student)
    d = cfg.distributed
    if d.nproc_per_node * d.nnodes > 1:
        from kalm.training.launch import launch

        summary = launch(cfg, model_path, inputs, out)
    else:
        from kalm.training.trainer import run_training

        summary = run_training(cfg, model_path, inputs, out, progress)
    model_dir = out / "model"
    outputs = [model_dir, out / "metrics.csv"]
    return StageResult(
        stage="train", out_dir=out, outputs=outputs, hashes=hash_outputs(out, [model_dir]),
        counts={"steps": summary["steps"], "examples": summary["examples"], "tokens": summary["tokens"]},
        metrics={"final_loss": summary["final_loss"], "tokens_per_s": summary["tokens_per_s"]},
        seconds=time.perf_counter() - start, info={"base_model": cfg.student, "losses": summary["losses"]},
    )
